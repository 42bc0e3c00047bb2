"""The worker in-process: outcomes of handlers (retry, snooze, give up, timeouts), what it
claims, queue limits, the lease fence, wake-ups and graceful shutdown. How heartbeats keep
leases (and a re-claimed job's newer lease) is test_lease.py's.

Each test builds its own ``pgq.App`` and runs a ``pgq.Worker`` on this test's own
database inside ``asyncio.run`` (helpers in worker_helpers.py), while the test watches
the jobs table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from typing import Any

import pytest

import pgq
from worker_helpers import (
    FAST_POLL_SECONDS,
    QUICK_RETRY,
    SLOW_RETRY,
    STOP_TIMEOUT_SECONDS,
    AsyncConn,
    connect,
    describe,
    enqueue,
    eventually,
    fetch_job,
    has_status,
    make_worker,
    running,
    value,
)


class Gauge:
    """Counts handlers running at once (thread-safe), and the most seen together."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.current -= 1


# -- failures, retries and dead jobs --------------------------------------------------------


def test_failing_job_backs_off_within_jittered_ceiling_and_ends_dead_with_its_history(
    dsn: str,
) -> None:
    app = pgq.App()

    @app.task(max_attempts=3, retry=SLOW_RETRY)
    def flaky() -> None:
        raise ValueError("boom")

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "flaky", max_attempts=3)
            async with running(make_worker(app, dsn)) as worker_task:
                # Ceilings: base * 2 ** (attempt - 1), capped: 20 s, then 30 s (not 40).
                for attempt, ceiling in ((1, 20.0), (2, 30.0)):
                    await eventually(
                        has_status(db, job_id, "queued", attempts=attempt),
                        describe(dsn, job_id), worker_task=worker_task,
                    )  # fmt: skip
                    # run_at and the error's `at` come from the same statement's now().
                    delay = await value(
                        db,
                        "SELECT extract(epoch FROM run_at - (errors->-1->>'at')::timestamptz)"
                        " FROM pgq.jobs WHERE id = %s",
                        [job_id],
                    )
                    assert ceiling / 2 <= float(delay) <= ceiling, (attempt, delay)
                    job = await fetch_job(db, job_id)
                    assert job["finished_at"] is None
                    assert job["locked_by"] is None and job["locked_until"] is None
                    # Skip the wait: make the retry due now.
                    await db.execute("UPDATE pgq.jobs SET run_at = now() WHERE id = %s", [job_id])
                await eventually(
                    has_status(db, job_id, "dead"), describe(dsn, job_id), worker_task=worker_task
                )
            job = await fetch_job(db, job_id)
        assert job["attempts"] == 3
        assert job["finished_at"] is not None
        assert job["last_error"] == "ValueError: boom"
        assert [entry["attempt"] for entry in job["errors"]] == [1, 2, 3]
        for entry in job["errors"]:
            assert entry["error"] == "ValueError: boom"
            assert 'raise ValueError("boom")' in entry["traceback"]
            assert "in flaky" in entry["traceback"]
            assert entry["worker"]

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["raise Snooze", "ctx.snooze"])
def test_snooze_requeues_for_later_and_refunds_the_attempt(dsn: str, how: str) -> None:
    app = pgq.App()
    attempts_seen: list[int] = []

    @app.task()
    def sync_account(ctx: pgq.JobContext) -> None:
        attempts_seen.append(ctx.attempt)
        if len(attempts_seen) == 1:
            if how == "raise Snooze":
                raise pgq.Snooze(60)
            ctx.snooze(60)

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "sync_account")
            async with running(make_worker(app, dsn)) as worker_task:

                async def snoozed() -> bool:
                    job = await fetch_job(db, job_id)
                    return bool(job["status"] == "queued" and job["run_at"] > job["db_now"])

                await eventually(snoozed, describe(dsn, job_id), worker_task=worker_task)
                job = await fetch_job(db, job_id)
                assert job["attempts"] == 0, "a snooze gives the attempt back"
                assert 55 <= (job["run_at"] - job["db_now"]).total_seconds() <= 60
                assert job["errors"] == [] and job["last_error"] is None
                assert job["finished_at"] is None and job["locked_by"] is None

                await db.execute("UPDATE pgq.jobs SET run_at = now() WHERE id = %s", [job_id])
                await eventually(
                    has_status(db, job_id, "succeeded"), describe(dsn, job_id),
                    worker_task=worker_task,
                )  # fmt: skip
                job = await fetch_job(db, job_id)
        assert attempts_seen == [1, 1]
        assert job["attempts"] == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["raise GiveUp", "ctx.give_up"])
def test_give_up_makes_the_job_dead_at_once_with_attempts_left(dsn: str, how: str) -> None:
    app = pgq.App()
    calls: list[int] = []

    @app.task(retry=QUICK_RETRY)
    def import_feed(ctx: pgq.JobContext) -> None:
        calls.append(ctx.attempt)
        if how == "raise GiveUp":
            raise pgq.GiveUp("malformed payload")
        ctx.give_up("malformed payload")

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "import_feed", max_attempts=5)
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, job_id, "dead"), describe(dsn, job_id), worker_task=worker_task
                )
            job = await fetch_job(db, job_id)
        assert calls == [1]
        assert job["attempts"] == 1 and job["max_attempts"] == 5
        assert job["finished_at"] is not None
        assert job["last_error"] == "GiveUp: malformed payload"
        assert [entry["error"] for entry in job["errors"]] == ["GiveUp: malformed payload"]

    asyncio.run(scenario())


# Args written past Task.enqueue's check (by name, or by SQL), and the error the worker
# stores for them: the same text Task.enqueue raises (test_tasks.py), after the same prefix.
ARGS_THAT_DO_NOT_FIT = {
    "an unknown arg": (
        {"order": 7},
        "InvalidJobError: args do not match charge's signature: "
        "charge() got an unexpected arg 'order'; it takes: order_id",
    ),
    "a required arg left out": (
        {},
        "InvalidJobError: args do not match charge's signature: "
        "charge() is missing the required arg 'order_id'",
    ),
    "ctx, which the worker fills": (
        {"order_id": 7, "ctx": 1},
        "InvalidJobError: args do not match charge's signature: "
        "charge() gets 'ctx' from pgq (the JobContext): leave it out of the args",
    ),
}


@pytest.mark.parametrize(("args", "error"), ARGS_THAT_DO_NOT_FIT.values(), ids=ARGS_THAT_DO_NOT_FIT)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_args_that_do_not_fit_the_handler_fail_their_attempt_and_are_retried(
    dsn: str, kind: str, args: dict[str, Any], error: str
) -> None:
    app = pgq.App()
    calls: list[int] = []

    if kind == "sync":

        @app.task(retry=QUICK_RETRY)
        def charge(order_id: int, ctx: pgq.JobContext) -> None:
            calls.append(order_id)

    else:

        @app.task(retry=QUICK_RETRY)
        async def charge(order_id: int, ctx: pgq.JobContext) -> None:
            calls.append(order_id)

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await value(
                db,
                "INSERT INTO pgq.jobs (task, args, max_attempts) VALUES ('charge', %s::jsonb, 2)"
                " RETURNING id",
                [json.dumps(args)],
            )
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, job_id, "dead"), describe(dsn, job_id), worker_task=worker_task
                )
            job = await fetch_job(db, job_id)
        # Retried (in a rolling deploy, another version of the task may take these args),
        # then dead with the reason.
        assert (job["attempts"], job["last_error"]) == (2, error)
        assert [entry["error"] for entry in job["errors"]] == [error, error]
        assert calls == [], "the handler never ran"

    asyncio.run(scenario())


def test_a_type_error_the_handler_raises_itself_is_retried_like_any_failure(dsn: str) -> None:
    app = pgq.App()
    attempts: list[int] = []

    @app.task(retry=QUICK_RETRY)
    def charge(order_id: int, ctx: pgq.JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = (await charge.enqueue_async(db, {"order_id": 7})).id
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, job_id, "succeeded"), describe(dsn, job_id),
                    worker_task=worker_task,
                )  # fmt: skip
            job = await fetch_job(db, job_id)
        assert job["attempts"] == 2
        assert attempts == [1, 2]

    asyncio.run(scenario())


# -- one bad row, one bad exception: one job ends, never the worker -------------------------

# Args that jsonb holds but Python cannot decode: a 5,001-digit integer, 3,000 levels of
# nesting. A row written straight into the table skips pgq's own checks.
POISON_ARGS = ['{"n": 1e5000}', '{"n": ' + "[" * 3000 + "]" * 3000 + "}"]


def test_a_row_whose_args_python_cannot_decode_ends_dead_and_its_batch_runs(dsn: str) -> None:
    app = pgq.App()
    ran: list[int] = []

    @app.task(retry=QUICK_RETRY)
    def record(n: int) -> None:
        ran.append(n)

    async def scenario() -> None:
        async with await connect(dsn) as db:
            poison = []
            for text in POISON_ARGS:
                cursor = await db.execute(
                    "INSERT INTO pgq.jobs (task, args) VALUES ('record', %s::jsonb) RETURNING id",
                    [text],
                )
                row = await cursor.fetchone()
                assert row is not None
                poison.append(int(row[0]))
            good = [await enqueue(db, "record", {"n": n}) for n in range(6)]
            worker = make_worker(app, dsn, concurrency=10)  # one claim takes all eight
            async with running(worker) as worker_task:
                for job_id in good:
                    await eventually(has_status(db, job_id, "succeeded"), describe(dsn, job_id),
                                     worker_task=worker_task)  # fmt: skip
                all_dead = "SELECT bool_and(status = 'dead') FROM pgq.jobs WHERE id = ANY(%s)"
                await eventually(lambda: value(db, all_dead, [poison]), "the poison jobs are dead",
                                 worker_task=worker_task)  # fmt: skip
                assert not worker_task.done(), "the worker is still serving"
            for job_id in poison:
                # Not fetch_job: psycopg cannot load these args either.
                attempts = await value(db, "SELECT attempts FROM pgq.jobs WHERE id = %s", [job_id])
                error = await value(db, "SELECT last_error FROM pgq.jobs WHERE id = %s", [job_id])
                assert attempts == 1, "dead at once: retrying cannot help"
                assert error.startswith(
                    "pgq could not run this job: its args cannot be decoded by Python: "
                )
        assert sorted(ran) == list(range(6))
        assert worker.stats.counts["refused"] == 2

    asyncio.run(scenario())


class Unprintable(Exception):
    """An exception whose text cannot be had: __str__ and __repr__ raise it again, so the
    error about it has no text either."""

    def __str__(self) -> str:
        raise self

    def __repr__(self) -> str:
        raise self


class UnprintableReason:
    def __str__(self) -> str:
        raise Unprintable()

    def __format__(self, spec: str) -> str:
        raise Unprintable()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("raised", ["exception", "give up"])
def test_a_handler_error_that_cannot_be_formatted_still_ends_its_job(
    dsn: str, kind: str, raised: str
) -> None:
    app = pgq.App()

    def fail() -> None:
        if raised == "exception":
            raise Unprintable()
        raise pgq.GiveUp(UnprintableReason())  # type: ignore[arg-type]

    if kind == "sync":

        @app.task(retry=QUICK_RETRY)
        def explode() -> None:
            fail()

    else:

        @app.task(retry=QUICK_RETRY)
        async def explode() -> None:
            fail()

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "explode", max_attempts=2)
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(has_status(db, job_id, "dead"), describe(dsn, job_id),
                                 worker_task=worker_task)  # fmt: skip
            job = await fetch_job(db, job_id)
        if raised == "exception":
            assert job["attempts"] == 2, "failed and retried like any failure"
            assert job["last_error"].startswith("Unprintable: <Unprintable's text could not be")
        else:
            assert job["attempts"] == 1
            assert job["last_error"].startswith("GiveUp: <UnprintableReason's text could not be")

    asyncio.run(scenario())


def test_type_error_raised_inside_a_handler_is_retried_like_any_failure(dsn: str) -> None:
    app = pgq.App()

    @app.task(retry=SLOW_RETRY)
    def add(x: int) -> int:
        return x + "1"  # type: ignore[operator]

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "add", {"x": 1}, max_attempts=5)
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, job_id, "queued", attempts=1), describe(dsn, job_id),
                    worker_task=worker_task,
                )  # fmt: skip
            job = await fetch_job(db, job_id)
        assert job["last_error"].startswith("TypeError: unsupported operand")
        assert job["run_at"] > job["db_now"], "retried after a backoff"

    asyncio.run(scenario())


# -- timeouts -------------------------------------------------------------------------------


def test_async_handler_past_its_timeout_fails_with_a_timeout_error_and_is_retried(
    dsn: str,
) -> None:
    app = pgq.App()
    cancelled: list[int] = []

    @app.task(timeout=0.3, retry=QUICK_RETRY)
    async def fetch_page(ctx: pgq.JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)
            raise

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "fetch_page", max_attempts=2)
            started = time.monotonic()
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, job_id, "dead"), describe(dsn, job_id), worker_task=worker_task
                )
            elapsed = time.monotonic() - started
            job = await fetch_job(db, job_id)
        assert elapsed < 10, "the handler was stopped at its deadline, not after its 30 s sleep"
        assert cancelled == [1, 2]
        assert job["attempts"] == 2
        assert len(job["errors"]) == 2
        for entry in job["errors"]:
            assert entry["error"].startswith("HandlerTimeout: task fetch_page exceeded its timeout")
        assert "0.3s" in job["last_error"]

    asyncio.run(scenario())


def test_sync_handler_past_its_timeout_is_failed_at_the_deadline_and_its_late_result_discarded(
    dsn: str,
) -> None:
    app = pgq.App()
    release = threading.Event()
    returned: list[int] = []

    @app.task(timeout=0.5, retry=SLOW_RETRY)
    def render(ctx: pgq.JobContext) -> str:
        release.wait(30)  # a thread cannot be interrupted: it runs on past the deadline
        returned.append(ctx.attempt)
        return "late result"

    async def scenario() -> None:
        worker = make_worker(app, dsn)
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "render", max_attempts=3)
            try:
                async with running(worker) as worker_task:
                    await eventually(
                        has_status(db, job_id, "queued", attempts=1), describe(dsn, job_id),
                        worker_task=worker_task,
                    )  # fmt: skip
                    timed_out = await fetch_job(db, job_id)
                    assert returned == [], "failed while the handler was still running"
                    assert worker.stuck_threads == 1
                    error_at = await value(
                        db, "SELECT (errors->0->>'at')::timestamptz - started_at "
                        "FROM pgq.jobs WHERE id = %s", [job_id],
                    )  # fmt: skip
                    assert 0.4 <= error_at.total_seconds() < 5, "failed at its 0.5 s deadline"
                    assert timed_out["last_error"].startswith("HandlerTimeout: task render")

                    release.set()
                    await eventually(
                        lambda: worker.stuck_threads == 0 and returned == [1],
                        "the handler thread ended", worker_task=worker_task,
                    )  # fmt: skip
                    await asyncio.sleep(0.5)  # room for a (wrong) late write
                    after = await fetch_job(db, job_id)
            finally:
                release.set()
        assert worker.stats.counts["succeeded"] == 0
        for column in ("status", "attempts", "run_at", "errors", "last_error", "finished_at"):
            assert after[column] == timed_out[column], column

    asyncio.run(scenario())


# -- what a worker claims -------------------------------------------------------------------


def test_jobs_of_tasks_the_app_does_not_register_stay_queued_untouched(dsn: str) -> None:
    app = pgq.App()

    @app.task()
    def known() -> None:
        pass

    async def scenario() -> None:
        async with await connect(dsn) as db:
            unknown_id = await enqueue(db, "registered_elsewhere")
            known_ids = [await enqueue(db, "known") for _ in range(3)]
            async with running(make_worker(app, dsn)) as worker_task:
                for job_id in known_ids:
                    await eventually(
                        has_status(db, job_id, "succeeded"), describe(dsn, job_id),
                        worker_task=worker_task,
                    )  # fmt: skip
                await asyncio.sleep(5 * FAST_POLL_SECONDS)  # a few more claim rounds
                job = await fetch_job(db, unknown_id)
        assert job["status"] == "queued"
        assert job["attempts"] == 0
        assert job["locked_by"] is None and job["lease_token"] is None
        assert job["started_at"] is None

    asyncio.run(scenario())


def test_worker_serves_only_its_queues(dsn: str) -> None:
    app = pgq.App()

    @app.task()
    def work() -> None:
        pass

    async def scenario() -> None:
        async with await connect(dsn) as db:
            mine = [await enqueue(db, "work", queue="a") for _ in range(3)]
            other = [await enqueue(db, "work", queue="b") for _ in range(3)]
            worker = make_worker(app, dsn, queues={"a": None})
            async with running(worker) as worker_task:
                for job_id in mine:
                    await eventually(
                        has_status(db, job_id, "succeeded"), describe(dsn, job_id),
                        worker_task=worker_task,
                    )  # fmt: skip
                # A wake-up for queue b must not make it claim there either.
                await enqueue(db, "work", queue="b")
                await asyncio.sleep(5 * FAST_POLL_SECONDS)
                cursor = await db.execute(
                    "SELECT status::text, attempts FROM pgq.jobs WHERE queue = 'b'"
                )
                rows = await cursor.fetchall()
        assert len(rows) == len(other) + 1
        assert all(row == ("queued", 0) for row in rows)

    asyncio.run(scenario())


def test_per_queue_concurrency_limit_is_respected_while_other_queues_run(dsn: str) -> None:
    app = pgq.App()
    per_queue = {"slow": Gauge(), "other": Gauge()}
    overall = Gauge()

    @app.task()
    async def nap(ctx: pgq.JobContext) -> None:
        with per_queue[ctx.queue], overall:
            await asyncio.sleep(0.4)

    async def scenario() -> None:
        async with await connect(dsn) as db:
            for _ in range(6):
                await enqueue(db, "nap", queue="slow")
            for _ in range(4):
                await enqueue(db, "nap", queue="other")
            worker = make_worker(app, dsn, queues={"slow": 2, "other": None}, concurrency=10)
            most_running_in_db = 0
            async with running(worker) as worker_task:

                async def all_done() -> bool:
                    nonlocal most_running_in_db
                    running_now = await value(
                        db, "SELECT count(*) FROM pgq.jobs "
                        "WHERE queue = 'slow' AND status = 'running'",
                    )  # fmt: skip
                    most_running_in_db = max(most_running_in_db, running_now)
                    done = await value(
                        db, "SELECT count(*) FROM pgq.jobs WHERE status = 'succeeded'"
                    )
                    return bool(done == 10)

                await eventually(
                    all_done, "all 10 jobs succeeded", worker_task=worker_task, interval=0.01
                )
        assert per_queue["slow"].peak == 2, "the slow queue ran at its limit, never above"
        assert most_running_in_db <= 2
        assert overall.peak > 2, "the other queue ran alongside the limited one"

    asyncio.run(scenario())


def test_total_concurrency_holds_when_serving_several_queues(dsn: str) -> None:
    app = pgq.App()
    overall = Gauge()

    @app.task()
    async def nap() -> None:
        with overall:
            await asyncio.sleep(0.3)

    async def scenario() -> None:
        async with await connect(dsn) as db:
            async with db.transaction():
                await pgq.enqueue_many_async(
                    db, [pgq.JobSpec("nap", queue=q) for q in ("a", "b", "c") for _ in range(4)]
                )
            worker = make_worker(app, dsn, queues={"a": None, "b": None, "c": 5}, concurrency=2)
            async with running(worker) as worker_task:
                await eventually(
                    lambda: worker.stats.counts["succeeded"] == 12, "all 12 jobs succeeded",
                    worker_task=worker_task,
                )  # fmt: skip
        assert overall.peak <= 2, f"{overall.peak} handlers ran at once with concurrency=2"

    asyncio.run(scenario())


# -- leases: the fence ----------------------------------------------------------------------


@pytest.mark.parametrize("elsewhere", ["running", "succeeded"])
@pytest.mark.parametrize("noticed_by", ["outcome write", "heartbeat"])
def test_late_result_of_a_job_whose_lease_was_taken_over_is_discarded(
    dsn: str, elsewhere: str, noticed_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A paused worker wakes up after its job was rescued and claimed by another worker."""
    caplog.set_level(logging.WARNING, logger="pgq.worker")
    app = pgq.App()
    entered = threading.Event()
    release = threading.Event()

    @app.task()
    def transfer() -> str:
        entered.set()
        release.wait(30)
        return "done"

    # With a long lease no heartbeat comes before the release: the outcome write's
    # token check is what refuses the result. With a short one, the heartbeat
    # finds the lease gone first.
    lease_seconds = 30.0 if noticed_by == "outcome write" else 1.0

    async def scenario() -> None:
        worker = make_worker(app, dsn, lease_seconds=lease_seconds)
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "transfer")
            try:
                async with running(worker) as worker_task:
                    await eventually(entered.is_set, "the handler started", worker_task=worker_task)
                    if elsewhere == "running":
                        takeover = """
                            UPDATE pgq.jobs SET attempts = attempts + 1,
                                lease_token = gen_random_uuid(), locked_by = 'other-worker',
                                locked_until = now() + interval '10 minutes', started_at = now()
                            WHERE id = %s"""
                    else:
                        takeover = """
                            UPDATE pgq.jobs SET attempts = attempts + 1, status = 'succeeded',
                                lease_token = gen_random_uuid(), locked_by = NULL,
                                locked_until = NULL, finished_at = now()
                            WHERE id = %s"""
                    await db.execute(takeover, [job_id])
                    before = await fetch_job(db, job_id)
                    if noticed_by == "heartbeat":
                        await eventually(
                            lambda: "lease lost (rescued or changed by an operator)" in caplog.text,
                            "the heartbeat noticed the lost lease", worker_task=worker_task,
                        )  # fmt: skip
                    release.set()
                    await eventually(
                        lambda: worker.stats.counts["discarded"] == 1,
                        lambda: f"the result was discarded; stats {worker.stats.counts}",
                        worker_task=worker_task,
                    )  # fmt: skip
                    after = await fetch_job(db, job_id)
            finally:
                release.set()
        for column in before:
            if column != "db_now":
                assert after[column] == before[column], column
        assert "outcome discarded" in caplog.text or "result discarded" in caplog.text

    asyncio.run(scenario())


def test_async_handler_is_cancelled_when_its_lease_is_taken_over(dsn: str) -> None:
    app = pgq.App()
    entered = asyncio.Event()
    outcome: list[str] = []

    @app.task()
    async def transfer() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    async def scenario() -> None:
        worker = make_worker(app, dsn, lease_seconds=1.0)
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "transfer")
            async with running(worker) as worker_task:
                await eventually(entered.is_set, "the handler started", worker_task=worker_task)
                await db.execute(
                    "UPDATE pgq.jobs SET lease_token = gen_random_uuid(), locked_by = 'other',"
                    " locked_until = now() + interval '10 minutes' WHERE id = %s",
                    [job_id],
                )
                before = await fetch_job(db, job_id)
                await eventually(
                    lambda: outcome == ["cancelled"], "the handler was cancelled",
                    worker_task=worker_task,
                )  # fmt: skip
                await eventually(
                    lambda: worker.stats.counts["discarded"] == 1, "the outcome was discarded",
                    worker_task=worker_task,
                )  # fmt: skip
                after = await fetch_job(db, job_id)
        assert after["status"] == "running" and after["lease_token"] == before["lease_token"]
        assert after["locked_by"] == "other"

    asyncio.run(scenario())


# -- errors the worker must survive ---------------------------------------------------------


def test_cancelled_error_escaping_an_async_handler_fails_the_job_instead_of_leaving_it_running(
    dsn: str,
) -> None:
    app = pgq.App()

    @app.task(retry=SLOW_RETRY)
    async def gather_parts() -> None:
        # A handler awaiting a task that someone else cancelled: CancelledError
        # comes out of the handler although nobody cancelled the worker's task.
        part = asyncio.create_task(asyncio.sleep(10))
        part.cancel()
        await part

    async def scenario() -> None:
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "gather_parts", max_attempts=3)
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, job_id, "queued", attempts=1), describe(dsn, job_id),
                    timeout=5, worker_task=worker_task,
                )  # fmt: skip
            job = await fetch_job(db, job_id)
        assert "CancelledError" in job["last_error"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "message",
    [
        "NUL byte \x00 in input",
        # A file name from os.listdir() on a non-UTF-8 name holds a lone surrogate.
        "cannot parse " + os.fsdecode(b"report-\xff.csv"),
    ],
    ids=["nul-character", "undecodable-file-name"],
)
def test_error_text_postgres_cannot_store_is_still_recorded_and_blocks_no_other_outcome(
    dsn: str, message: str
) -> None:
    app = pgq.App()

    @app.task()
    def parse() -> None:
        raise ValueError(message)

    @app.task()
    def fine() -> None:
        pass

    async def scenario() -> None:
        async with await connect(dsn) as db:
            bad = await enqueue(db, "parse", max_attempts=1)
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, bad, "dead"), describe(dsn, bad),
                    timeout=5, worker_task=worker_task,
                )  # fmt: skip
                good = await enqueue(db, "fine")
                await eventually(
                    has_status(db, good, "succeeded"), describe(dsn, good),
                    timeout=5, worker_task=worker_task,
                )  # fmt: skip
            job = await fetch_job(db, bad)
        assert job["last_error"].startswith("ValueError: ")
        assert "in input" in job["last_error"] or ".csv" in job["last_error"]

    asyncio.run(scenario())


def test_snooze_too_long_for_postgres_fails_only_its_own_job(dsn: str) -> None:
    """Outcomes are written in batches: one unwritable outcome must not sink the others."""
    app = pgq.App()
    go = asyncio.Event()

    @app.task()
    async def park() -> None:
        await go.wait()
        raise pgq.Snooze(math.inf)  # "snooze forever": no interval can hold it

    @app.task()
    async def fine() -> None:
        await go.wait()

    async def scenario() -> None:
        async with await connect(dsn) as db:
            parked = await enqueue(db, "park")
            innocent = await enqueue(db, "fine")
            async with running(make_worker(app, dsn)) as worker_task:
                await eventually(
                    has_status(db, innocent, "running"), describe(dsn, innocent),
                    worker_task=worker_task,
                )  # fmt: skip
                await eventually(
                    has_status(db, parked, "running"), describe(dsn, parked),
                    worker_task=worker_task,
                )  # fmt: skip
                go.set()  # both finish in the same loop turn: one outcome batch
                await eventually(
                    has_status(db, innocent, "succeeded", attempts=1), describe(dsn, innocent),
                    timeout=5, worker_task=worker_task,
                )  # fmt: skip

                async def parked_settled() -> bool:
                    return bool((await fetch_job(db, parked))["status"] != "running")

                await eventually(
                    parked_settled, describe(dsn, parked), timeout=5, worker_task=worker_task
                )
            job = await fetch_job(db, innocent)
        assert job["errors"] == []

    asyncio.run(scenario())


# -- wake-ups ---------------------------------------------------------------------------------


async def wait_until_listening(db: AsyncConn, worker_task: asyncio.Task[None]) -> None:
    async def listening() -> bool:
        count = await value(
            db,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN %%'",
        )
        return bool(count)

    await eventually(listening, "the worker runs LISTEN", worker_task=worker_task)


def test_idle_listening_worker_picks_up_a_committed_job_without_waiting_for_its_poll(
    dsn: str,
) -> None:
    app = pgq.App()
    ran_at: list[float] = []

    @app.task()
    def ping() -> None:
        ran_at.append(time.monotonic())

    async def scenario() -> None:
        worker = make_worker(app, dsn, poll_seconds=30.0)
        async with await connect(dsn) as db:
            async with running(worker) as worker_task:
                await wait_until_listening(db, worker_task)
                # Let the claim that follows LISTEN pass, so the worker sits in its 30 s wait.
                await asyncio.sleep(0.5)
                async with db.transaction():
                    await enqueue(db, "ping")
                committed_at = time.monotonic()
                await eventually(
                    lambda: bool(ran_at), "the job ran", timeout=10, worker_task=worker_task
                )
        assert ran_at[0] - committed_at < 5, "woken by NOTIFY, not by the 30 s poll"

    asyncio.run(scenario())


def test_poll_only_worker_processes_jobs_without_listening(dsn: str) -> None:
    app = pgq.App()
    done: list[int] = []

    @app.task()
    def ping(n: int) -> None:
        done.append(n)

    async def scenario() -> None:
        worker = make_worker(app, dsn, poll_only=True, poll_seconds=0.2)
        async with await connect(dsn) as db:
            for n in range(3):
                await enqueue(db, "ping", {"n": n})
            async with running(worker) as worker_task:
                await eventually(lambda: len(done) == 3, "queued jobs ran", worker_task=worker_task)
                for n in range(3, 6):
                    await enqueue(db, "ping", {"n": n})
                await eventually(lambda: len(done) == 6, "new jobs ran", worker_task=worker_task)
                listeners = await value(
                    db,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query ILIKE 'LISTEN %%'",
                )
            succeeded = await value(db, "SELECT count(*) FROM pgq.jobs WHERE status = 'succeeded'")
        assert sorted(done) == list(range(6))
        assert listeners == 0
        assert succeeded == 6

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "off"),
        ({"synchronous_commit": True}, "on"),
        # PgBouncer in transaction mode cannot hold a session setting: left alone.
        ({"poll_only": True}, "on"),
    ],
)
def test_claims_and_outcomes_commit_without_waiting_for_the_wal_flush_unless_asked(
    dsn: str, options: dict[str, Any], expected: str
) -> None:
    app = pgq.App()
    done: list[int] = []

    @app.task()
    async def ping(n: int) -> None:
        done.append(n)

    async def scenario() -> str:
        worker = make_worker(app, dsn, **options)
        async with await connect(dsn) as db:
            job_id = await enqueue(db, "ping", {"n": 1})
            async with running(worker) as worker_task:
                await eventually(lambda: done == [1], "the job ran", worker_task=worker_task)
                await eventually(
                    has_status(db, job_id, "succeeded"), "its outcome was written",
                    worker_task=worker_task,
                )  # fmt: skip
                assert worker.pool is not None
                async with worker.pool.connection() as pooled:
                    cursor = await pooled.execute("SHOW synchronous_commit")
                    row = await cursor.fetchone()
        assert row is not None
        return str(row[0])

    assert asyncio.run(scenario()) == expected


# -- graceful shutdown ----------------------------------------------------------------------


@pytest.mark.parametrize("long_kind", ["async", "sync"])
def test_graceful_stop_finishes_short_jobs_and_hands_back_those_past_the_grace(
    dsn: str, long_kind: str
) -> None:
    app = pgq.App()
    started: set[str] = set()
    release_sync = threading.Event()
    grace_seconds = 1.5

    @app.task()
    async def short() -> None:
        started.add("short")
        await asyncio.sleep(0.6)

    if long_kind == "async":

        @app.task()
        async def long() -> None:
            started.add("long")
            await asyncio.sleep(60)

    else:

        @app.task()
        def long() -> None:
            started.add("long")
            release_sync.wait(30)

    async def scenario() -> None:
        worker = make_worker(app, dsn, shutdown_grace_seconds=grace_seconds)
        async with await connect(dsn) as db:
            short_id = await enqueue(db, "short")
            long_id = await enqueue(db, "long")
            try:
                task = asyncio.create_task(worker.run())
                await eventually(
                    lambda: started == {"short", "long"}, "both started", worker_task=task
                )
                stop_requested = time.monotonic()
                worker.request_stop()
                await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)
                stopped_after = time.monotonic() - stop_requested
                if long_kind == "sync":
                    assert worker.stuck_threads == 1, "the handed-back thread still runs"
            finally:
                release_sync.set()
            short_job = await fetch_job(db, short_id)
            long_job = await fetch_job(db, long_id)
        assert grace_seconds - 0.2 <= stopped_after < grace_seconds + 5
        assert short_job["status"] == "succeeded" and short_job["attempts"] == 1
        assert long_job["status"] == "queued"
        assert long_job["attempts"] == 0, "the handed-back attempt is refunded"
        assert abs((long_job["run_at"] - long_job["db_now"]).total_seconds()) < 5
        assert long_job["locked_by"] is None and long_job["errors"] == []
        assert worker.stats.counts["handed_back"] == 1

    asyncio.run(scenario())
