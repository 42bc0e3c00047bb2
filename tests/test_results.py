"""Results, progress, ``pgq.get_job`` and ``pgq.wait``, against a worker in-process.

What a handler returns is stored with its success; what it reports with
``ctx.progress()`` is readable while it runs; ``wait`` returns once the job finished.
Cancelling running jobs is test_cancel.py's.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pytest

import pgq
from pgq import admin
from worker_helpers import (
    AsyncConn,
    connect,
    describe,
    enqueue,
    eventually,
    has_status,
    make_worker,
    running,
)

Scenario = Callable[..., Coroutine[Any, Any, None]]


def in_asyncio(scenario: Scenario) -> Callable[..., None]:
    """Run an async test body in its own event loop (pytest sees its fixtures)."""

    @functools.wraps(scenario)
    def test(*args: Any, **kwargs: Any) -> None:
        asyncio.run(scenario(*args, **kwargs))

    return test


@in_asyncio
async def test_a_handlers_return_value_is_the_jobs_result_and_wait_returns_it(dsn: str) -> None:
    app = pgq.App()

    @app.task()
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @app.task()
    async def greet(name: str) -> str:
        return f"hello {name}"

    @app.task()
    def nothing() -> None:
        return None

    db = await connect(dsn)
    ids = [
        await enqueue(db, "add", {"a": 2, "b": 3}),
        await enqueue(db, "greet", {"name": "ada"}),
        await enqueue(db, "nothing"),
    ]
    async with running(make_worker(app, dsn)):
        jobs = [await pgq.wait_async(db, job_id, timeout=15) for job_id in ids]
    assert [job.status for job in jobs] == [pgq.JobStatus.SUCCEEDED] * 3
    assert [job.result for job in jobs] == [{"sum": 5}, "hello ada", None]
    cursor = await db.execute("SELECT result FROM pgq.job_results ORDER BY id")
    assert await cursor.fetchall() == [({"sum": 5},), ("hello ada",), (None,)]


@in_asyncio
async def test_progress_is_readable_while_the_job_runs_and_the_last_report_is_kept(
    dsn: str,
) -> None:
    app = pgq.App()
    sync_gate, async_gate = threading.Event(), asyncio.Event()

    @app.task()
    def crunch(ctx: pgq.JobContext) -> int:
        for done in range(1, 51):  # many reports: the worker writes the latest
            ctx.progress({"done": done, "total": 100})
        sync_gate.wait(15)
        ctx.progress({"done": 100, "total": 100})
        return 100

    @app.task()
    async def fetch(ctx: pgq.JobContext) -> None:
        ctx.progress("page 1 of 2")
        await async_gate.wait()
        ctx.progress("page 2 of 2")

    db = await connect(dsn)
    sync_id, async_id = await enqueue(db, "crunch"), await enqueue(db, "fetch")

    def progress_of(job_id: int, expected: Any) -> Any:
        async def check() -> bool:
            job = await pgq.get_job_async(db, job_id)
            return job.status == "running" and job.progress == expected

        return check

    async with running(make_worker(app, dsn)) as worker_task:
        await eventually(
            progress_of(sync_id, {"done": 50, "total": 100}), describe(dsn, sync_id),
            worker_task=worker_task,
        )  # fmt: skip
        await eventually(progress_of(async_id, "page 1 of 2"), describe(dsn, async_id))
        row = await (await db.execute(
            "SELECT progress FROM pgq.job_results WHERE status = 'running' AND id = %s", [async_id]
        )).fetchone()  # fmt: skip
        assert row == ("page 1 of 2",)
        sync_gate.set()
        async_gate.set()
        finished = [await pgq.wait_async(db, job_id, timeout=15) for job_id in (sync_id, async_id)]
    # The report just before the handler returned is written before its finish, not lost.
    assert finished[0].progress == {"done": 100, "total": 100}
    assert finished[1].progress == "page 2 of 2"


@in_asyncio
async def test_a_result_that_cannot_be_stored_kills_only_its_job_with_a_clear_error(
    dsn: str,
) -> None:
    app = pgq.App()

    @app.task()
    def returns_a_set() -> object:
        return {1, 2}

    @app.task()
    async def returns_too_much() -> str:
        return "x" * (2 * 1024 * 1024)

    @app.task()
    def returns_nan() -> float:
        return float("nan")

    @app.task()
    def fine() -> int:
        return 1

    db = await connect(dsn)
    bad = [await enqueue(db, name) for name in ("returns_a_set", "returns_too_much", "returns_nan")]
    good = await enqueue(db, "fine")
    async with running(make_worker(app, dsn)):
        jobs = [await pgq.wait_async(db, job_id, timeout=15) for job_id in [*bad, good]]
    # Dead at once: the handler's work is done, a retry would repeat it.
    assert [(job.status, job.attempts) for job in jobs[:3]] == [("dead", 1)] * 3
    errors = [job.last_error or "" for job in jobs[:3]]
    assert all(e.startswith("pgq could not store this job's result: ") for e in errors), errors
    assert "JSON-serialisable" in errors[0] and "set" in errors[0]
    assert "over the 1,048,576-byte limit" in errors[1]
    assert "JSON-serialisable" in errors[2]
    assert jobs[3].status == "succeeded" and jobs[3].result == 1


@in_asyncio
async def test_progress_that_cannot_be_stored_raises_in_the_handler(dsn: str) -> None:
    app = pgq.App()
    seen: list[str] = []

    @app.task()
    def report(ctx: pgq.JobContext) -> None:
        try:
            ctx.progress(object())
        except pgq.InvalidJobError as error:
            seen.append(str(error))
        ctx.progress({"big": "x" * 70_000})

    db = await connect(dsn)
    job_id = await enqueue(db, "report", max_attempts=1)
    async with running(make_worker(app, dsn)):
        job = await pgq.wait_async(db, job_id, timeout=15)
    assert seen and seen[0].startswith("progress must be JSON-serialisable")
    assert job.status == "dead" and "over the 65,536-byte limit" in (job.last_error or "")


@in_asyncio
async def test_wait_is_woken_by_the_finish_not_by_its_periodic_check(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "WAIT_RECHECK_SECONDS", 60.0)
    app = pgq.App()
    gate = asyncio.Event()

    @app.task()
    async def slow() -> str:
        await gate.wait()
        return "done"

    db = await connect(dsn)
    job_id = await enqueue(db, "slow")
    async with running(make_worker(app, dsn)):
        waiter = asyncio.create_task(pgq.wait_async(await connect(dsn), job_id, timeout=30))
        await eventually(has_status(db, job_id, "running"), describe(dsn, job_id))
        await asyncio.sleep(0.3)  # the waiter is listening by now
        assert not waiter.done()
        gate.set()
        job = await asyncio.wait_for(waiter, 10)  # far sooner than the 60 s re-check
    assert job.result == "done"


def test_wait_times_out_with_pgqs_error_and_leaves_the_connection_usable(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = pgq.enqueue(conn, "nobody_runs_this").id
    conn.commit()
    with pytest.raises(pgq.WaitTimeout, match=rf"job {job_id} did not finish within 0.3s"):
        pgq.wait(conn, job_id, timeout=0.3)
    assert pgq.get_job(conn, job_id).status == "queued"


def test_wait_returns_when_an_operator_cancels_the_job(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id = pgq.enqueue(conn, "nobody_runs_this").id

        def cancel_soon() -> None:
            with psycopg.connect(dsn) as other:
                pgq.cancel(other, job_id)

        timer = threading.Timer(0.3, cancel_soon)
        timer.start()
        job = pgq.wait(conn, job_id, timeout=15)
        timer.join()
    assert job.status == "cancelled" and job.finished


def test_wait_refuses_a_connection_inside_a_transaction_and_bad_timeouts(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = pgq.enqueue(conn, "nobody_runs_this").id  # not committed: conn is in a transaction
    with pytest.raises(pgq.InvalidJobError, match="outside a transaction: commit first"):
        pgq.wait(conn, job_id, timeout=1)
    conn.commit()
    for timeout in (-1, float("nan"), "5", True):
        with pytest.raises(pgq.InvalidJobError, match="timeout must be None or seconds"):
            pgq.wait(conn, job_id, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(pgq.JobNotFoundError, match="no job with id 999999"):
        pgq.wait(conn, 999_999, timeout=1)


def test_get_job_shows_a_typed_view_with_status_attempts_result_errors_and_progress(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = pgq.enqueue(conn, "report", {"n": 1}).id
    conn.commit()
    job = pgq.get_job(conn, job_id)
    assert isinstance(job, pgq.JobDetail)
    assert job.status is pgq.JobStatus.QUEUED and job.attempts == 0
    assert (job.args, job.result, job.progress, job.errors) == ({"n": 1}, None, None, [])
    assert not job.finished


@in_asyncio
async def test_get_job_async_says_when_there_is_no_such_job(dsn: str) -> None:
    db: AsyncConn = await connect(dsn)
    with pytest.raises(pgq.JobNotFoundError, match="no job with id 12345"):
        await pgq.get_job_async(db, 12345)
