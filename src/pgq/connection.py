"""Connections that outlive an outage: what counts as one, the back-off every retry loop
uses, and the thread that runs a periodic duty on a connection of its own.

Every loop that talks to the database (claims, outcome writes, heartbeats,
maintenance, LISTEN) retries through these, so that "the database went away" is
handled one way everywhere. The metrics collector has no loop: it reconnects
its ThreadConnection at the next scrape.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import psycopg_pool

log = logging.getLogger("pgq.connection")

#: Errors that mean "the database is unreachable right now": retried with back-off.
DATABASE_DOWN = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
MAX_BACKOFF_SECONDS = 10.0
# Connection errors that waiting will not fix: fail at once instead of retrying.
# libpq gives no SQLSTATE for a failed connection, so these match its messages.
_NOT_AN_OUTAGE = ("does not exist", "authentication failed", "no pg_hba.conf entry")


def is_outage(error: Exception) -> bool:
    """True if waiting may fix ``error`` (the server is away), False for a wrong setting."""
    return isinstance(error, DATABASE_DOWN) and not any(
        marker in str(error) for marker in _NOT_AN_OUTAGE
    )


class Backoff:
    """How long one retry loop waits after each failure in a row.

    ``first_seconds`` after the first failure, doubling up to ``cap_seconds``.
    ``failed(at_once=True)`` makes the first retry immediate: a pooled connection
    the server closed (a restart, a terminated backend) fails on first use, and a
    retry on a fresh connection usually just works.
    """

    def __init__(
        self, first_seconds: float = 0.5, cap_seconds: float = MAX_BACKOFF_SECONDS
    ) -> None:
        self.first_seconds = first_seconds
        self.cap_seconds = cap_seconds
        self.failures = 0

    def failed(self, *, at_once: bool = False) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        doublings = self.failures - 1 if at_once else self.failures
        if doublings == 0:
            return 0.0
        return float(min(self.cap_seconds, self.first_seconds * 2.0 ** min(doublings - 1, 30)))

    def succeeded(self) -> bool:
        """Reset after a success; True if that ended a run of failures."""
        recovered = self.failures > 0
        self.failures = 0
        return recovered


class ThreadConnection:
    """A connection that one thread owns: opened on first use, in autocommit.

    ``prepare_statements=False`` is for PgBouncer in transaction mode, which may
    not keep prepared statements between transactions.
    """

    def __init__(self, dsn: str, *, prepare_statements: bool = True) -> None:
        self.dsn = dsn
        self.prepare_threshold = 5 if prepare_statements else None
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def get(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.dsn, autocommit=True, prepare_threshold=self.prepare_threshold
            )
        return self._conn

    def close(self) -> None:
        """Drop the connection (after an error, or at the end); the next get() reconnects."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class DatabaseThread(threading.Thread):
    """A daemon thread that runs ``tick`` on its own connection until ``stop()``.

    ``tick`` returns the seconds until it should run again. An error drops the
    connection and retries after the back-off: the thread never dies of one,
    since a heartbeat that stopped would let every lease of the worker lapse.
    A connection of its own means a full pool or a busy event loop can never
    delay it.
    """

    #: What the thread does, for its log lines ("heartbeat failed ..."), and where they go.
    duty = "background duty"
    log = log

    def __init__(
        self,
        *,
        name: str,
        dsn: str,
        prepare_statements: bool,
        backoff: Backoff,
        first_wait_seconds: float = 0.0,
        stop_timeout_seconds: float = 10.0,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._connection = ThreadConnection(dsn, prepare_statements=prepare_statements)
        self._backoff = backoff
        self._first_wait_seconds = first_wait_seconds
        self._stop_timeout_seconds = stop_timeout_seconds
        self._stop_event = threading.Event()

    def tick(self, conn: psycopg.Connection[tuple[Any, ...]]) -> float:
        """Do the duty once; the seconds to wait before the next time."""
        raise NotImplementedError

    def on_failure(self, error: Exception) -> None:
        """Called after each failed tick, before the back-off."""

    def at_stop(self, connection: ThreadConnection) -> None:
        """Called once after ``stop()``, before the connection closes (errors are logged)."""

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self._stop_timeout_seconds)

    def run(self) -> None:
        wait = self._first_wait_seconds
        while not self._stop_event.wait(wait):
            try:
                wait = self.tick(self._connection.get())
                self._backoff.succeeded()
            except Exception as error:
                self.on_failure(error)
                wait = self._backoff.failed()
                # A database error is an outage or a fix for an operator; anything
                # else is a bug in pgq, worth its traceback.
                self.log.warning(
                    "%s failed (%s); retrying in %.1fs", self.duty, error, wait,
                    exc_info=not isinstance(error, psycopg.Error),
                )  # fmt: skip
                self._connection.close()
        try:
            self.at_stop(self._connection)
        except Exception as error:
            self.log.warning("%s could not finish cleanly (%s)", self.duty, error)
        self._connection.close()
