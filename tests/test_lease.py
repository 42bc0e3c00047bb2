"""Leases (pgq.worker.lease): the table of leases a worker holds, and the heartbeat that
extends them and reports the ones it lost.

The first tests drive ``LeaseTable`` and ``Heartbeat`` directly: ``Heartbeat.tick`` on a
connection of the test's own, against jobs seeded as workers and rescue would have left
them. The last two run a whole worker (test_worker.py's helpers) whose heartbeat must keep
a long job's lease, and a re-claimed job's newer lease, alive while rescue sweeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import pgq
from pgq.job import ClaimedJob
from pgq.queries import query
from pgq.rescue import rescue_stale_jobs
from pgq.worker.lease import Heartbeat, Lease, LeaseTable
from seeding import Conn, fetch_job, seed_job
from worker_helpers import (
    connect,
    describe,
    enqueue,
    eventually,
    has_status,
    make_worker,
    running,
    wait_until,
)
from worker_helpers import fetch_job as fetch_job_async

# A retry due at once, so that a rescued job can be claimed again straight away.
AT_ONCE = pgq.Retry(base_seconds=0.001, cap_seconds=0.001)


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    """Autocommit, as a heartbeat's own connection is."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def claimed(job_id: int, lease_token: uuid.UUID, attempt: int = 1) -> ClaimedJob:
    return ClaimedJob(
        id=job_id, queue="default", task="task", args={}, attempt=attempt, max_attempts=5,
        lease_token=lease_token, created_at=datetime.now(UTC),
    )  # fmt: skip


def hold(db: Conn, leases: LeaseTable, job_id: int) -> uuid.UUID:
    """Hold the lease the job's row has now, as the worker that claimed it would."""
    token: uuid.UUID = fetch_job(db, job_id)["lease_token"]
    leases.hold(claimed(job_id, token))
    return token


def lease_left(db: Conn, job_id: int) -> float:
    """Seconds until the job's lease expires (negative: expired)."""
    job = fetch_job(db, job_id)
    return float((job["locked_until"] - job["db_now"]).total_seconds())


# -- the lease table ----------------------------------------------------------------------------


def test_the_lease_table_holds_two_runs_of_one_job_apart_by_their_lease_tokens() -> None:
    leases = LeaseTable()
    stale, newer, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    leases.hold(claimed(7, stale, attempt=1))
    leases.hold(claimed(7, newer, attempt=2))
    leases.hold(claimed(8, other))

    assert len(leases) == 3
    assert set(leases.snapshot()) == {(7, stale), (7, newer), (8, other)}

    leases.release([stale])

    assert set(leases.snapshot()) == {(7, newer), (8, other)}, "the newer run keeps its lease"


def test_releasing_is_idempotent_and_ignores_leases_not_held() -> None:
    leases = LeaseTable()
    token = uuid.uuid4()
    leases.hold(claimed(1, token))
    leases.hold(claimed(1, token))  # the same run twice: one lease

    leases.release([uuid.uuid4(), token, token])

    assert leases.snapshot() == []
    assert len(leases) == 0


# -- the heartbeat, one tick at a time ----------------------------------------------------------


def make_heartbeat(
    dsn: str, leases: LeaseTable, lost: list[list[Lease]], lease_seconds: float = 60.0
) -> Heartbeat:
    return Heartbeat(
        dsn=dsn, schema="pgq", lease_seconds=lease_seconds, leases=leases, on_lost=lost.append
    )


def test_a_heartbeat_extends_every_held_lease_to_a_full_lease_from_now(dsn: str, db: Conn) -> None:
    soon = seed_job(db, "running", lease_in=2)
    # Expired but not yet rescued: still this worker's job, and its lease is renewed.
    lapsed = seed_job(db, "running", lease_in=-1)
    elsewhere = seed_job(db, "running", lease_in=2)  # another worker's
    leases = LeaseTable()
    hold(db, leases, soon)
    hold(db, leases, lapsed)
    lost: list[list[Lease]] = []
    untouched = fetch_job(db, elsewhere)["locked_until"]

    wait = make_heartbeat(dsn, leases, lost, lease_seconds=60).tick(db)

    assert wait == 20.0, "the next beat comes after a third of the lease"
    for job_id in (soon, lapsed):
        assert 55 < lease_left(db, job_id) <= 60
    assert fetch_job(db, elsewhere)["locked_until"] == untouched
    assert lost == []


def test_a_heartbeat_reports_the_leases_rescue_took_and_keeps_a_reclaimed_jobs_newer_lease(
    dsn: str, db: Conn
) -> None:
    kept = seed_job(db, "running", task="kept", lease_in=30)
    requeued = seed_job(db, "running", task="requeued", lease_in=30)
    rerun = seed_job(db, "running", task="rerun", lease_in=30)
    leases = LeaseTable()
    tokens = {job_id: hold(db, leases, job_id) for job_id in (kept, requeued, rerun)}
    # Behind the worker's back (a long pause, say), two of its leases lapse and rescue
    # returns their jobs to the queue ...
    db.execute(
        "UPDATE pgq.jobs SET locked_until = now() - interval '1 second' WHERE id = ANY(%s)",
        [[requeued, rerun]],
    )
    assert {job.id for job in rescue_stale_jobs(db, "pgq", AT_ONCE)} == {requeued, rerun}
    # ... and the worker claims one of them again: its newer run holds a new lease.
    db.execute("UPDATE pgq.jobs SET run_at = now() WHERE id = %s", [rerun])
    claim = {"tasks": ["rerun"], "limit": 1, "lease_seconds": 30, "worker": "this-worker"}
    row = db.execute(query("claim_jobs", "pgq"), claim).fetchone()
    assert row is not None and row[0] == rerun
    newer: uuid.UUID = row[6]
    leases.hold(claimed(rerun, newer, attempt=2))
    lost: list[list[Lease]] = []

    make_heartbeat(dsn, leases, lost).tick(db)

    assert len(lost) == 1
    assert set(lost[0]) == {(requeued, tokens[requeued]), (rerun, tokens[rerun])}
    assert 55 < lease_left(db, kept) <= 60
    assert 55 < lease_left(db, rerun) <= 60, "the newer run's lease is extended"
    job = fetch_job(db, requeued)
    assert (job["status"], job["locked_until"]) == ("queued", None), "a lost lease is not renewed"


# -- the heartbeat thread -----------------------------------------------------------------------


def test_the_heartbeat_thread_survives_a_statement_the_database_refuses(
    dsn: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgq.lease")
    job_id = seed_job(db, "running", lease_in=30)
    leases = LeaseTable()
    hold(db, leases, job_id)
    db.execute(
        "CREATE FUNCTION public.refuse_updates() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_updates BEFORE UPDATE ON pgq.jobs"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse_updates()"
    )
    lost: list[list[Lease]] = []
    told: list[None] = []
    heartbeat = Heartbeat(
        dsn=dsn, schema="pgq", lease_seconds=0.6, leases=leases, on_lost=lost.append,
        on_failure=lambda: told.append(None),
    )  # fmt: skip

    heartbeat.start()
    try:
        wait_until(lambda: heartbeat.failures >= 2, 10, "two refused heartbeats")
        assert heartbeat.is_alive()
        assert lease_left(db, job_id) > 20, "not extended while refused"
        db.execute("DROP TRIGGER refuse_updates ON pgq.jobs")
        wait_until(lambda: lease_left(db, job_id) <= 0.6, 10, "extended once allowed again")
    finally:
        heartbeat.stop()

    assert not heartbeat.is_alive()
    assert len(told) == heartbeat.failures >= 2
    assert lost == []
    assert "heartbeat failed (refused by the test" in caplog.text


# -- a whole worker's heartbeat -----------------------------------------------------------------


async def stays(predicate: Callable[[], Awaitable[bool]], seconds: float, message: str) -> None:
    """Check that ``predicate`` keeps holding for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await predicate(), message
        await asyncio.sleep(0.05)


def test_stale_run_finishing_late_does_not_drop_the_lease_of_the_jobs_newer_run(
    dsn: str,
) -> None:
    """The worker re-claims its own rescued job while the stale run's thread still runs."""
    app = pgq.App()
    release_first = threading.Event()
    release_second = threading.Event()
    runs: list[int] = []
    returned: list[int] = []

    @app.task()
    def export(ctx: pgq.JobContext) -> None:
        runs.append(ctx.attempt)
        (release_first if ctx.attempt == 1 else release_second).wait(30)
        returned.append(ctx.attempt)

    def rescue_now(job_id: int) -> None:
        # What another worker's rescue does when this one stalled past its lease.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE pgq.jobs SET locked_until = now() - interval '1 second' WHERE id = %s",
                [job_id],
            )
            rescued = rescue_stale_jobs(conn, "pgq", pgq.Retry(0.01, 0.01))
        assert [job.id for job in rescued] == [job_id]

    async def scenario() -> None:
        worker = make_worker(app, dsn, lease_seconds=1.0)
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "export")
            try:
                async with running(worker) as worker_task:
                    await eventually(lambda: runs == [1], "first run", worker_task=worker_task)
                    await asyncio.to_thread(rescue_now, job_id)
                    await eventually(
                        lambda: runs == [1, 2], "claimed again", worker_task=worker_task
                    )
                    release_first.set()
                    await eventually(
                        lambda: returned == [1] and worker.stats.counts["discarded"] == 1,
                        "the stale run's result was discarded", worker_task=worker_task,
                    )  # fmt: skip
                    # Two leases and a rescue sweep later, the new run must still hold its job.
                    await stays(
                        has_status(db, job_id, "running", attempts=2), 2.5,
                        "the running second attempt kept its lease",
                    )  # fmt: skip
                    release_second.set()
                    await eventually(
                        has_status(db, job_id, "succeeded"), describe(dsn, job_id),
                        worker_task=worker_task,
                    )  # fmt: skip
                    job = await fetch_job_async(db, job_id)
            finally:
                release_first.set()
                release_second.set()
        assert runs == [1, 2]
        assert job["attempts"] == 2
        assert len(job["errors"]) == 1  # the one rescue

    asyncio.run(scenario())


def test_heartbeats_extend_the_lease_of_a_job_running_longer_than_it(dsn: str) -> None:
    app = pgq.App()
    runs: list[int] = []

    @app.task()
    def crunch(ctx: pgq.JobContext) -> None:
        runs.append(ctx.attempt)
        time.sleep(3)

    async def scenario() -> None:
        worker = make_worker(app, dsn, lease_seconds=1.0)
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "crunch")
            leases: list[Any] = []
            async with running(worker) as worker_task:
                await eventually(
                    has_status(db, job_id, "running"), describe(dsn, job_id),
                    worker_task=worker_task,
                )  # fmt: skip

                def rescue_once() -> None:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        rescue_stale_jobs(conn, "pgq")

                async def finished() -> bool:
                    # Rescue as eagerly as a fleet of peers would: a lapse would show.
                    await asyncio.to_thread(rescue_once)
                    job = await fetch_job_async(db, job_id)
                    if job["locked_until"] is not None:
                        leases.append(job["locked_until"])
                    return bool(job["status"] != "running")

                await eventually(finished, describe(dsn, job_id), worker_task=worker_task)
            job = await fetch_job_async(db, job_id)
        assert job["status"] == "succeeded"
        assert job["attempts"] == 1 and job["errors"] == []
        assert runs == [1]
        assert len(set(leases)) >= 3, "locked_until moved forward with each heartbeat"
        assert leases == sorted(leases)

    asyncio.run(scenario())
