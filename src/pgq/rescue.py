"""Rescue: jobs whose lease expired go back to the queue, or to dead when out of attempts.

Lease expiry, not worker liveness, decides rescue: a partitioned worker may still
be running the job, so handlers must be idempotent. Its late result is refused by
the fence (``finish_jobs`` matches the lease token). Every worker rescues; SKIP
LOCKED keeps two rescuers off the same row, so no leader is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from pgq.queries import query
from pgq.retry import Retry

log = logging.getLogger("pgq.rescue")

RESCUE_BATCH = 500
# Rescue does not know the task's own policy (the task may not even be registered here).
DEFAULT_RESCUE_RETRY = Retry()


@dataclass(frozen=True, slots=True)
class RescuedJob:
    id: int
    task: str
    queue: str
    attempts: int
    status: str


def rescue_stale_jobs(
    conn: psycopg.Connection[Any], schema: str, policy: Retry = DEFAULT_RESCUE_RETRY
) -> list[RescuedJob]:
    """Move every running job whose lease expired to queued (with backoff) or dead.

    The crashed attempt stays counted: a job that keeps killing its worker ends
    dead after ``max_attempts`` instead of taking the fleet down forever.
    """
    rescued: list[RescuedJob] = []
    params = {
        "limit": RESCUE_BATCH,
        "base_seconds": policy.base_seconds,
        "cap_seconds": policy.cap_seconds,
    }
    while True:
        with conn.transaction():
            rows = conn.execute(query("rescue_stale_jobs", schema), params).fetchall()
        batch = [RescuedJob(*row) for row in rows]
        rescued.extend(batch)
        for job in batch:
            log.warning(
                "rescued job %s (%s, queue %s) after its worker lost the lease: attempt %s, now %s",
                job.id, job.task, job.queue, job.attempts, job.status,
            )  # fmt: skip
        if len(batch) < RESCUE_BATCH:
            return rescued
