"""Leases: which jobs this worker holds, and the heartbeat that keeps them from expiring.

A job's lease is held from its claim until its outcome is written (or its
lease is found lost). The heartbeat runs in its own thread with its own
connection, so neither a CPU-bound async handler hogging the event loop, nor a
full connection pool, nor a slow maintenance sweep can starve it. One
statement extends all of the worker's leases at once.

The same beat keeps the worker's row in ``pgq.live_workers`` fresh, and removes
it when the worker stops cleanly: alive in that list and holding leases are
then one fact, decided by one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from pgq.connection import MAX_BACKOFF_SECONDS, Backoff, DatabaseThread, ThreadConnection
from pgq.job import ClaimedJob
from pgq.queries import array_literal, query
from pgq.worker.registration import Registration
from pgq.worker.settings import WorkerSettings

log = logging.getLogger("pgq.lease")

Lease = tuple[int, uuid.UUID]  # (job id, lease token)


class LeaseTable:
    """The leases to extend, shared by the event loop and the heartbeat thread.

    Keyed by lease token, not job id: a stale run of a job (a sync handler past
    a lost lease) and its newer run may both be here at once.
    """

    def __init__(self) -> None:
        self._held: dict[uuid.UUID, int] = {}
        self._lock = threading.Lock()

    def hold(self, job: ClaimedJob) -> None:
        with self._lock:
            self._held[job.lease_token] = job.id

    def release(self, lease_tokens: Iterable[uuid.UUID]) -> None:
        """Stop extending these leases (outcome written, or lease gone)."""
        with self._lock:
            for token in lease_tokens:
                self._held.pop(token, None)

    def snapshot(self) -> list[Lease]:
        with self._lock:
            return [(job_id, token) for token, job_id in self._held.items()]

    def __len__(self) -> int:
        return len(self._held)


class Heartbeat(DatabaseThread):
    """Extends every held lease each ``lease_seconds / 3``, and says the worker is alive.

    ``on_lost`` is called with the leases that are gone (rescued, or changed by
    an operator): from this thread, or on ``loop`` if one is given.
    ``registration`` (a worker's) is touched at each beat and removed at stop.
    """

    duty = "heartbeat"
    log = log

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        lease_seconds: float,
        leases: LeaseTable,
        on_lost: Callable[[list[Lease]], None],
        on_failure: Callable[[], None] | None = None,
        prepare_statements: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
        registration: Registration | None = None,
    ) -> None:
        self.heartbeat_seconds = max(0.05, lease_seconds / 3)
        super().__init__(
            name="pgq-heartbeat",
            dsn=dsn,
            prepare_statements=prepare_statements,
            # Never wait longer than one heartbeat interval: leases claimed once the
            # database is back must be extended before they lapse.
            backoff=Backoff(0.2, min(self.heartbeat_seconds, MAX_BACKOFF_SECONDS)),
            first_wait_seconds=self.heartbeat_seconds,
            stop_timeout_seconds=5,
        )
        self.schema = schema
        self.lease_seconds = lease_seconds
        self.leases = leases
        self.on_lost = on_lost
        self._on_failure = on_failure
        self._loop = loop
        self.registration = registration
        self.last_heartbeat = time.monotonic()
        self.failures = 0

    def tick(self, conn: psycopg.Connection[tuple[Any, ...]]) -> float:
        held = self.leases.snapshot()
        if held:
            params = {
                "ids": array_literal(job_id for job_id, _ in held),
                "lease_tokens": array_literal(token for _, token in held),
                "lease_seconds": self.lease_seconds,
            }
            cursor = conn.execute(query("extend_leases", self.schema), params)
            extended = {(job_id, token) for job_id, token in cursor}
            lost = [lease for lease in held if lease not in extended]
            if lost:
                self._tell_lost(lost)
        if self.registration is not None:
            self.registration.touch(conn, running=len(self.leases))
        self.last_heartbeat = time.monotonic()
        return self.heartbeat_seconds

    @classmethod
    def for_worker(
        cls,
        settings: WorkerSettings,
        leases: LeaseTable,
        on_lost: Callable[[list[Lease]], None],
        on_failure: Callable[[], None],
        registration: Registration,
    ) -> Heartbeat:
        """The heartbeat of a worker running on the current event loop."""
        return cls(
            dsn=settings.dsn, schema=settings.schema, lease_seconds=settings.lease_seconds,
            leases=leases, on_lost=on_lost, on_failure=on_failure,
            prepare_statements=not settings.poll_only, loop=asyncio.get_running_loop(),
            registration=registration,
        )  # fmt: skip

    def _tell_lost(self, lost: list[Lease]) -> None:
        if self._loop is None:
            self.on_lost(lost)
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nothing left to tell
            self._loop.call_soon_threadsafe(self.on_lost, lost)

    def at_stop(self, connection: ThreadConnection) -> None:
        if self.registration is not None:
            self.registration.remove(connection.get())

    def on_failure(self, error: Exception) -> None:
        self.failures += 1
        if self._on_failure is not None:
            self._on_failure()
