"""The worker's periodic duties on a connection of their own: rescue and pruning.

Rescue also forgets workers that vanished long ago (``pgq.live_workers`` hides
them from the moment their lease lapses).

Every worker runs them; the SQL (SKIP LOCKED) keeps workers from doing the same
rows twice, so no leader is needed. They run apart from the heartbeat thread,
so a slow sweep can never delay a lease extension.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pgq.connection import Backoff, DatabaseThread
from pgq.rescue import RescuedJob, rescue_stale_jobs
from pgq.retention import Retention, prune_finished_jobs
from pgq.worker.registration import prune_vanished_workers
from pgq.worker.settings import WorkerSettings

log = logging.getLogger("pgq.maintenance")


class Maintenance(DatabaseThread):
    """Rescues stale jobs, then prunes finished ones, each at its own interval.

    Both are jittered at first, so that a fleet started together spreads its sweeps.
    """

    duty = "maintenance"
    log = log

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        rescue_interval_seconds: float,
        retention: Retention,
        prune_interval_seconds: float,
        on_rescued: Callable[[list[RescuedJob]], None] | None = None,
        prepare_statements: bool = True,
    ) -> None:
        super().__init__(
            name="pgq-maintenance", dsn=dsn, prepare_statements=prepare_statements,
            backoff=Backoff(),
        )  # fmt: skip
        self.schema = schema
        self.rescue_interval_seconds = rescue_interval_seconds
        self.prune_interval_seconds = prune_interval_seconds
        self.retention = retention
        self.on_rescued = on_rescued
        now = time.monotonic()
        self._next_rescue = now + random.uniform(0, rescue_interval_seconds)
        self._next_prune = now + random.uniform(0, prune_interval_seconds)

    @classmethod
    def for_worker(
        cls, settings: WorkerSettings, on_rescued: Callable[[list[RescuedJob]], None]
    ) -> Maintenance:
        return cls(
            dsn=settings.dsn, schema=settings.schema, retention=settings.retention,
            rescue_interval_seconds=settings.rescue_interval_seconds,
            prune_interval_seconds=settings.prune_interval_seconds,
            on_rescued=on_rescued, prepare_statements=not settings.poll_only,
        )  # fmt: skip

    def tick(self, conn: psycopg.Connection[tuple[Any, ...]]) -> float:
        now = time.monotonic()
        if now >= self._next_rescue:
            rescued = rescue_stale_jobs(conn, self.schema)
            if rescued and self.on_rescued is not None:
                self.on_rescued(rescued)
            prune_vanished_workers(conn, self.schema)
            self._next_rescue = now + self.rescue_interval_seconds
        if now >= self._next_prune:
            prune_finished_jobs(conn, self.schema, self.retention)
            self._next_prune = now + self.prune_interval_seconds
        return max(0.05, min(self._next_rescue, self._next_prune) - time.monotonic())
