"""The app the reliability suite's workers run: ``pgq work tests.reliability.app:app``.

Every run of a handler writes a ``start`` row into the ``ledger`` table when it
begins and an ``end`` row when its work is done, each with (job id, attempt,
worker pid). The ledger says how often each job really ran, and where; the
``finishes`` table (filled by a trigger on pgq.jobs, see lab.py) says how often
the database recorded it as finished. The two together tell a re-run (at least
once, expected) from a double finish (a broken fence, a bug).

The database is the one the worker serves, from ``$PGQ_DSN``. This module imports
nothing from the suite: the worker processes load it on their own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psycopg

import pgq

app = pgq.App()

# Short backoff: a job that failed because the database was away comes back quickly.
QUICK_RETRY = pgq.Retry(base_seconds=0.2, cap_seconds=2.0)

_local = threading.local()


def _connection() -> psycopg.Connection[tuple[int, ...]]:
    """One connection per thread, reopened once it broke (restart, terminate)."""
    conn: psycopg.Connection[tuple[int, ...]] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ["PGQ_DSN"], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def write(ctx: pgq.JobContext, event: str) -> None:
    """One ledger row. If the database is away this raises, and the job is retried."""
    try:
        _connection().execute(
            "INSERT INTO ledger (job_id, attempt, pid, event) VALUES (%s, %s, %s, %s)",
            [ctx.job_id, ctx.attempt, os.getpid(), event],
        )
    except psycopg.Error:
        # Drop a connection the server closed, so the next run opens a new one
        # instead of failing on the dead one first.
        conn = getattr(_local, "conn", None)
        if conn is not None:
            conn.close()
        _local.conn = None
        raise


@app.task(retry=QUICK_RETRY, max_attempts=20)
def sleepy(ms: float, ctx: pgq.JobContext) -> None:
    """A little real work in a thread: sleep ``ms`` milliseconds between two ledger rows."""
    write(ctx, "start")
    time.sleep(ms / 1000)
    write(ctx, "end")


@app.task(retry=QUICK_RETRY, max_attempts=20)
async def sleepy_async(ms: float, ctx: pgq.JobContext) -> None:
    """``sleepy`` as a coroutine: the worker cancels it when its lease is lost."""
    await asyncio.to_thread(write, ctx, "start")
    await asyncio.sleep(ms / 1000)
    await asyncio.to_thread(write, ctx, "end")


class DesignedToFail(RuntimeError):
    """What ``doomed`` raises on every attempt; on its second, one whose text cannot be had."""

    def __init__(self, message: str, *, printable: bool) -> None:
        super().__init__(message)
        self.printable = printable

    def __str__(self) -> str:
        if not self.printable:
            raise RuntimeError("this error has no text")
        return super().__str__()


@app.task(retry=QUICK_RETRY, max_attempts=3)
def doomed(ctx: pgq.JobContext) -> None:
    """Always fails: its job must end ``dead`` after max_attempts, faults or not."""
    write(ctx, "start")
    message = f"job {ctx.job_id} always fails (attempt {ctx.attempt})"
    raise DesignedToFail(message, printable=ctx.attempt != 2)


@app.task()
def poison(n: int, ctx: pgq.JobContext) -> None:
    """Never runs: its args cannot be decoded (producer.POISON_ARGS), so its job ends dead."""
    write(ctx, "start")
