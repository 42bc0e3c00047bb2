"""Cancelling a running job: the row is ``cancelled`` at once, and the worker stops it.

An async handler is cancelled, a sync one sees ``ctx.cancel_requested``, a job
claimed but not started is dropped, and whatever a handler returns after the cancel
is fenced out. In-process workers here; `pgq work` processes at the end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgq
from pgq.job import ClaimedJob
from pgq.tasks import Task
from pgq.worker.executor import Executor
from pgq.worker.lease import LeaseTable
from pgq.worker.outcome import Outcome
from pgq.worker.progress import ProgressBuffer
from test_results import in_asyncio
from worker_helpers import (
    WorkerProcesses,
    connect,
    describe,
    enqueue,
    fetch_job,
    make_worker,
    running,
    wait_until,
)


def cancel(dsn: str, job_id: int) -> float:
    """Cancel through the Python API on a connection of its own; when (monotonic)."""
    with psycopg.connect(dsn) as conn:
        pgq.cancel(conn, job_id)
    return time.monotonic()


@in_asyncio
async def test_cancelling_a_running_async_job_cancels_its_handler_within_a_second(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = pgq.App()
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.task()
    async def forever() -> str:
        started.set()
        try:
            await asyncio.sleep(300)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "never"

    @app.task()
    def after() -> int:
        return 7

    caplog.set_level(logging.INFO, logger="pgq.worker")
    db = await connect(dsn)
    job_id = await enqueue(db, "forever")
    async with running(make_worker(app, dsn)) as worker_task:
        await asyncio.wait_for(started.wait(), 15)
        cancelled_at = await asyncio.to_thread(cancel, dsn, job_id)
        await asyncio.wait_for(stopped.wait(), 5)
        assert time.monotonic() - cancelled_at < 1.0
        job = await fetch_job(db, job_id)
        assert job["status"] == "cancelled" and job["result"] is None
        # The worker runs on: the next job succeeds.
        next_job = await pgq.wait_async(db, await enqueue(db, "after"), timeout=15)
        assert next_job.result == 7 and not worker_task.done()
    said = f"job {job_id} (forever): cancelled by an operator; cancelling its handler"
    assert said in caplog.text
    history = (await pgq.get_job_async(db, job_id)).errors
    assert history[-1]["event"] == "cancelled" and history[-1]["previous_status"] == "running"


@in_asyncio
async def test_a_sync_handler_sees_cancel_requested_and_its_late_result_is_fenced_out(
    dsn: str,
) -> None:
    app = pgq.App()
    saw_cancel = threading.Event()
    started = threading.Event()

    @app.task()
    def polite(ctx: pgq.JobContext) -> str:
        started.set()
        while not ctx.cancel_requested:
            time.sleep(0.01)
        saw_cancel.set()
        time.sleep(0.2)  # the result arrives well after the cancel
        return "finished anyway"

    db = await connect(dsn)
    job_id = await enqueue(db, "polite")
    async with running(make_worker(app, dsn)) as worker_task:
        assert await asyncio.to_thread(started.wait, 15)
        cancelled_at = await asyncio.to_thread(cancel, dsn, job_id)
        assert await asyncio.to_thread(saw_cancel.wait, 5)
        assert time.monotonic() - cancelled_at < 1.0
        await asyncio.sleep(0.6)  # its return has been through the worker by now
        assert not worker_task.done()
    job = await pgq.get_job_async(db, job_id)
    assert (job.status, job.result, job.finished_at is not None) == ("cancelled", None, True)


@in_asyncio
async def test_an_async_handler_that_swallows_the_cancel_still_ends_cancelled(dsn: str) -> None:
    app = pgq.App()
    started = asyncio.Event()

    @app.task()
    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(300)
        except asyncio.CancelledError:
            pass
        return "late result"

    db = await connect(dsn)
    job_id = await enqueue(db, "stubborn")
    async with running(make_worker(app, dsn)):
        await asyncio.wait_for(started.wait(), 15)
        await asyncio.to_thread(cancel, dsn, job_id)
        await asyncio.sleep(0.5)
    job = await pgq.get_job_async(db, job_id)
    assert (job.status, job.result) == ("cancelled", None)


@in_asyncio
async def test_a_worker_without_listen_finds_the_cancel_at_its_heartbeat(dsn: str) -> None:
    # --poll-only (PgBouncer in transaction mode): no NOTIFY reaches it.
    app = pgq.App()
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.task()
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(300)
        except asyncio.CancelledError:
            stopped.set()
            raise

    db = await connect(dsn)
    job_id = await enqueue(db, "forever")
    worker = make_worker(app, dsn, poll_only=True, lease_seconds=0.9)  # a heartbeat each 0.3 s
    async with running(worker):
        await asyncio.wait_for(started.wait(), 15)
        await asyncio.to_thread(cancel, dsn, job_id)
        await asyncio.wait_for(stopped.wait(), 5)
    assert (await fetch_job(db, job_id))["status"] == "cancelled"


@in_asyncio
async def test_a_job_claimed_but_not_started_is_dropped_when_cancelled() -> None:
    # The executor alone, as the producer drives it: two sync jobs, one slot.
    ran: list[int] = []
    gate = threading.Event()

    def handler(n: int) -> None:
        ran.append(n)
        gate.wait(10)

    task = Task(name="blocking", handler=handler)
    recorded: list[Outcome] = []
    discarded: list[ClaimedJob] = []
    executor = Executor(
        {"blocking": task}, chains={}, concurrency=1, worker_name="test", leases=LeaseTable(),
        progress=ProgressBuffer("pgq"), record=recorded.append, discard=discarded.append,
        on_job_done=lambda: None, on_thread_freed=lambda: None,
    )  # fmt: skip
    now = datetime.now(UTC)
    first, second = (
        ClaimedJob(n, "default", "blocking", {"n": n}, 1, 5, uuid.uuid4(), now) for n in (1, 2)
    )
    executor.start(first)
    executor.start(second)
    await asyncio.sleep(0.2)
    assert ran == [1]
    executor.cancel(second.id, second.lease_token)
    assert discarded == [second] and second.lease_token not in executor.running
    assert (second.id, second.lease_token) not in executor.leases.snapshot()
    gate.set()
    for _ in range(100):
        if recorded:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert ran == [1], "the dropped job never ran"
    assert [o.job.id for o in recorded] == [1]
    executor.close()


def test_cancel_refuses_finished_jobs_and_records_a_running_jobs_worker(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = pgq.enqueue(conn, "t").id
    conn.execute(
        "UPDATE pgq.jobs SET status = 'running', attempts = 1, locked_by = 'w1', "
        "lease_token = gen_random_uuid(), locked_until = now() + interval '1 minute' "
        "WHERE id = %s",
        [job_id],
    )
    conn.commit()
    pgq.cancel(conn, job_id)
    job = pgq.get_job(conn, job_id)
    assert (job.status, job.locked_by, job.locked_until) == ("cancelled", None, None)
    assert job.errors[-1]["worker"] == "w1" and job.errors[-1]["previous_status"] == "running"
    with pytest.raises(pgq.JobStateError, match="only queued or running jobs can be cancelled"):
        pgq.cancel(conn, job_id)


# -- `pgq work` processes ----------------------------------------------------------------

RESULTS_APP = "tests.apps.results_app:app"


def test_pgq_work_stops_cancelled_async_and_sync_jobs_and_keeps_working(
    dsn: str, workers: WorkerProcesses, tmp_path: Path
) -> None:
    marker = tmp_path / "sync-handler-saw-the-cancel"
    worker = workers.start(dsn, "--concurrency", "4", app=RESULTS_APP)
    with psycopg.connect(dsn, autocommit=True) as conn:
        async_id = pgq.enqueue(conn, "wait_async").id
        sync_id = pgq.enqueue(conn, "wait_sync", {"marker": str(marker)}).id

        def started() -> bool:  # each handler reports progress once it runs
            return all(
                pgq.get_job(conn, job_id).progress == {"state": "started"}
                for job_id in (async_id, sync_id)
            )

        wait_until(started, 30, lambda: f"both jobs to report progress:\n{worker.log()}")
        for job_id in (async_id, sync_id):
            pgq.cancel(conn, job_id)
        wait_until(marker.exists, 5, lambda: f"the sync handler to see it:\n{worker.log()}")
        wait_until(
            lambda: f"job {async_id} (wait_async): cancelled by an operator" in worker.log(),
            5, "the worker to log the cancel",
        )  # fmt: skip
        time.sleep(0.5)  # the sync handler's "stopped early" went through the fence by now
        for job_id in (async_id, sync_id):
            job = pgq.get_job(conn, job_id)
            assert (job.status, job.result) == ("cancelled", None), describe(dsn, job_id)()
        added = pgq.wait(conn, pgq.enqueue(conn, "add", {"a": 20, "b": 22}).id, timeout=15)
    assert added.result == 42
    assert worker.running(), worker.log()
