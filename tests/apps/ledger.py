"""An app whose handlers write what they did into a ``ledger`` table the test created.

Each row is (job id, attempt, worker pid, event): ``start`` when a handler
begins, ``done`` when it has finished its work. The tests read the ledger to
tell how often each job really ran, and on which process. The database is the
one the worker serves, from ``$PGQ_DSN`` (how ``pgq work --processes`` passes
it to its children too).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psycopg

import pgq

app = pgq.App()

# A short backoff, so that a job failing during a database outage comes back quickly.
QUICK_RETRY = pgq.Retry(base_seconds=0.2, cap_seconds=2.0)

_local = threading.local()


def _connection() -> psycopg.Connection[tuple[int, ...]]:
    """One connection per handler thread, reopened after a database restart."""
    conn: psycopg.Connection[tuple[int, ...]] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        # No prepared statements: test_pgbouncer.py runs this app behind PgBouncer in
        # transaction mode, where the next INSERT may reach another server connection.
        conn = psycopg.connect(
            os.environ["PGQ_DSN"], autocommit=True, connect_timeout=5, prepare_threshold=None
        )
        _local.conn = conn
    return conn


def write(ctx: pgq.JobContext, event: str) -> None:
    _connection().execute(
        "INSERT INTO ledger (job_id, attempt, pid, event) VALUES (%s, %s, %s, %s)",
        [ctx.job_id, ctx.attempt, os.getpid(), event],
    )


def starts_so_far(ctx: pgq.JobContext) -> int:
    row = (
        _connection()
        .execute("SELECT count(*) FROM ledger WHERE job_id = %s AND event = 'start'", [ctx.job_id])
        .fetchone()
    )
    assert row is not None
    return int(row[0])


@app.task(retry=QUICK_RETRY)
def record(ctx: pgq.JobContext, spin_ms: float = 0.0) -> None:
    """Burn ``spin_ms`` of CPU (a little real work), then write ``done``."""
    deadline = time.perf_counter() + spin_ms / 1000
    while time.perf_counter() < deadline:
        pass
    write(ctx, "done")


@app.task(retry=QUICK_RETRY)
def record_after(seconds: float, ctx: pgq.JobContext) -> None:
    """Write ``start``, sleep ``seconds``, write ``done``."""
    write(ctx, "start")
    time.sleep(seconds)
    write(ctx, "done")


@app.task(retry=QUICK_RETRY)
def slow_first_time(seconds: float, ctx: pgq.JobContext) -> None:
    """Like ``record_after``, but only the job's first run sleeps ``seconds``; later runs are quick.

    So a job that was handed back or rescued finishes fast on the next worker.
    """
    write(ctx, "start")
    time.sleep(seconds if starts_so_far(ctx) == 1 else 0.1)
    write(ctx, "done")


@app.task(retry=QUICK_RETRY)
async def slow_first_time_async(seconds: float, ctx: pgq.JobContext) -> None:
    """``slow_first_time`` as a coroutine: cancellable while it sleeps."""
    await asyncio.to_thread(write, ctx, "start")
    first = await asyncio.to_thread(starts_so_far, ctx) == 1
    await asyncio.sleep(seconds if first else 0.1)
    await asyncio.to_thread(write, ctx, "done")


@app.task()
def poison() -> None:
    """Kill the worker process that runs it, as a segfaulting C extension would."""
    os._exit(1)
