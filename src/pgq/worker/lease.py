"""Heartbeats: push ``locked_until`` forward for every job this worker runs.

The heartbeat runs in its own thread with its own connection, so neither a
CPU-bound async handler hogging the event loop, nor a full connection pool, nor
a slow maintenance sweep can starve it. One statement extends all of the
worker's leases at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pgq.connection import ThreadConnection
from pgq.queries import array_literal, query

log = logging.getLogger("pgq.lease")

MAX_RECONNECT_SECONDS = 10.0


class Heartbeat(threading.Thread):
    """Extends the leases of held jobs every ``lease_seconds / 3``.

    ``held`` returns the (job id, lease token) pairs to extend; ``on_lost`` is called
    (from this thread) with the pairs whose lease is gone: rescued, or changed by an operator.
    """

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        lease_seconds: float,
        held: Callable[[], list[tuple[int, uuid.UUID]]],
        on_lost: Callable[[list[tuple[int, uuid.UUID]]], None],
        on_failure: Callable[[], None] | None = None,
        prepare_statements: bool = True,
    ) -> None:
        super().__init__(name="pgq-heartbeat", daemon=True)
        self.dsn = dsn
        self.schema = schema
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = max(0.05, lease_seconds / 3)
        self.held = held
        self.on_lost = on_lost
        self.on_failure = on_failure
        self.last_heartbeat = time.monotonic()
        self.failures = 0
        self._stop_event = threading.Event()
        self._connection = ThreadConnection(dsn, prepare_statements=prepare_statements)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        reconnect_delay = 0.0
        while not self._stop_event.wait(reconnect_delay or self.heartbeat_seconds):
            try:
                conn = self._connection.get()
                self._extend(conn)
                reconnect_delay = 0.0
                self.last_heartbeat = time.monotonic()
            except psycopg.Error as error:
                self.failures += 1
                if self.on_failure is not None:
                    self.on_failure()
                # Never wait longer than one heartbeat interval: leases claimed once the
                # database is back must be extended before they lapse.
                reconnect_delay = min(
                    self.heartbeat_seconds, MAX_RECONNECT_SECONDS, max(0.2, reconnect_delay * 2)
                )
                log.warning("heartbeat failed (%s); retrying in %.1fs", error, reconnect_delay)
                self._connection.close()
        self._connection.close()

    def _extend(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        held = self.held()
        if not held:
            return
        params = {
            "ids": array_literal(job_id for job_id, _ in held),
            "lease_tokens": array_literal(token for _, token in held),
            "lease_seconds": self.lease_seconds,
        }
        cursor = conn.execute(query("extend_leases", self.schema), params)
        extended = {(job_id, token) for job_id, token in cursor}
        lost = [pair for pair in held if pair not in extended]
        if lost:
            self.on_lost(lost)
