"""The worker's periodic duties on a connection of their own: rescue and pruning.

Every worker runs them; the SQL (SKIP LOCKED) keeps workers from doing the same
rows twice, so no leader is needed. They run apart from the heartbeat thread,
so a slow sweep can never delay a lease extension.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import psycopg

from pgq.connection import ThreadConnection
from pgq.rescue import RescuedJob, rescue_stale_jobs
from pgq.retention import Retention, prune_finished_jobs

log = logging.getLogger("pgq.maintenance")

PRUNE_INTERVAL_SECONDS = 60.0
MAX_RECONNECT_SECONDS = 10.0


class Maintenance(threading.Thread):
    """Rescues stale jobs every ``rescue_interval_seconds``, prunes every minute."""

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        rescue_interval_seconds: float,
        retention: Retention,
        on_rescued: Callable[[list[RescuedJob]], None] | None = None,
        prepare_statements: bool = True,
        prune_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(name="pgq-maintenance", daemon=True)
        self.dsn = dsn
        self.schema = schema
        self.rescue_interval_seconds = rescue_interval_seconds
        self.prune_interval_seconds = prune_interval_seconds
        self.retention = retention
        self.on_rescued = on_rescued
        self._stop_event = threading.Event()
        self._connection = ThreadConnection(dsn, prepare_statements=prepare_statements)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        # Jitter the first runs so that a fleet started together spreads its sweeps.
        now = time.monotonic()
        next_rescue = now + random.uniform(0, self.rescue_interval_seconds)
        next_prune = now + random.uniform(0, self.prune_interval_seconds)
        delay = 0.0
        while not self._stop_event.wait(delay):
            try:
                conn = self._connection.get()
                now = time.monotonic()
                if now >= next_rescue:
                    rescued = rescue_stale_jobs(conn, self.schema)
                    if rescued and self.on_rescued is not None:
                        self.on_rescued(rescued)
                    next_rescue = now + self.rescue_interval_seconds
                if now >= next_prune:
                    prune_finished_jobs(conn, self.schema, self.retention)
                    next_prune = now + self.prune_interval_seconds
                delay = max(0.05, min(next_rescue, next_prune) - time.monotonic())
            except psycopg.Error as error:
                delay = min(MAX_RECONNECT_SECONDS, max(0.5, delay * 2))
                log.warning("maintenance failed (%s); retrying in %.1fs", error, delay)
                self._connection.close()
        self._connection.close()
