"""Heartbeats: push ``locked_until`` forward for every job this worker runs.

The heartbeat runs in its own thread with its own connection, so neither a
CPU-bound async handler hogging the event loop nor a full connection pool can
starve it. One statement extends all of the worker's leases at once. The same
thread also runs rescue on its own schedule, since both are periodic duties on
a quiet connection.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from pgq.queries import query
from pgq.rescue import rescue_stale_jobs

log = logging.getLogger("pgq.lease")

MAX_RECONNECT_SECONDS = 10.0


class LeaseKeeper(threading.Thread):
    """Extends the leases of held jobs every ``lease_seconds / 3`` and rescues stale ones.

    ``held`` returns the (job id, lease token) pairs to extend; ``on_lost`` is called
    (from this thread) with the ids whose lease is gone: rescued or taken by an operator.
    """

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        lease_seconds: float,
        rescue_interval_seconds: float,
        held: Callable[[], list[tuple[int, uuid.UUID]]],
        on_lost: Callable[[list[int]], None],
        prepare_statements: bool = True,
    ) -> None:
        super().__init__(name="pgq-lease", daemon=True)
        self.dsn = dsn
        self.schema = schema
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = max(0.05, lease_seconds / 3)
        self.rescue_interval_seconds = rescue_interval_seconds
        self.held = held
        self.on_lost = on_lost
        # PgBouncer in transaction mode may not keep prepared statements.
        self.prepare_threshold = 5 if prepare_statements else None
        self.last_heartbeat = time.monotonic()
        self.failures = 0
        self._stop_event = threading.Event()
        self._conn: psycopg.Connection[tuple[int]] | None = None

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        # Jitter the first rescue so a fleet started together spreads its sweeps.
        next_rescue = time.monotonic() + random.uniform(0, self.rescue_interval_seconds)
        reconnect_delay = 0.0
        while not self._stop_event.wait(reconnect_delay or self.heartbeat_seconds):
            try:
                conn = self._connection()
                self._extend(conn)
                if time.monotonic() >= next_rescue:
                    rescue_stale_jobs(conn, self.schema)
                    next_rescue = time.monotonic() + self.rescue_interval_seconds
                reconnect_delay = 0.0
                self.last_heartbeat = time.monotonic()
            except psycopg.Error as error:
                self.failures += 1
                reconnect_delay = min(MAX_RECONNECT_SECONDS, max(0.2, reconnect_delay * 2))
                log.warning("heartbeat failed (%s); retrying in %.1fs", error, reconnect_delay)
                self._close()
        self._close()

    def _connection(self) -> psycopg.Connection[tuple[int]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.dsn, autocommit=True, prepare_threshold=self.prepare_threshold
            )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _extend(self, conn: psycopg.Connection[tuple[int]]) -> None:
        held = self.held()
        if not held:
            return
        params = {
            "ids": [job_id for job_id, _ in held],
            "lease_tokens": [token for _, token in held],
            "lease_seconds": self.lease_seconds,
        }
        extended = {row[0] for row in conn.execute(query("extend_leases", self.schema), params)}
        lost = [job_id for job_id, _ in held if job_id not in extended]
        if lost:
            self.on_lost(lost)
