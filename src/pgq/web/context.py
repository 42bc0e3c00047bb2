"""What every request handler shares: the connection pool, JSON responses, reading a body."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from pgq.config import redact
from pgq.web.api_input import FieldError

T = TypeVar("T")

#: The largest request body read (a job's args may be 1 MiB of JSON, plus its options).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: How long a request waits for a pooled connection before it is answered 503: long
#: enough for a burst to drain, short enough that an outage is reported, not hung on.
POOL_TIMEOUT_SECONDS = 5.0


class Database:
    """The app's connection pool, and pgq's schema, for pgq.admin calls made in threads.

    pgq.admin is synchronous; each call runs in Starlette's thread pool on a pooled
    autocommit connection (admin functions open their own transactions). Prepared
    statements are off, so that the app works behind PgBouncer in transaction mode.
    The pool opens at the first request: a mounted app's lifespan may never run.
    """

    def __init__(self, dsn: str, schema: str, max_connections: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            open=False,
            name="pgq-web",
            kwargs={"autocommit": True, "prepare_threshold": None, "connect_timeout": 10},
        )
        self._opened = False
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._opened:
            with self._lock:
                if not self._opened:
                    self.pool.open(wait=False)
                    self._opened = True
        with self.pool.connection(timeout=POOL_TIMEOUT_SECONDS) as conn:
            yield conn

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(conn, *args, schema=..., **kwargs)`` in a thread, on a pooled connection."""
        return await run_in_threadpool(self._call, function, args, kwargs)

    def _call(self, function: Callable[..., T], args: Any, kwargs: Any) -> T:
        with self.connection() as conn:
            return function(conn, *args, schema=self.schema, **kwargs)

    def safe(self, error: BaseException) -> str:
        """An error's message with the DSN's password masked: fit for a page or a log."""
        return redact(str(error).strip() or type(error).__name__, self.dsn)

    def close(self) -> None:
        if self._opened:
            self.pool.close()


def database(request: Request) -> Database:
    db: Database = request.app.state.database
    return db


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class Json(JSONResponse):
    """A JSON response that writes datetimes as ISO 8601 with their offset."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, ensure_ascii=False).encode()


async def read_body(request: Request) -> bytes:
    """The body, up to MAX_BODY_BYTES; FieldError past that (before reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise FieldError(None, f"the body is over {MAX_BODY_BYTES:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise FieldError(None, f"the body is over {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
