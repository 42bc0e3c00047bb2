"""Retention: how long finished jobs stay in the table, and the pruning that enforces it.

The fleet prunes without a leader: every worker runs small batches through the
SQL function ``prune()``, whose SKIP LOCKED keeps two workers off the same rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from pgq.config import MAX_DURATION_SECONDS
from pgq.errors import ConfigError, shown
from pgq.job import DAY_SECONDS, JobStatus
from pgq.logs import plural
from pgq.queries import query

log = logging.getLogger("pgq.retention")

PRUNE_BATCH = 1_000
# A worker's share of pruning per cycle; whatever is left waits for the next
# cycle (or another worker), so one cycle never keeps a connection busy long.
MAX_BATCHES_PER_CYCLE = 20


@dataclass(frozen=True, slots=True)
class Retention:
    """Age after which finished jobs are deleted, per status; None keeps them.

    By default succeeded jobs are kept a day, cancelled ones a week, and dead
    ones until an operator requeues or prunes them.
    """

    succeeded_seconds: float | None = DAY_SECONDS
    cancelled_seconds: float | None = 7 * DAY_SECONDS
    dead_seconds: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.ages():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            # The same bound as `pgq prune --older-than`: an age PostgreSQL's interval holds.
            if not number or not 0 <= value <= MAX_DURATION_SECONDS:
                raise ConfigError(
                    f"retention for {name} jobs must be >= 0 seconds and at most 100 years, "
                    f"got {shown(value)}"
                )

    def ages(self) -> list[tuple[JobStatus, float]]:
        """(status, age in seconds) for every status that is pruned at all."""
        pairs = [
            (JobStatus.SUCCEEDED, self.succeeded_seconds),
            (JobStatus.CANCELLED, self.cancelled_seconds),
            (JobStatus.DEAD, self.dead_seconds),
        ]
        return [(status, age) for status, age in pairs if age is not None]


KEEP_EVERYTHING = Retention(None, None, None)


def prune_finished_jobs(
    conn: psycopg.Connection[Any],
    schema: str,
    retention: Retention,
    *,
    batch_size: int = PRUNE_BATCH,
    max_batches: int = MAX_BATCHES_PER_CYCLE,
) -> int:
    """Delete finished jobs past their retention, at most ``max_batches`` batches per status.

    ``conn`` must be in autocommit mode: each batch commits on its own, so no
    lock is held longer than one small delete.
    """
    total = 0
    for status, age in retention.ages():
        params = {"status": status.value, "older_than_seconds": age, "batch_size": batch_size}
        for _ in range(max_batches):
            row = conn.execute(query("prune_jobs", schema), params).fetchone()
            deleted = int(row[0]) if row else 0
            total += deleted
            if deleted < batch_size:
                break
    if total:
        log.info("pruned %s past their retention", plural(total, "finished job"))
    return total
