"""A connection that one background thread owns, and reopens after a failure."""

from __future__ import annotations

from typing import Any

import psycopg


class ThreadConnection:
    """Opened on first use, in autocommit: each statement commits on its own.

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
