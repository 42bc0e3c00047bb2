"""Rescue: jobs whose lease expired go back to the queue, or to dead when out of attempts.

Lease expiry, not worker liveness, decides rescue: a partitioned worker may still
be running the job, so handlers must be idempotent. Its late result is refused by
the fence (the finish statements match the lease token). Every worker rescues;
SKIP LOCKED keeps two rescuers off the same row, so no leader is needed.

The lost attempt is a failure like a handler's, decided by the same policy
(pgq.retry): the delay before the next attempt, or dead when none is left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from pgq.queries import query
from pgq.retry import DEFAULT_RETRY, Retry, retry_delay

log = logging.getLogger("pgq.rescue")

RESCUE_BATCH = 500


@dataclass(frozen=True, slots=True)
class RescuedJob:
    id: int
    task: str
    queue: str
    attempts: int
    status: str


def _registered_policy(base: float | None, cap: float | None, fallback: Retry) -> Retry:
    """The task's registered retry policy; ``fallback`` for a task no worker registered."""
    if base is None or cap is None:
        return fallback
    return Retry(base_seconds=base, cap_seconds=cap)


def rescue_stale_jobs(
    conn: psycopg.Connection[Any], schema: str, policy: Retry = DEFAULT_RETRY
) -> list[RescuedJob]:
    """Move every running job whose lease expired to queued (after a backoff) or dead.

    The crashed attempt stays counted: a job that keeps killing its worker ends
    dead after ``max_attempts`` instead of taking the fleet down forever. The
    delay follows the task's retry policy as its workers registered it
    (``pgq.task_defaults``), else ``policy``. ``conn`` must be in autocommit mode:
    each statement commits on its own, and no lock is held between them.
    """
    rescued: list[RescuedJob] = []
    while True:
        stale = conn.execute(query("find_stale_jobs", schema), {"limit": RESCUE_BATCH}).fetchall()
        if not stale:
            return rescued
        params = {
            "ids": [row[0] for row in stale],
            "attempts": [row[1] for row in stale],
            "max_attempts": [row[2] for row in stale],
            "delays_seconds": [
                retry_delay(attempts, most, _registered_policy(base, cap, policy))
                for _, attempts, most, base, cap in stale
            ],
        }
        batch = [RescuedJob(*row) for row in conn.execute(query("rescue_jobs", schema), params)]
        rescued.extend(batch)
        for job in batch:
            log.warning(
                "rescued job %s (%s, queue %s) after its worker lost the lease: attempt %s, now %s",
                job.id, job.task, job.queue, job.attempts, job.status,
            )  # fmt: skip
        # A short read is the last batch; a batch another rescuer (or a finishing worker)
        # took entirely is left to the next run rather than read again at once.
        if len(stale) < RESCUE_BATCH or not batch:
            return rescued
