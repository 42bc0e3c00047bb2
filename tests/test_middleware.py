"""Middleware around every run, per app and per task, and the job's context on log lines.

Run through a real worker in-process (sync handlers on its threads, async ones on
its loop) and through ``pgq.testing.drain``, which must apply the same middleware.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import pgq
from pgq.logs import JobContextFilter, JsonFormatter, TextFormatter
from pgq.testing import drain
from worker_helpers import connect, make_worker, running

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


async def run_jobs(dsn: str, app: pgq.App, *jobs: tuple[str, dict[str, Any]]) -> list[Any]:
    """Enqueue ``jobs``, run a worker until each finished, and return them as get_job reads them.

    One at a time, so that what middleware writes down comes in the jobs' order.
    """
    db = await connect(dsn)
    try:
        ids = [(await pgq.enqueue_async(db, task, args)).id for task, args in jobs]
        async with running(make_worker(app, dsn, concurrency=1)):
            return [await pgq.wait_async(db, job_id, timeout=20) for job_id in ids]
    finally:
        await db.close()


def recording_app(events: list[str]) -> pgq.App:
    """An app whose middleware writes down every step, with a sync and an async task."""
    app = pgq.App()

    @app.middleware
    def outer(ctx: pgq.JobContext) -> Iterator[None]:
        events.append(f"outer before {ctx.task} attempt {ctx.attempt}")
        token = TENANT.set(f"tenant-of-{ctx.job_id}")
        try:
            result = yield
            events.append(f"outer after {result!r}")
        except Exception as error:
            events.append(f"outer failed {error}")
            raise
        finally:
            TENANT.reset(token)

    def inner(ctx: pgq.JobContext) -> Iterator[None]:
        events.append("inner before")
        result = yield
        events.append(f"inner after {result!r}")

    @app.task(middleware=[inner], max_attempts=1)
    def add(a: int, b: int, ctx: pgq.JobContext) -> int:
        events.append(f"handler sees {TENANT.get() == f'tenant-of-{ctx.job_id}'}")
        if a < 0:
            raise ValueError("negative")
        return a + b

    @app.task(middleware=[inner], max_attempts=1)
    async def add_async(a: int, b: int) -> int:
        await asyncio.sleep(0)
        events.append(f"handler sees {TENANT.get().startswith('tenant-of-')}")
        if a < 0:
            raise ValueError("negative")
        return a + b

    return app


@pytest.mark.parametrize("task", ["add", "add_async"])
def test_middleware_wraps_each_run_app_outside_task_and_sees_result_and_failure(
    dsn: str, task: str
) -> None:
    events: list[str] = []
    app = recording_app(events)

    ok, failed = asyncio.run(
        run_jobs(dsn, app, (task, {"a": 2, "b": 3}), (task, {"a": -1, "b": 0}))
    )

    assert ok.status is pgq.JobStatus.SUCCEEDED and ok.result == 5
    assert failed.status is pgq.JobStatus.DEAD
    assert failed.last_error == "ValueError: negative"
    assert events == [
        f"outer before {task} attempt 1", "inner before", "handler sees True",
        "inner after 5", "outer after 5",
        f"outer before {task} attempt 1", "inner before", "handler sees True",
        "outer failed negative",  # inner has no except: the error passes through it
    ]  # fmt: skip


def test_drain_runs_the_same_middleware(pgq_conn: psycopg.Connection[Any]) -> None:
    events: list[str] = []
    app = recording_app(events)
    pgq.enqueue(pgq_conn, "add", {"a": 1, "b": 1})
    pgq.enqueue(pgq_conn, "add_async", {"a": 2, "b": 2})

    assert drain(pgq_conn, app) == {"succeeded": 2}
    assert events == [
        "outer before add attempt 1", "inner before", "handler sees True",
        "inner after 2", "outer after 2",
        "outer before add_async attempt 1", "inner before", "handler sees True",
        "inner after 4", "outer after 4",
    ]  # fmt: skip


def broken_app(ran: list[str]) -> pgq.App:
    app = pgq.App()

    def fails_before(ctx: pgq.JobContext) -> Iterator[None]:
        raise KeyError("tenant")
        yield

    def fails_after(ctx: pgq.JobContext) -> Iterator[None]:
        yield
        raise RuntimeError("could not flush")

    def never_yields(ctx: pgq.JobContext) -> Iterator[None]:
        if ctx.attempt > 0:
            return
        yield

    def swallows(ctx: pgq.JobContext) -> Iterator[None]:
        try:
            yield
        except Exception:
            ran.append("swallowed")

    def snoozes(ctx: pgq.JobContext) -> Iterator[None]:
        if ctx.attempt == 1:
            raise pgq.GiveUp("rate limit says no")
        yield

    for middleware in (fails_before, fails_after, never_yields, swallows, snoozes):

        def handler(name: str = middleware.__name__) -> None:
            ran.append(name)
            if name == "swallows":
                raise ValueError("the handler's own error")

        app.task(name=middleware.__name__, middleware=[middleware], max_attempts=1)(handler)
    return app


def test_a_broken_middleware_fails_its_job_with_an_error_naming_it_and_the_worker_goes_on(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    app = broken_app(ran)
    names = ["fails_before", "fails_after", "never_yields", "swallows", "snoozes"]

    with caplog.at_level(logging.WARNING, logger="pgq.middleware"):
        jobs = asyncio.run(run_jobs(dsn, app, *((name, {}) for name in names)))

    errors = {job.task: (job.status, job.last_error) for job in jobs}
    dead = pgq.JobStatus.DEAD
    assert errors == {
        "fails_before": (dead, "MiddlewareError: middleware broken_app.<locals>.fails_before "
                         "raised before the handler: KeyError: 'tenant'"),
        "fails_after": (dead, "MiddlewareError: middleware broken_app.<locals>.fails_after "
                        "raised after the handler: RuntimeError: could not flush"),
        "never_yields": (dead, "MiddlewareError: middleware broken_app.<locals>.never_yields "
                         "returned without yielding, so the handler did not run: a middleware "
                         "yields once, where the handler runs"),
        "swallows": (dead, "ValueError: the handler's own error"),
        "snoozes": (dead, "GiveUp: rate limit says no"),
    }  # fmt: skip
    # The handler ran only where its middleware let it.
    assert sorted(ran) == ["fails_after", "swallowed", "swallows"]
    assert any("swallows swallowed ValueError" in r.getMessage() for r in caplog.records)


def test_middleware_that_is_not_a_generator_function_is_refused_at_registration() -> None:
    app = pgq.App()

    def plain(ctx: pgq.JobContext) -> None:
        return None

    with pytest.raises(pgq.ConfigError, match=r"plain.* is not a generator function"):
        app.middleware(plain)  # type: ignore[arg-type]
    with pytest.raises(pgq.ConfigError, match="task 'job': middleware must be a list"):
        app.task(name="job", middleware=plain)(lambda: None)  # type: ignore[call-overload]
    assert app.tasks == {}


def test_an_async_handlers_timeout_reaches_its_middleware_as_handler_timeout(dsn: str) -> None:
    seen: list[str] = []
    app = pgq.App()

    def watch(ctx: pgq.JobContext) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            seen.append(type(error).__name__)
            raise

    @app.task(timeout=0.2, max_attempts=1, middleware=[watch])
    async def slow() -> None:
        await asyncio.sleep(30)

    (job,) = asyncio.run(run_jobs(dsn, app, ("slow", {})))
    assert job.status is pgq.JobStatus.DEAD
    assert seen == ["HandlerTimeout"]


# -- the job on every log line ---------------------------------------------------------------


def log_app() -> pgq.App:
    app = pgq.App()
    handler_log = logging.getLogger("myproject.billing")

    @app.task()
    def charge(order: int) -> None:
        handler_log.warning("charging order %s", order)

    @app.task()
    async def refund(order: int) -> None:
        await asyncio.sleep(0)
        handler_log.warning("refunding order %s", order)

    return app


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Two handlers on the root logger, JSON and text, each with the job context filter."""
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = []
    for out, formatter in ((json_out, JsonFormatter()), (text_out, TextFormatter("%(message)s"))):
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(JobContextFilter())
        handler.setLevel(logging.WARNING)
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
    try:
        yield json_out, text_out
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)


def test_every_line_a_handler_logs_carries_its_job_id_task_and_attempt(
    dsn: str, captured: tuple[io.StringIO, io.StringIO]
) -> None:
    json_out, text_out = captured
    charged, refunded = asyncio.run(
        run_jobs(dsn, log_app(), ("charge", {"order": 7}), ("refund", {"order": 8}))
    )
    lines = [json.loads(line) for line in json_out.getvalue().splitlines()]
    mine = [line for line in lines if line["logger"] == "myproject.billing"]
    assert sorted((line["message"], line["job_id"], line["task"], line["attempt"])
                  for line in mine) == [
        ("charging order 7", charged.id, "charge", 1),
        ("refunding order 8", refunded.id, "refund", 1),
    ]  # fmt: skip
    assert sorted(line for line in text_out.getvalue().splitlines() if "order" in line) == [
        f"charging order 7 [job {charged.id} charge attempt 1]",
        f"refunding order 8 [job {refunded.id} refund attempt 1]",
    ]
    # Outside a job, nothing is added.
    logging.getLogger("myproject.billing").warning("after the jobs")
    last = json.loads(json_out.getvalue().splitlines()[-1])
    assert last["message"] == "after the jobs" and "job_id" not in last
    assert text_out.getvalue().splitlines()[-1] == "after the jobs"


def test_drain_leaves_no_job_on_the_tests_own_log_lines(
    pgq_conn: psycopg.Connection[Any], captured: tuple[io.StringIO, io.StringIO]
) -> None:
    json_out, _ = captured
    pgq.enqueue(pgq_conn, "charge", {"order": 1})
    pgq.enqueue(pgq_conn, "refund", {"order": 2})

    assert drain(pgq_conn, log_app()) == {"succeeded": 2}
    logging.getLogger("myproject.billing").warning("the test goes on")

    lines = [json.loads(line) for line in json_out.getvalue().splitlines()]
    assert [(line["message"], line.get("task")) for line in lines] == [
        ("charging order 1", "charge"),
        ("refunding order 2", "refund"),
        ("the test goes on", None),
    ]
