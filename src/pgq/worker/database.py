"""The worker's database: waiting for it at start-up, and the pool that claims and writes outcomes.

The pool's connections get session settings (see ``configure_session``),
except in poll-only mode: behind PgBouncer in transaction mode a SET would land
on whichever server connection it happened to get.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgq.config import WORKER_CONNECTION_DEFAULTS, describe_dsn
from pgq.connection import DATABASE_DOWN, MAX_BACKOFF_SECONDS, Backoff, is_outage
from pgq.errors import ConfigError
from pgq.migrate import check_schema
from pgq.queries import query
from pgq.worker.registration import Registration
from pgq.worker.settings import WorkerSettings

log = logging.getLogger("pgq.worker")

STARTUP_TIMEOUT_SECONDS = 60.0


def check_database(settings: WorkerSettings) -> None:
    """Fail now (SchemaError, ConfigError) if a worker could not start on this database."""
    try:
        _check_schema(settings)
    except psycopg.OperationalError as error:
        raise ConfigError(f"cannot connect to {_target(settings)}: {error}") from error


def _target(settings: WorkerSettings) -> str:
    """The database as `pgq migrate` and `pgq stats` name it: no password, and none of
    the worker's connection defaults (timeouts, keepalives), which say how, not where."""
    params = conninfo_to_dict(settings.dsn)
    for key in WORKER_CONNECTION_DEFAULTS:
        params.pop(key, None)
    return describe_dsn(make_conninfo("", **params))


def _check_schema(settings: WorkerSettings, registration: Registration | None = None) -> None:
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        check_schema(conn, schema=settings.schema)
        if registration is not None:
            registration.register(conn)


async def wait_for_database(
    settings: WorkerSettings, stopping: Callable[[], bool], registration: Registration
) -> None:
    """Return once the schema checks out and the worker is registered (before any claim).

    ConfigError if that cannot happen (or a stop came).
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    backoff = Backoff()
    while True:
        try:
            await asyncio.to_thread(_check_schema, settings, registration)
            return
        except DATABASE_DOWN as error:
            if not is_outage(error):
                raise ConfigError(f"cannot connect to {_target(settings)}: {error}") from error
            if stopping():
                message = f"stopped before the database could be reached: {error}"
                raise ConfigError(message) from error
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"cannot reach {_target(settings)} after {STARTUP_TIMEOUT_SECONDS:g}s: {error}"
                ) from error
            log.warning("database unreachable (%s); retrying", error)
            await asyncio.sleep(backoff.failed())


def open_pool(settings: WorkerSettings) -> psycopg_pool.AsyncConnectionPool[Any]:
    """The pool for claims and outcome writes (not yet open: ``await pool.open()``)."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await configure_session(conn, settings)

    return psycopg_pool.AsyncConnectionPool(
        settings.dsn,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True, "prepare_threshold": None if settings.poll_only else 5},
        configure=configure,
        open=False,
        name="pgq-worker",
        # Fail a claim or a write after 10 s without a connection, and retry it
        # with backoff, rather than hang while the database is away.
        timeout=10,
        # psycopg_pool doubles its reconnect delay without limit until this
        # timeout: with 3600 s, a worker reconnected as late after an outage as
        # the outage lasted. Giving up after MAX_BACKOFF_SECONDS lets the next
        # claim start a fresh attempt.
        reconnect_timeout=MAX_BACKOFF_SECONDS,
    )


async def configure_session(conn: psycopg.AsyncConnection[Any], settings: WorkerSettings) -> None:
    """Session settings for a pooled connection (claims and outcome writes).

    Plans: the claim walks its index even when the table's statistics are
    missing or stale (see disable_bitmap_scans in queries.sql). Commits: claims
    and outcome writes need not wait for their WAL flush, since a write lost in
    a database crash only re-runs a job (the claim reverts to queued, a lost
    outcome leaves the job to rescue), which at-least-once allows; enqueues run
    in the application's own transactions, untouched. Measured: +60 % drain rate
    (docs/concepts/delivery.md). Neither in poll-only mode (see the module).
    """
    if settings.poll_only:
        return
    await conn.execute(query("disable_bitmap_scans", settings.schema))
    if not settings.synchronous_commit:
        await conn.execute(query("disable_synchronous_commit", settings.schema))
