"""Tasks (pgq.tasks): ``@app.task`` registration and what it refuses, a Task's defaults and
its enqueue, ``JobContext``'s signals, and ``load_app`` (what `pgq work APP` imports).

test_bad_input.py runs the same ``load_app`` mistakes through the `pgq work` command, where
each must be one line of error; here they are checked at their source.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import pgq
import pgq.testing
from pgq.errors import ConfigError, GiveUp, InvalidJobError, SchemaError, Snooze
from pgq.retry import DEFAULT_RETRY
from pgq.tasks import load_app

Conn = psycopg.Connection[tuple[Any, ...]]

SQL_INJECTION = "x'; DROP TABLE pgq.jobs; --"
CYRILLIC_E = "\u0435"  # looks like "e"

# The apps load_app imports in these tests: this module is importable by its name.
APP = pgq.App()
EMPTY_APP = pgq.App()


@APP.task(queue="emails", max_attempts=3)
def send_email(to: str = "") -> str:
    return f"sent to {to}"


# -- registration -------------------------------------------------------------------------------


def test_a_bare_decorator_registers_the_function_under_its_name_with_the_defaults() -> None:
    app = pgq.App()

    @app.task
    def resize(width: int) -> int:
        return width // 2

    assert app.tasks == {"resize": resize}
    assert isinstance(resize, pgq.Task)
    assert (resize.name, resize.queue, resize.max_attempts) == ("resize", "default", 5)
    assert resize.timeout_seconds is None
    assert resize.retry is DEFAULT_RETRY
    assert (resize.is_async, resize.wants_context, resize.schema) == (False, False, None)
    assert resize(width=640) == 320, "calling the task calls the handler"


def test_a_decorator_with_options_keeps_every_option() -> None:
    app = pgq.App(schema="tenant_a")
    policy = pgq.Retry(base_seconds=2, cap_seconds=60)

    @app.task(name="mail.send", queue="emails", max_attempts=7, timeout=12.5, retry=policy)
    async def deliver(ctx: pgq.JobContext, to: str) -> None:
        pass

    assert app.tasks == {"mail.send": deliver}
    assert (deliver.name, deliver.queue, deliver.max_attempts) == ("mail.send", "emails", 7)
    assert deliver.timeout_seconds == 12.5
    assert deliver.retry is policy
    assert (deliver.is_async, deliver.wants_context, deliver.schema) == (True, True, "tenant_a")


def _register(**options: Any) -> None:
    app = pgq.App()

    def handler() -> None:
        """Never run."""

    app.task(**options)(handler)


APP_TASK_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("name_quoted", {"name": '"quoted"'}, "invalid task name"),
    ("name_sql_fragment", {"name": SQL_INJECTION}, "invalid task name"),
    ("name_with_a_space", {"name": "a b"}, "invalid task name"),
    ("name_lookalike", {"name": f"s{CYRILLIC_E}nd"}, "invalid task name"),
    ("name_with_trailing_newline", {"name": "send\n"}, "invalid task name"),
    ("name_with_nul", {"name": "send\x00"}, "invalid task name"),
    ("name_too_long", {"name": "t" * 201}, "invalid task name"),
    ("name_empty", {"name": ""}, "invalid task name"),
    ("queue_sql_fragment", {"queue": SQL_INJECTION}, "invalid queue name"),
    ("queue_with_nul", {"queue": "q\x00"}, "invalid queue name"),
    ("queue_with_trailing_newline", {"queue": "q\n"}, "invalid queue name"),
    ("max_attempts_zero", {"max_attempts": 0}, "max_attempts must be an int >= 1"),
    ("max_attempts_negative", {"max_attempts": -1}, "max_attempts must be an int >= 1"),
    ("max_attempts_bool", {"max_attempts": True}, "max_attempts must be an int >= 1"),
    ("max_attempts_float", {"max_attempts": 2.5}, "max_attempts must be an int >= 1"),
    ("max_attempts_2_pow_40", {"max_attempts": 2**40}, "max_attempts"),
    ("timeout_zero", {"timeout": 0}, "timeout must be > 0 seconds"),
    ("timeout_negative", {"timeout": -1}, "timeout must be > 0 seconds"),
    ("timeout_nan", {"timeout": math.nan}, "timeout must be > 0 seconds"),
    ("timeout_bool", {"timeout": True}, "timeout must be > 0 seconds"),
    ("timeout_past_ten_years", {"timeout": 1e10}, "timeout must be > 0 seconds"),
    ("retry_not_a_retry", {"retry": "fast"}, "retry must be a pgq.Retry, got str"),
]


@pytest.mark.parametrize(
    ("options", "message"),
    [pytest.param(options, message, id=name) for name, options, message in APP_TASK_CASES],
)
def test_app_task_refuses_bad_options_when_registering(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _register(**options)


def test_a_lambda_needs_a_name() -> None:
    app = pgq.App()

    with pytest.raises(ConfigError, match="invalid task name '<lambda>'"):
        app.task(lambda: None)
    assert app.tasks == {}


def test_app_task_refuses_a_second_handler_with_the_same_name() -> None:
    app = pgq.App()
    first = app.task(name="dup")(send_email.handler)

    def other() -> None:
        pass

    with pytest.raises(ConfigError, match="two handlers are registered as task 'dup'"):
        app.task(name="dup")(other)
    assert app.tasks == {"dup": first}, "the first registration stands"


@pytest.mark.parametrize("schema", ["Pgq", 'pgq"; DROP TABLE pgq.jobs; --', "pgq\x00"])
def test_app_refuses_a_bad_schema_name(schema: str) -> None:
    with pytest.raises(ConfigError, match="invalid schema name"):
        pgq.App(schema=schema)


# -- Task.enqueue -------------------------------------------------------------------------------


def stored(conn: Conn, job_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT task, queue, max_attempts, args FROM pgq.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert row is not None
    return row


def test_task_enqueue_uses_the_tasks_name_and_queue_and_leaves_max_attempts_to_the_claim(
    rollback_conn: Conn,
) -> None:
    job = send_email.enqueue(rollback_conn, {"to": "a@example.com"})

    # No worker registered the task yet: its own queue; max_attempts is read from the
    # registry by the first claim (test_task_registry.py runs that end to end).
    assert stored(rollback_conn, job.id) == ("send_email", "emails", None, {"to": "a@example.com"})


def test_options_given_to_task_enqueue_override_the_tasks_defaults(rollback_conn: Conn) -> None:
    job = send_email.enqueue(rollback_conn, queue="urgent", max_attempts=9)

    assert stored(rollback_conn, job.id) == ("send_email", "urgent", 9, {})


def test_task_enqueue_async_uses_the_same_defaults(dsn: str) -> None:
    async def scenario() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            job = await send_email.enqueue_async(aconn, {"to": "b@example.com"})
            return job.id  # committed when the connection's block ends

    job_id = asyncio.run(scenario())

    with psycopg.connect(dsn) as conn:
        assert stored(conn, job_id) == ("send_email", "emails", None, {"to": "b@example.com"})


def test_task_enqueue_goes_to_the_apps_schema_unless_told_otherwise(rollback_conn: Conn) -> None:
    app = pgq.App(schema="tenant_a")  # not migrated in this database

    @app.task()
    def ping() -> None:
        pass

    job = ping.enqueue(rollback_conn, schema="pgq")
    assert stored(rollback_conn, job.id)[:2] == ("ping", "default")
    with pytest.raises(SchemaError, match="schema 'tenant_a' is missing"):
        ping.enqueue(rollback_conn)


# -- Task.enqueue checks the args against the handler's signature -------------------------------

SIGNATURES = pgq.App()


@SIGNATURES.task()
def resize_image(url: str, width: int = 640) -> None:
    pass


@SIGNATURES.task(name="images.thumbnail")
def thumbnail(url: str, ctx: pgq.JobContext) -> None:
    pass


@SIGNATURES.task()
def ping() -> None:
    pass


@SIGNATURES.task()
def log_event(kind: str, **fields: Any) -> None:
    pass


@SIGNATURES.task()
def by_position(url: str, /) -> None:
    pass


def jobs_of(conn: Conn, task: str) -> list[Any]:
    return [job.args for job in pgq.testing.enqueued_jobs(conn, task)]


MISMATCHES = {
    "a misspelt arg": (
        resize_image, {"ur": "x"},
        "resize_image() got an unexpected arg 'ur'; it takes: url, width",
    ),
    "two unknown args": (
        resize_image, {"url": "x", "w": 1, "h": 2},
        "resize_image() got unexpected args 'w', 'h'; it takes: url, width",
    ),
    "an arg for a task that takes none": (
        ping, {"x": 1}, "ping() got an unexpected arg 'x'; it takes no args",
    ),
    "a required arg left out": (
        resize_image, {"width": 100}, "resize_image() is missing the required arg 'url'",
    ),
    "no args at all": (resize_image, None, "resize_image() is missing the required arg 'url'"),
    "ctx, which pgq fills": (
        thumbnail, {"url": "x", "ctx": {"attempt": 9}},
        "images.thumbnail() gets 'ctx' from pgq (the JobContext): leave it out of the args",
    ),
    "ctx listed among the args a task takes": (
        thumbnail, {"link": "x"}, "images.thumbnail() got an unexpected arg 'link'; it takes: url",
    ),
    "a **kwargs handler without its required arg": (
        log_event, {"user": 7}, "log_event() is missing the required arg 'kind'",
    ),
    "a handler pgq can never call": (
        by_position, {"url": "x"},
        "by_position() takes 'url' by position only, but pgq passes args by name: "
        "remove the '/' from its signature",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("task", "args", "message"),
    [pytest.param(*case, id=name) for name, case in MISMATCHES.items()],
)
def test_task_enqueue_refuses_args_that_do_not_fit_the_handler_and_writes_nothing(
    rollback_conn: Conn, task: pgq.Task, args: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(InvalidJobError) as refused:
        task.enqueue(rollback_conn, args)

    assert str(refused.value) == message
    # Refused before any statement: not even a transaction was begun.
    assert rollback_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert jobs_of(rollback_conn, task.name) == []


def test_task_enqueue_async_refuses_them_too(dsn: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(
                InvalidJobError, match=r"^resize_image\(\) got an unexpected arg 'ur'"
            ):
                await resize_image.enqueue_async(aconn, {"ur": "x"})
            assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    asyncio.run(scenario())

    with psycopg.connect(dsn) as conn:
        assert jobs_of(conn, "resize_image") == []


def test_args_that_fit_are_enqueued_whatever_their_types(rollback_conn: Conn) -> None:
    resize_image.enqueue(rollback_conn, {"url": "https://example.com/cat.png"})
    resize_image.enqueue(rollback_conn, {"url": 7, "width": "wide"})  # names only, not types
    thumbnail.enqueue(rollback_conn, {"url": "x"})

    assert jobs_of(rollback_conn, "resize_image") == [
        {"url": "https://example.com/cat.png"},
        {"url": 7, "width": "wide"},
    ]
    assert jobs_of(rollback_conn, "images.thumbnail") == [{"url": "x"}]


def test_a_kwargs_handler_takes_any_other_arg_including_ctx(rollback_conn: Conn) -> None:
    # Without a ctx parameter, "ctx" is an arg like any other: it lands in **fields.
    log_event.enqueue(rollback_conn, {"kind": "login", "user": 7, "ctx": "web"})

    assert jobs_of(rollback_conn, "log_event") == [{"kind": "login", "user": 7, "ctx": "web"}]


# -- JobContext ---------------------------------------------------------------------------------


def test_job_context_snooze_and_give_up_raise_the_signals_the_worker_acts_on() -> None:
    ctx = pgq.JobContext(
        job_id=1, task="t", queue="default", attempt=1, max_attempts=5, worker="w",
        enqueued_at=datetime.now(UTC),
    )  # fmt: skip

    with pytest.raises(Snooze) as snoozed:
        ctx.snooze(30)
    with pytest.raises(GiveUp) as given_up:
        ctx.give_up("malformed payload")

    assert snoozed.value.seconds == 30.0
    assert given_up.value.reason == "malformed payload"


# -- load_app -----------------------------------------------------------------------------------


def test_load_app_returns_the_app_a_module_attribute_names() -> None:
    assert load_app("test_tasks:APP") is APP


LOAD_APP_ERRORS: list[tuple[str, str, str]] = [
    ("empty", "", "APP must look like 'package.module:app', got ''"),
    ("without_colon", "test_tasks", "APP must look like"),
    ("without_module", ":APP", "APP must look like"),
    ("without_attribute", "test_tasks:", "APP must look like"),
    ("missing_module", "no_such_module_pgq:app", "no module named 'no_such_module_pgq' in "),
    ("missing_package", "no_such_package_pgq.tasks:app", "no module named 'no_such_package_pgq' "),
    ("relative_import", "..tasks:app", "cannot import '..tasks'"),
    ("not_an_app", "os:path", r"'os:path' is not a pgq.App \(found module\); module 'os' has no"),
    ("missing_attribute", "test_tasks:NOPE", "no attribute 'NOPE'; try 'test_tasks:APP' or "),
    ("a_task_not_an_app", "test_tasks:send_email", r"\(found Task\); try 'test_tasks:APP' or "),
    ("without_tasks", "test_tasks:EMPTY_APP", "'test_tasks:EMPTY_APP' has no tasks registered"),
]


@pytest.mark.parametrize(
    ("spec", "message"),
    [pytest.param(spec, message, id=name) for name, spec, message in LOAD_APP_ERRORS],
)
def test_load_app_refuses_what_is_not_an_app_with_tasks(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_app(spec)
