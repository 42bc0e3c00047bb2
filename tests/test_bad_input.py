"""Bad input at every public entry point: a clear error that names the problem, and nothing
already stored changes.

The entry points: the Python API (enqueue and its async and bulk twins, ``Task.enqueue``,
``Worker``, ``Snooze``, ``pgq.admin``), the SQL functions, and the ``pgq`` commands. Every
case that reaches a database runs against one seeded with jobs in every state, and
``SELECT * FROM pgq.jobs`` must read the same before and after. A CLI case must exit
non-zero with a one-line error, never a traceback.

Elsewhere already, and not repeated here: test_enqueue.py's ``BAD_INPUTS`` through
``enqueue`` and ``enqueue_many`` (this module runs them through the four other enqueue
entry points); test_tasks.py's bad ``@app.task`` options, app schemas and ``load_app``
specs (this module runs the specs through `pgq work` only); test_retry.py's policies
``Retry`` refuses; test_sql_function.py's non-object args and check constraints;
test_cli_admin.py's bad filters and bad DSNs for the operators' commands; test_admin.py's
``batch_size=0`` loop; test_metrics.py's metrics port in use; test_worker.py's
"jobs of unknown tasks stay queued, untouched".

Cases marked ``xfail(strict=True)`` are bugs in src/ that this file found: each reason says
what happens instead. When one is fixed its test passes, strict xfail fails the run, and
the mark must go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors as pg_errors
import pytest
from typer.testing import CliRunner

import pgq
import pgq.migrate
import pgq.worker
from conftest import Databases
from pgq import (
    ConfigError,
    InvalidJobError,
    JobNotFoundError,
    JobStateError,
    SchemaError,
    admin,
)
from pgq.cli import app as cli_app
from pgq.job import MAX_ARGS_BYTES
from pgq.worker.producer import Producer
from pgq.worker.supervisor import Supervisor
from test_enqueue import BAD_INPUTS

Conn = psycopg.Connection[tuple[Any, ...]]

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD = pgq.migrate.head_revision()
NEEDED = pgq.migrate.required_revision()  # the oldest revision this pgq runs on
OLDER = "0001"
NEWER = "0099"  # a revision a later pgq might ship: this one does not know it
MIB = 1024 * 1024
SQL_INJECTION = "x'; DROP TABLE pgq.jobs; --"
CYRILLIC_E = "\u0435"  # looks like "e"
NO_PGQ_SETTINGS: dict[str, str | None] = {"PGQ_DSN": None, "DATABASE_URL": None, "PGQ_SCHEMA": None}

# The apps `pgq work` loads in these tests: this module is importable by its name.
APP = pgq.App()
EMPTY_APP = pgq.App()


@APP.task(name="send_email")
def send_email(to: str = "") -> None:
    """A handler no test runs: the tests only need a registered task."""


# -- what "nothing changed" means ---------------------------------------------------------------


def snapshot(dsn: str) -> list[tuple[Any, ...]]:
    """Every stored job, in id order; in a database without pgq, its list of schemas."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pgq.jobs') IS NULL").fetchone() == (True,):
            return conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()
        return conn.execute("SELECT * FROM pgq.jobs ORDER BY id").fetchall()


@contextlib.contextmanager
def unchanged(dsn: str) -> Iterator[None]:
    """Assert that the block leaves the stored jobs exactly as they were."""
    before = snapshot(dsn)
    yield
    assert snapshot(dsn) == before, "bad input changed the jobs already stored"


# -- databases: one seeded with jobs in every state, one without pgq, one behind, one ahead ---


@dataclass(frozen=True)
class Seeded:
    dsn: str
    ids: dict[str, int]


@dataclass(frozen=True)
class Seed:
    """Stands for the id of the seeded job in ``status`` in a case table."""

    status: str


def resolve(value: Any, seeded: Seeded) -> Any:
    return seeded.ids[value.status] if isinstance(value, Seed) else value


@pytest.fixture(scope="module")
def seeded(module_dsn: str) -> Seeded:
    """The module's database with one job in every state (a running one on a long lease)."""
    ids: dict[str, int] = {}
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        for state in ("queued", "running", "succeeded", "dead", "cancelled"):
            ids[state] = pgq.enqueue(conn, f"seed_{state}", {"state": state}).id
        ids["scheduled"] = pgq.enqueue(conn, "seed_scheduled", delay=3600).id
        conn.execute(
            "UPDATE pgq.jobs SET status = 'running', attempts = 1, started_at = now(),"
            " locked_until = now() + interval '1 day', locked_by = 'seed-worker',"
            " lease_token = gen_random_uuid() WHERE id = %s",
            [ids["running"]],
        )
        for state in ("succeeded", "dead", "cancelled"):
            conn.execute(
                "UPDATE pgq.jobs SET status = %s::pgq.job_status, attempts = 1,"
                " finished_at = now(), last_error = %s WHERE id = %s",
                [state, "RuntimeError: seeded" if state == "dead" else None, ids[state]],
            )
    return Seeded(module_dsn, ids)


@pytest.fixture(scope="module")
def empty_db(databases: Databases) -> Iterator[str]:
    """A database where pgq was never migrated."""
    name = databases.create(template="template0")
    yield databases.dsn(name)
    databases.drop_later(name)


@pytest.fixture(scope="module")
def older_db(databases: Databases) -> Iterator[str]:
    """A database migrated only to revision 0001, with one job stored."""
    name = databases.create(template="template0")
    dsn = databases.dsn(name)
    pgq.migrate.migrate(dsn, revision=OLDER)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgq.enqueue('stored_before', '{\"n\": 1}')")
    yield dsn
    databases.drop_later(name)


@pytest.fixture(scope="module")
def newer_db(databases: Databases) -> Iterator[str]:
    """A database a later pgq migrated: its revision is one this pgq does not ship."""
    name = databases.create(template=databases.template)
    dsn = databases.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgq.alembic_version SET version_num = %s", [NEWER])
        conn.execute("SELECT pgq.enqueue('stored_before')")
    yield dsn
    databases.drop_later(name)


def bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"BUG: {reason}")


def params(rows: Sequence[tuple[Any, ...]], *, bugs: dict[str, str] | None = None) -> list[Any]:
    """pytest params from table rows whose first item is the id; ``bugs`` marks some xfail."""
    bugs = bugs or {}
    return [
        pytest.param(*row[1:], id=row[0], marks=[bug(bugs[row[0]])] if row[0] in bugs else [])
        for row in rows
    ]


# -- the Python enqueue entry points ------------------------------------------------------------


DEEP: Any = []
for _ in range(5_000):
    DEEP = [DEEP]

# (id, overrides of task/args/queue/... or schema, the exception, what its message says)
MORE_BAD_JOBS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("task_with_nul", {"task": "send\x00email"}, InvalidJobError, "invalid task name"),
    ("task_with_trailing_newline", {"task": "send_email\n"}, InvalidJobError, "invalid task name"),
    ("task_quoted", {"task": '"quoted"'}, InvalidJobError, "invalid task name"),
    ("task_with_a_space", {"task": "a b"}, InvalidJobError, "invalid task name"),
    ("task_sql_fragment", {"task": SQL_INJECTION}, InvalidJobError, "invalid task name"),
    ("task_lookalike", {"task": f"s{CYRILLIC_E}nd_email"}, InvalidJobError, "invalid task name"),
    ("task_fullwidth", {"task": "\uff53\uff45\uff4e\uff44"}, InvalidJobError, "invalid task name"),
    ("queue_with_nul", {"queue": "emails\x00"}, InvalidJobError, "invalid queue name"),
    ("queue_quoted", {"queue": '"quoted"'}, InvalidJobError, "invalid queue name"),
    ("queue_sql_fragment", {"queue": SQL_INJECTION}, InvalidJobError, "invalid queue name"),
    ("queue_lookalike", {"queue": f"d{CYRILLIC_E}fault"}, InvalidJobError, "invalid queue name"),
    ("priority_googol", {"priority": 10**100}, InvalidJobError, "priority must be between 0 and"),
    ("priority_below_int4", {"priority": -(2**31) - 1}, InvalidJobError, "priority must be"),
    ("max_attempts_2_pow_40", {"max_attempts": 2**40}, InvalidJobError,
     "max_attempts must be between 1 and 1000000"),
    ("max_attempts_minus_one", {"max_attempts": -1}, InvalidJobError, "max_attempts must be"),
    ("delay_googol", {"delay": 10**100}, InvalidJobError, "delay must be between 0 and"),
    ("delay_minus_infinity", {"delay": -math.inf}, InvalidJobError, "delay must be between"),
    ("delay_huge_timedelta", {"delay": timedelta(days=999_999_999)}, InvalidJobError,
     "delay must be between"),
    ("run_at_naive_now", {"run_at": datetime.now()}, InvalidJobError, "timezone-aware"),
    ("args_10_mib", {"args": {"blob": "x" * (10 * MIB)}}, InvalidJobError,
     f"over the {MAX_ARGS_BYTES:,}-byte limit"),
    ("args_16_mib_in_many_keys", {"args": {f"k{n}": "y" * 1024 for n in range(16 * 1024)}},
     InvalidJobError, f"over the {MAX_ARGS_BYTES:,}-byte limit"),
    ("args_nul_deep_inside", {"args": {"a": [{"b": "c\x00"}]}}, InvalidJobError, "NUL"),
    ("args_lone_surrogate_key", {"args": {"\udc80": 1}}, InvalidJobError, "JSON"),
    ("args_bytes", {"args": {"b": b"x"}}, InvalidJobError, "JSON-serialisable"),
    ("args_nested_too_deep", {"args": {"deep": DEEP}}, InvalidJobError, "levels deep"),
    ("schema_upper_case", {"schema": "Pgq"}, ConfigError, "invalid schema name"),
    ("schema_sql_fragment", {"schema": 'pgq"; DROP TABLE pgq.jobs; --'}, ConfigError,
     "invalid schema name"),
    ("schema_with_nul", {"schema": "pgq\x00"}, ConfigError, "invalid schema name"),
    ("schema_with_trailing_newline", {"schema": "pgq\n"}, ConfigError, "invalid schema name"),
]  # fmt: skip

ENTRY_POINTS = (
    "enqueue", "enqueue_many", "enqueue_async", "enqueue_many_async",
    "Task.enqueue", "Task.enqueue_async",
)  # fmt: skip
# test_enqueue.py runs BAD_INPUTS through these two already.
COVERED_IN_TEST_ENQUEUE = ("enqueue", "enqueue_many")


def enqueue_params() -> list[Any]:
    rows: list[Any] = []
    tables: list[list[tuple[str, dict[str, Any], type[Exception], str]]] = [
        [(name, over, InvalidJobError, msg) for name, over, msg in BAD_INPUTS],
        MORE_BAD_JOBS,
    ]
    for table_index, table in enumerate(tables):
        for entry in ENTRY_POINTS:
            if table_index == 0 and entry in COVERED_IN_TEST_ENQUEUE:
                continue
            for name, overrides, error, message in table:
                if entry.startswith("Task.") and "task" in overrides:
                    continue  # a Task's name was checked when App.task registered it
                rows.append(pytest.param(entry, overrides, error, message, id=f"{entry}-{name}"))
    return rows


def enqueue_through(entry: str, dsn: str, overrides: dict[str, Any]) -> None:
    """Enqueue one job through ``entry`` on a connection of its own, then roll back."""
    fields: dict[str, Any] = {"task": "send_email", "args": {"to": "a@example.com"}, **overrides}
    schema = fields.pop("schema", None)
    task = send_email if entry.startswith("Task.") else fields.pop("task")
    fields.pop("task", None)
    args = fields.pop("args")
    if entry.endswith("_async"):
        asyncio.run(_enqueue_async(entry, dsn, task, args, fields, schema))
        return
    conn = psycopg.connect(dsn)
    try:
        if entry == "enqueue":
            pgq.enqueue(conn, task, args, schema=schema, **fields)
        elif entry == "enqueue_many":
            jobs = [pgq.JobSpec("ok"), pgq.JobSpec(task, args, **fields), pgq.JobSpec("ok")]
            pgq.enqueue_many(conn, jobs, schema=schema)
        else:
            send_email.enqueue(conn, args, schema=schema, **fields)
    finally:
        conn.rollback()
        conn.close()


async def _enqueue_async(
    entry: str,
    dsn: str,
    task: Any,
    args: Any,
    fields: dict[str, Any],
    schema: str | None,
) -> None:
    aconn = await psycopg.AsyncConnection.connect(dsn)
    try:
        if entry == "enqueue_async":
            await pgq.enqueue_async(aconn, task, args, schema=schema, **fields)
        elif entry == "enqueue_many_async":
            jobs = [pgq.JobSpec("ok"), pgq.JobSpec(task, args, **fields)]
            await pgq.enqueue_many_async(aconn, jobs, schema=schema)
        else:
            await send_email.enqueue_async(aconn, args, schema=schema, **fields)
    finally:
        await aconn.rollback()
        await aconn.close()


@pytest.mark.parametrize(("entry", "overrides", "error", "message"), enqueue_params())
def test_every_enqueue_entry_point_refuses_bad_jobs_and_stores_nothing(
    seeded: Seeded, entry: str, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with unchanged(seeded.dsn), pytest.raises(error, match=message):
        enqueue_through(entry, seeded.dsn, overrides)


def test_hostile_text_in_free_text_fields_is_stored_as_data(conn: Conn) -> None:
    """Dedupe keys and args are the caller's text: stored verbatim, never run as SQL."""
    hostile = [SQL_INJECTION, '"quoted"', "a b", f"s{CYRILLIC_E}nd", "line\n", "100%s %(x)s {}"]
    for n, text in enumerate(hostile):
        pgq.enqueue(conn, "send_email", {text: text, "n": n}, dedupe_key=text)
    conn.commit()

    rows = conn.execute("SELECT args, dedupe_key FROM pgq.jobs ORDER BY id").fetchall()
    assert rows == [({text: text, "n": n}, text) for n, text in enumerate(hostile)]


def test_a_job_of_an_unknown_task_is_accepted_and_stays_queued(conn: Conn) -> None:
    # Producers may deploy before workers: an unknown task name is not an error. That a
    # worker never claims it is test_worker.py's
    # test_jobs_of_tasks_the_app_does_not_register_stay_queued_untouched.
    from_python = pgq.enqueue(conn, "no_worker_knows_this_task").id
    row = conn.execute("SELECT id FROM pgq.enqueue('no_worker_knows_this_task_either')").fetchone()
    assert row is not None
    conn.commit()

    stored = conn.execute("SELECT id, status::text, attempts FROM pgq.jobs ORDER BY id").fetchall()
    assert stored == [(from_python, "queued", 0), (row[0], "queued", 0)]


def test_enqueue_into_a_database_without_pgq_says_to_run_migrate(empty_db: str) -> None:
    with unchanged(empty_db), psycopg.connect(empty_db) as conn:
        with pytest.raises(SchemaError, match="pgq migrate"):
            pgq.enqueue(conn, "send_email")


# -- Snooze ---------------------------------------------------------------------------------------

SNOOZE_CASES: list[tuple[str, float, str]] = [
    ("negative", -1, "Snooze needs 0 <= seconds"),
    ("nan", math.nan, "Snooze needs"),
    ("inf", math.inf, "Snooze needs"),
    ("googol", 10**100, "ten years"),
]


@pytest.mark.parametrize(("seconds", "message"), params(SNOOZE_CASES))
def test_snooze_refuses_a_delay_postgres_cannot_schedule(seconds: float, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        pgq.Snooze(seconds)


# -- Worker(...) ----------------------------------------------------------------------------------

WORKER_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("concurrency_zero", {"concurrency": 0}, "concurrency must be >= 1"),
    ("concurrency_negative", {"concurrency": -1}, "concurrency must be >= 1"),
    ("concurrency_googol", {"concurrency": 10**20}, "concurrency"),
    ("poll_zero", {"poll_seconds": 0}, "poll interval must be > 0"),
    ("poll_negative", {"poll_seconds": -1}, "poll interval must be > 0"),
    ("poll_nan", {"poll_seconds": math.nan}, "poll interval must be > 0"),
    ("lease_zero", {"lease_seconds": 0}, "lease must be >= 0.5"),
    ("lease_nan", {"lease_seconds": math.nan}, "lease must be >= 0.5"),
    ("lease_inf", {"lease_seconds": math.inf}, "lease"),
    ("lease_1e300", {"lease_seconds": 1e300}, "lease"),
    ("grace_negative", {"shutdown_grace_seconds": -1}, "shutdown grace must be >= 0"),
    ("grace_nan", {"shutdown_grace_seconds": math.nan}, "shutdown grace must be >= 0"),
    ("queue_limit_zero", {"queues": {"emails": 0}}, "queue 'emails': concurrency must be >= 1"),
    ("queue_limit_negative", {"queues": {"emails": -5}}, "concurrency must be >= 1"),
    ("queue_name_with_a_space", {"queues": {"a b": None}}, "invalid queue name"),
    ("queue_name_sql_fragment", {"queues": {SQL_INJECTION: 1}}, "invalid queue name"),
    ("queue_name_with_nul", {"queues": {"q\x00": None}}, "invalid queue name"),
    ("rescue_interval_negative", {"rescue_interval_seconds": -1}, "rescue"),
    ("metrics_port_negative", {"metrics_port": -1}, "metrics"),
    ("metrics_port_over_65535", {"metrics_port": 70_000}, "metrics"),
    ("name_with_nul", {"name": "worker\x00"}, "name"),
    ("schema_upper_case", {"schema": "Pgq"}, "invalid schema name"),
    ("schema_sql_fragment", {"schema": SQL_INJECTION}, "invalid schema name"),
    ("dsn_unparsable", {"dsn": "host=127.0.0.1 password=s3cr3t-PW nonsense"}, "invalid DSN"),
    ("app_without_tasks", {"app": EMPTY_APP}, "the app has no tasks"),
]
WORKER_BUGS: dict[str, str] = {}  # every bug it found is fixed


@pytest.mark.parametrize(("options", "message"), params(WORKER_CASES, bugs=WORKER_BUGS))
def test_worker_refuses_bad_options_before_it_starts(
    seeded: Seeded, options: dict[str, Any], message: str
) -> None:
    settings = {"app": APP, "dsn": seeded.dsn, **options}
    app, dsn = settings.pop("app"), settings.pop("dsn")

    with unchanged(seeded.dsn), pytest.raises(ConfigError, match=message) as raised:
        pgq.Worker(app, dsn, **settings)

    assert "s3cr3t-PW" not in str(raised.value)


@pytest.mark.parametrize(
    ("database", "fragments"),
    [
        ("empty_db", ["pgq's schema 'pgq' is not in this database", "run `pgq migrate`"]),
        ("older_db", [f"at revision {OLDER}", f"this pgq needs {NEEDED}", "run `pgq migrate`"]),
        ("newer_db", [f"at revision {NEWER}", "newer"]),
    ],
)  # fmt: skip
def test_worker_run_on_a_database_without_the_right_schema_fails_naming_the_fix(
    request: pytest.FixtureRequest, database: str, fragments: list[str]
) -> None:
    dsn: str = request.getfixturevalue(database)
    worker = pgq.Worker(APP, dsn, poll_seconds=0.1)

    with unchanged(dsn), pytest.raises(SchemaError) as raised:
        asyncio.run(asyncio.wait_for(worker.run(), 30))

    for fragment in fragments:
        assert fragment in str(raised.value)


# -- pgq.admin ---------------------------------------------------------------------------------

NAIVE = datetime(2030, 1, 1, 12, 0)
ADMIN_CASES: list[tuple[str, Callable[[Conn, dict[str, int]], object], type[Exception], str]] = [
    ("list_jobs_unknown_status", lambda c, ids: admin.list_jobs(c, status="finished"),
     InvalidJobError, "unknown status 'finished'"),
    ("list_jobs_sql_status", lambda c, ids: admin.list_jobs(c, status=SQL_INJECTION),
     InvalidJobError, "unknown status"),
    ("list_jobs_naive_since", lambda c, ids: admin.list_jobs(c, since=NAIVE),
     InvalidJobError, "since must be timezone-aware"),
    ("list_jobs_negative_limit", lambda c, ids: admin.list_jobs(c, limit=-1),
     InvalidJobError, "limit"),
    ("get_job_negative_id", lambda c, ids: admin.get_job(c, -1),
     JobNotFoundError, "no job with id -1"),
    ("get_job_beyond_bigint", lambda c, ids: admin.get_job(c, 10**20),
     JobNotFoundError, "no job with id 100000000000000000000"),
    ("requeue_negative_id", lambda c, ids: admin.requeue(c, -1),
     JobNotFoundError, "no job with id -1"),
    ("requeue_queued", lambda c, ids: admin.requeue(c, ids["queued"]),
     JobStateError, "only dead or cancelled jobs can be requeued"),
    ("requeue_beyond_bigint", lambda c, ids: admin.requeue(c, 10**20),
     JobNotFoundError, "no job with id"),
    ("cancel_dead", lambda c, ids: admin.cancel(c, ids["dead"]),
     JobStateError, "only queued or running jobs can be cancelled"),
    ("cancel_beyond_bigint", lambda c, ids: admin.cancel(c, 10**20),
     JobNotFoundError, "no job with id"),
    ("retry_now_dead", lambda c, ids: admin.retry_now(c, ids["dead"]),
     JobStateError, "only queued jobs can be retried now"),
    ("retry_now_beyond_bigint", lambda c, ids: admin.retry_now(c, 10**20),
     JobNotFoundError, "no job with id"),
    ("find_dead_jobs_naive", lambda c, ids: admin.find_dead_jobs(
        c, admin.DeadJobFilter(died_after=NAIVE)),
     InvalidJobError, "died_after must be timezone-aware"),
    ("requeue_dead_naive", lambda c, ids: admin.requeue_dead(
        c, admin.DeadJobFilter(died_before=NAIVE)),
     InvalidJobError, "died_before must be timezone-aware"),
    ("prune_queued", lambda c, ids: admin.prune(c, "queued", 0),
     InvalidJobError, "only finished jobs can be pruned"),
    ("prune_sql_status", lambda c, ids: admin.prune(c, SQL_INJECTION, 0),
     InvalidJobError, "unknown status"),
    ("prune_negative_infinite_age", lambda c, ids: admin.prune(c, "succeeded", -math.inf),
     InvalidJobError, "the age must be >= 0 seconds"),
    ("prune_infinite_age", lambda c, ids: admin.prune(c, "succeeded", math.inf),
     InvalidJobError, "age"),
    ("prune_age_1e300", lambda c, ids: admin.prune(c, "dead", 1e300),
     InvalidJobError, "age"),
    ("prune_negative_batch", lambda c, ids: admin.prune(c, "dead", 0, batch_size=-1),
     InvalidJobError, "batch"),
]  # fmt: skip
ADMIN_BUGS: dict[str, str] = {}  # every bug it found is fixed


@pytest.mark.parametrize(("call", "error", "message"), params(ADMIN_CASES, bugs=ADMIN_BUGS))
def test_admin_functions_refuse_bad_input_with_pgq_errors_and_change_nothing(
    seeded: Seeded,
    call: Callable[[Conn, dict[str, int]], object],
    error: type[Exception],
    message: str,
) -> None:
    # Autocommit: a bad call that went through would be committed, and seen below.
    with unchanged(seeded.dsn), psycopg.connect(seeded.dsn, autocommit=True) as conn:
        with pytest.raises(error, match=message):
            call(conn, seeded.ids)


# -- the SQL functions ---------------------------------------------------------------------------

# (id, statement, parameters (Seed(...) stands for a seeded job's id), error, message)
SQL_CASES: list[tuple[str, str, list[Any], type[Exception], str]] = [
    ("enqueue_args_not_json", "SELECT pgq.enqueue('t', %s::jsonb)", ["not json"],
     pg_errors.InvalidTextRepresentation, "invalid input syntax for type json"),
    ("enqueue_args_untyped_not_json", "SELECT pgq.enqueue('t', %s)", ["{oops"],
     pg_errors.InvalidTextRepresentation, "invalid input syntax for type json"),
    ("enqueue_args_nan", "SELECT pgq.enqueue('t', %s::jsonb)", ['{"x": NaN}'],
     pg_errors.InvalidTextRepresentation, "invalid input syntax for type json"),
    ("enqueue_args_escaped_nul", "SELECT pgq.enqueue('t', %s::jsonb)", ['{"x": "\\u0000"}'],
     pg_errors.UntranslatableCharacter, "unsupported Unicode escape sequence"),
    ("enqueue_args_10_mib",
     "SELECT pgq.enqueue('t', jsonb_build_object('blob', repeat('x', %s)))", [10 * MIB],
     pg_errors.ProgramLimitExceeded, "over the 1048576-byte limit"),
    ("enqueue_task_null", "SELECT pgq.enqueue(NULL)", [],
     pg_errors.NotNullViolation, 'column "task"'),
    ("enqueue_task_with_nul", "SELECT pgq.enqueue(%s)", ["send\x00email"],
     psycopg.DataError, "NUL"),
    ("enqueue_task_sql_fragment", "SELECT pgq.enqueue(%s)", [SQL_INJECTION],
     pg_errors.CheckViolation, "jobs_task_name_valid"),
    ("enqueue_task_quoted", "SELECT pgq.enqueue(%s)", ['"quoted"'],
     pg_errors.CheckViolation, "jobs_task_name_valid"),
    ("enqueue_task_lookalike", "SELECT pgq.enqueue(%s)", [f"s{CYRILLIC_E}nd"],
     pg_errors.CheckViolation, "jobs_task_name_valid"),
    ("enqueue_task_trailing_newline", "SELECT pgq.enqueue(%s)", ["send\n"],
     pg_errors.CheckViolation, "jobs_task_name_valid"),
    ("enqueue_queue_with_nul", "SELECT pgq.enqueue('t', queue => %s)", ["q\x00"],
     psycopg.DataError, "NUL"),
    ("enqueue_queue_quoted", "SELECT pgq.enqueue('t', queue => %s)", ['"quoted"'],
     pg_errors.CheckViolation, "jobs_queue_name_valid"),
    ("enqueue_queue_lookalike", "SELECT pgq.enqueue('t', queue => %s)", [f"d{CYRILLIC_E}fault"],
     pg_errors.CheckViolation, "jobs_queue_name_valid"),
    ("enqueue_priority_2_pow_31", "SELECT pgq.enqueue('t', priority => '2147483648')", [],
     pg_errors.NumericValueOutOfRange, "out of range for type integer"),
    ("enqueue_priority_googol", "SELECT pgq.enqueue('t', priority => '1e100')", [],
     pg_errors.InvalidTextRepresentation, "invalid input syntax for type integer"),
    ("enqueue_max_attempts_negative", "SELECT pgq.enqueue('t', max_attempts => -1)", [],
     pg_errors.CheckViolation, "jobs_max_attempts_positive"),
    ("enqueue_max_attempts_2_pow_40",
     "SELECT pgq.enqueue('t', max_attempts => '1099511627776')", [],
     pg_errors.NumericValueOutOfRange, "out of range for type integer"),
    ("enqueue_run_at_junk", "SELECT pgq.enqueue('t', run_at => 'next tuesday-ish')", [],
     pg_errors.InvalidDatetimeFormat, "invalid input syntax for type timestamp"),
    ("enqueue_dedupe_key_too_long", "SELECT pgq.enqueue('t', dedupe_key => repeat('k', 501))",
     [], pg_errors.CheckViolation, "jobs_dedupe_key_length"),
    ("requeue_null", "SELECT pgq.requeue(NULL)", [], pg_errors.NoDataFound, "no job with id"),
    ("requeue_negative", "SELECT pgq.requeue(-1)", [], pg_errors.NoDataFound, "no job with id -1"),
    ("requeue_sql_text", "SELECT pgq.requeue('1; DROP TABLE pgq.jobs')", [],
     pg_errors.InvalidTextRepresentation, "invalid input syntax for type bigint"),
    ("requeue_beyond_bigint", "SELECT pgq.requeue('9223372036854775808')", [],
     pg_errors.NumericValueOutOfRange, "out of range for type bigint"),
    ("requeue_queued", "SELECT pgq.requeue(%s)", [Seed("queued")],
     pg_errors.ObjectNotInPrerequisiteState, "only dead or cancelled jobs can be requeued"),
    ("requeue_dead_negative_max_jobs", "SELECT * FROM pgq.requeue_dead(max_jobs => -1)", [],
     pg_errors.InvalidRowCountInLimitClause, "must not be negative"),
    ("requeue_dead_junk_time", "SELECT * FROM pgq.requeue_dead(died_after => 'junk')", [],
     pg_errors.InvalidDatetimeFormat, "invalid input syntax for type timestamp"),
    ("cancel_null", "SELECT pgq.cancel(NULL)", [], pg_errors.NoDataFound, "no job with id"),
    ("cancel_succeeded", "SELECT pgq.cancel(%s)", [Seed("succeeded")],
     pg_errors.ObjectNotInPrerequisiteState, "only queued or running jobs can be cancelled"),
    ("retry_now_null", "SELECT pgq.retry_now(NULL)", [], pg_errors.NoDataFound, "no job with id"),
    ("retry_now_cancelled", "SELECT pgq.retry_now(%s)", [Seed("cancelled")],
     pg_errors.ObjectNotInPrerequisiteState, "only queued jobs can be retried now"),
    ("prune_queued", "SELECT pgq.prune('queued', '0')", [],
     pg_errors.InvalidParameterValue, "only finished jobs can be pruned"),
    ("prune_sql_status", "SELECT pgq.prune(%s, '0')", [SQL_INJECTION],
     pg_errors.InvalidParameterValue, "only finished jobs can be pruned"),
    ("prune_null_age", "SELECT pgq.prune('succeeded', NULL)", [],
     pg_errors.InvalidParameterValue, "older_than must be an interval >= 0"),
    ("prune_negative_age", "SELECT pgq.prune('succeeded', '-1 second')", [],
     pg_errors.InvalidParameterValue, "older_than must be an interval >= 0"),
    ("prune_junk_age", "SELECT pgq.prune('succeeded', 'a while')", [],
     pg_errors.InvalidDatetimeFormat, "invalid input syntax for type interval"),
    ("prune_huge_age", "SELECT pgq.prune('succeeded', '1000000000 years')", [],
     pg_errors.DatetimeFieldOverflow, "out of range"),
    ("prune_negative_batch", "SELECT pgq.prune('succeeded', '0', -1)", [],
     pg_errors.InvalidParameterValue, "batch_size must be >= 1, got -1"),
    ("prune_null_status", "SELECT pgq.prune(NULL, '0')", [],
     pg_errors.InvalidParameterValue, "only finished jobs can be pruned"),
    ("prune_null_batch", "SELECT pgq.prune('succeeded', '0', NULL)", [],
     pg_errors.InvalidParameterValue, "batch_size must be >= 1"),
]  # fmt: skip
SQL_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("statement", "parameters", "error", "message"), params(SQL_CASES, bugs=SQL_BUGS)
)
def test_sql_functions_refuse_bad_input_with_an_error_naming_it(
    seeded: Seeded, statement: str, parameters: list[Any], error: type[Exception], message: str
) -> None:
    values = [resolve(value, seeded) for value in parameters]
    with unchanged(seeded.dsn), psycopg.connect(seeded.dsn, autocommit=True) as conn:
        with pytest.raises(error, match=re.escape(message)):
            conn.execute(statement, values)


def test_hostile_filters_of_the_sql_functions_are_data(seeded: Seeded) -> None:
    with unchanged(seeded.dsn), psycopg.connect(seeded.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT * FROM pgq.requeue_dead(task => %s, queue => %s, error_pattern => %s)",
            [SQL_INJECTION, SQL_INJECTION, f"%{SQL_INJECTION}%"],
        ).fetchall()
    assert rows == []


# -- the pgq command -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CliOutcome:
    exit_code: int
    text: str  # stdout and stderr on one line, without rich's box drawing
    crash: str | None  # the traceback, when the command died of an exception


_BOX = re.compile("[\u2500-\u257f]")


def pgq_cli(*args: str) -> CliOutcome:
    """``pgq ARGS`` in-process, with no pgq settings in the environment."""
    result = CliRunner().invoke(cli_app, list(args), env=NO_PGQ_SETTINGS)
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = "".join(traceback.format_exception(result.exception))
    return CliOutcome(result.exit_code, " ".join(_BOX.sub(" ", result.output).split()), crash)


def assert_refused(outcome: CliOutcome, fragments: Sequence[str]) -> None:
    assert outcome.crash is None, f"a traceback instead of a clear error:\n{outcome.crash}"
    assert outcome.exit_code != 0, f"exit code 0 for bad input: {outcome.text}"
    for fragment in fragments:
        assert fragment in outcome.text


@pytest.fixture
def harmless_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`pgq work` in-process, made safe: a worker that starts claims nothing and stops at
    once, and a supervisor refuses to spawn. Bad input must be refused before either.

    `pgq work` also configures the root logger: put it back afterwards.
    """

    async def claim_nothing(self: Producer, *_: object) -> None:
        return None

    def spawn_nothing(self: Supervisor) -> int:
        raise AssertionError(f"pgq work was about to start {self.processes} processes")

    monkeypatch.setattr(Producer, "run", claim_nothing)
    monkeypatch.setattr(Supervisor, "run", spawn_nothing)
    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {name: logging.getLogger(name).level for name in ("", "alembic", "pgq")}
    yield
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


W = ("work", "test_bad_input:APP")  # `pgq work` with a good app: the rest is what is bad


@dataclass(frozen=True)
class Cli:
    """One bad command line; ``--dsn`` naming ``db`` is added after the command's name."""

    args: tuple[str | Seed, ...]
    fragments: tuple[str, ...]
    db: str = "seeded"  # seeded, empty_db, older_db, newer_db, or none (no --dsn at all)


SCHEMA_FIX = ("pgq's schema 'pgq' is not in this database", "run `pgq migrate`")
REVISIONS = (f"at revision {OLDER}", f"this pgq needs {NEEDED}", "run `pgq migrate`")
CLI_CASES: dict[str, Cli] = {
    # pgq work: the APP
    "work_app_empty": Cli(("work", ""), ("APP must look like 'package.module:app'",)),
    "work_app_without_colon": Cli(("work", "test_bad_input"), ("APP must look like",)),
    "work_app_without_module": Cli(("work", ":APP"), ("APP must look like",)),
    "work_app_missing_module": Cli(("work", "no_such_module_pgq:app"),
                                   ("cannot import 'no_such_module_pgq'",)),
    "work_app_sql_fragment": Cli(("work", f"{SQL_INJECTION}:app"), ("cannot import",)),
    "work_app_quoted": Cli(("work", '"quoted":app'), ("cannot import",)),
    "work_app_with_a_space": Cli(("work", "a b:app"), ("cannot import 'a b'",)),
    "work_app_not_an_app": Cli(("work", "os:path"), ("'os:path' is not a pgq.App",)),
    "work_app_missing_attribute": Cli(("work", "test_bad_input:NOPE"),
                                      ("module 'test_bad_input' has no attribute 'NOPE'",)),
    "work_app_trailing_newline": Cli(("work", "test_bad_input:APP\n"),
                                     ("has no attribute 'APP\\n'; try 'test_bad_input:APP'",)),
    "work_app_without_tasks": Cli(("work", "test_bad_input:EMPTY_APP"),
                                  ("has no tasks registered",)),
    "work_app_relative_import": Cli(("work", "..tasks:app"), ("cannot import",)),
    # pgq work: options
    "work_queues_limit_zero": Cli((*W, "--queues", "emails=0"),
                                  ("queue 'emails': concurrency must be >= 1",)),
    "work_queues_limit_negative": Cli((*W, "-q", "emails=-1"), ("concurrency must be >= 1",)),
    "work_queues_limit_not_a_number": Cli((*W, "-q", "emails=many"),
                                          ("the concurrency after '=' must be an integer",)),
    "work_queues_with_a_space": Cli((*W, "--queues", "a b"), ("invalid queue name",)),
    "work_queues_sql_fragment": Cli((*W, "--queues", SQL_INJECTION), ("invalid queue name",)),
    "work_queues_empty": Cli((*W, "--queues", ""), ("--queues",)),
    "work_queues_nameless_limit": Cli((*W, "--queues", "=5"), ("invalid queue name",)),
    "work_concurrency_zero": Cli((*W, "--concurrency", "0"), ("concurrency must be >= 1",)),
    "work_concurrency_negative": Cli((*W, "-c", "-1"), ("concurrency must be >= 1",)),
    "work_concurrency_not_an_int": Cli((*W, "-c", "1e3"), ("Invalid value for '--concurrency'",)),
    "work_concurrency_googol": Cli((*W, "-c", str(10**20)), ("concurrency",)),
    "work_processes_zero": Cli((*W, "--processes", "0"), ("--processes must be >= 1, got 0",)),
    "work_processes_negative": Cli((*W, "-p", "-3"), ("--processes must be >= 1",)),
    "work_processes_a_million": Cli((*W, "-p", "1000000"), ("--processes",)),
    "work_processes_with_concurrency_zero": Cli((*W, "-p", "2", "-c", "0"),
                                                ("concurrency must be >= 1",)),
    "work_processes_without_schema": Cli((*W, "-p", "2"), SCHEMA_FIX, db="empty_db"),
    "work_lease_zero": Cli((*W, "--lease-seconds", "0"), ("lease must be >= 0.5 seconds",)),
    "work_lease_negative": Cli((*W, "--lease-seconds", "-1"), ("lease must be >= 0.5",)),
    "work_lease_nan": Cli((*W, "--lease-seconds", "nan"), ("lease must be >= 0.5",)),
    "work_lease_inf": Cli((*W, "--lease-seconds", "inf"), ("lease",)),
    "work_lease_1e300": Cli((*W, "--lease-seconds", "1e300"), ("lease",)),
    "work_poll_zero": Cli((*W, "--poll-seconds", "0"), ("poll interval must be > 0",)),
    "work_poll_negative": Cli((*W, "--poll-seconds", "-1"), ("poll interval must be > 0",)),
    "work_poll_nan": Cli((*W, "--poll-seconds", "nan"), ("poll interval must be > 0",)),
    "work_grace_negative": Cli((*W, "--shutdown-grace-seconds", "-1"),
                               ("shutdown grace must be >= 0",)),
    "work_keep_succeeded_junk": Cli((*W, "--keep-succeeded", "a while"),
                                    ("--keep-succeeded: invalid duration 'a while'",)),
    "work_keep_cancelled_negative": Cli((*W, "--keep-cancelled", "-1d"),
                                        ("--keep-cancelled: invalid duration",)),
    "work_keep_dead_in_years": Cli((*W, "--keep-dead", "1y"), ("--keep-dead: invalid duration",)),
    "work_keep_succeeded_400_digits": Cli((*W, "--keep-succeeded", "9" * 400),
                                          ("--keep-succeeded",)),
    "work_log_format_xml": Cli((*W, "--log-format", "xml"),
                               ("--log-format must be text or json, got 'xml'",)),
    "work_log_level_bogus": Cli((*W, "--log-level", "chatty"), ("--log-level",)),
    "work_queue_weight_missing": Cli((*W, "--queue-weights", "low"),
                                     ("--queue-weights 'low': write QUEUE=W",)),
    "work_queue_weights_and_strict": Cli((*W, "--queue-weights", "a=2", "--strict-queue-order"),
                                         ("exclude each other",)),
    "work_strict_order_without_queues": Cli((*W, "--strict-queue-order"),
                                            ("strict queue order needs the queues",)),
    "work_queue_weight_twice": Cli((*W, "--queue-weights", "a=1,a=2"), ("names 'a' twice",)),
    "work_queue_named_twice": Cli((*W, "-q", "a=1", "-q", "a=5"), ("names 'a' twice",)),
    "work_queue_weight_unserved": Cli((*W, "-q", "b", "--queue-weights", "a=2"),
                                      ("queue 'a' has a weight but is not served",)),
    "work_schema_upper_case": Cli((*W, "--schema", "Pgq"), ("invalid schema name 'Pgq'",)),
    "work_dsn_unparsable": Cli((*W, "--dsn", "host=127.0.0.1 password=s3cr3t-PW nonsense"),
                               ("invalid DSN",), db="none"),
    "work_no_dsn": Cli(W, ("no database configured", "PGQ_DSN"), db="none"),
    "work_without_schema": Cli(W, SCHEMA_FIX, db="empty_db"),
    "work_older_schema": Cli(W, REVISIONS, db="older_db"),
    "work_newer_schema": Cli(W, (f"at revision {NEWER}", "newer"), db="newer_db"),
    # pgq stats, jobs, job, cancel, requeue, prune (test_cli_admin.py has the common cases)
    "stats_without_schema": Cli(("stats",), SCHEMA_FIX, db="empty_db"),
    "stats_older_schema": Cli(("stats",), REVISIONS, db="older_db"),
    "stats_newer_schema": Cli(("stats",), (f"at revision {NEWER}", "newer"), db="newer_db"),
    "stats_schema_sql_fragment": Cli(("stats", "--schema", SQL_INJECTION),
                                     ("invalid schema name",)),
    "jobs_status_sql_fragment": Cli(("jobs", "--status", SQL_INJECTION), ("unknown status",)),
    "jobs_limit_zero": Cli(("jobs", "--limit", "0"), ("Invalid value for '--limit'",)),
    "jobs_since_before_year_one": Cli(("jobs", "--since", "999999999w"), ("--since",)),
    "jobs_older_schema": Cli(("jobs",), REVISIONS, db="older_db"),
    "job_not_a_number": Cli(("job", "seven"), ("Invalid value for 'ID'",)),
    "job_negative_id": Cli(("job", "--", "-5"), ("Invalid value for 'ID'",)),
    "cancel_not_a_number": Cli(("cancel", "1;2"), ("Invalid value",)),
    "requeue_died_before_junk": Cli(("requeue", "--died-before", "last week"),
                                    ("give a duration ago",)),
    "requeue_died_after_before_year_one": Cli(("requeue", "--died-after", "99999999999d"),
                                              ("--died-after",)),
    "prune_status_sql_fragment": Cli(("prune", "--older-than", "1d", "--status", SQL_INJECTION),
                                     ("unknown status",)),
    "prune_batch_size_zero": Cli(("prune", "--older-than", "1d", "--batch-size", "0"),
                                 ("Invalid value for '--batch-size'",)),
    "prune_without_age": Cli(("prune",), ("Missing option '--older-than'",)),
    "prune_age_beyond_postgres": Cli(("prune", "--older-than", "999999999999w"),
                                     ("--older-than",)),
    # pgq migrate, roles, bench, demo
    "migrate_downgrade_to_unknown": Cli(("migrate", "--downgrade", "bogus"),
                                        ("bogus",)),
    "migrate_dsn_unparsable": Cli(("migrate", "--dsn", "host=127.0.0.1 nonsense"),
                                  ("invalid DSN",), db="none"),
    "migrate_newer_schema": Cli(("migrate",), (NEWER,), db="newer_db"),
    "roles_schema_upper_case": Cli(("roles", "--schema", "Pgq"), ("invalid schema name",)),
    "roles_without_schema": Cli(("roles",), SCHEMA_FIX, db="empty_db"),
    "roles_older_schema": Cli(("roles",), REVISIONS, db="older_db"),
    "bench_no_jobs": Cli(("bench", "--single-jobs", "0"), ("Invalid value for '--single-jobs'",),
                         db="none"),
    "bench_rate_zero": Cli(("bench", "--rate", "0"), ("Invalid value for '--rate'",), db="none"),
    "demo_dsn_unparsable": Cli(("demo", "--dsn", "host=127.0.0.1 nonsense"), ("invalid DSN",),
                               db="none"),
}  # fmt: skip
CLI_BUGS: dict[str, str] = {}  # every bug it found is fixed


def cli_params() -> list[Any]:
    params = []
    for name, case in CLI_CASES.items():
        marks = [bug(CLI_BUGS[name])] if name in CLI_BUGS else []
        params.append(pytest.param(case, id=name, marks=marks))
    return params


@pytest.mark.usefixtures("harmless_work")
@pytest.mark.parametrize("case", cli_params())
def test_pgq_commands_refuse_bad_input_with_one_clear_line_and_change_nothing(
    request: pytest.FixtureRequest, seeded: Seeded, case: Cli
) -> None:
    dsn: str = seeded.dsn if case.db in ("seeded", "none") else request.getfixturevalue(case.db)
    args = [str(resolve(arg, seeded)) for arg in case.args]
    if case.db != "none":
        args[1:1] = ["--dsn", dsn]

    with unchanged(dsn):
        outcome = pgq_cli(*args)

    assert_refused(outcome, case.fragments)
    assert "s3cr3t-PW" not in outcome.text


@pytest.mark.usefixtures("harmless_work")
def test_pgq_work_with_good_options_starts_and_stops_cleanly(seeded: Seeded) -> None:
    """The control for the cases above: this harness runs a valid `pgq work` to exit 0."""
    outcome = pgq_cli(*W, "--dsn", seeded.dsn, "--queues", "emails=2,default", "-c", "3",
                      "--keep-dead", "30d", "--log-format", "json")  # fmt: skip

    assert outcome.crash is None, outcome.crash
    assert outcome.exit_code == 0, outcome.text
    assert '"message": "worker ' in outcome.text


def start_work(dsn: str, *options: str) -> subprocess.Popen[str]:
    """A real `pgq work` process with ``options``, in a session of its own (to kill it whole)."""
    env = {k: v for k, v in os.environ.items() if k not in NO_PGQ_SETTINGS}
    env["COLUMNS"] = "200"
    argv = [sys.executable, "-m", "pgq", "work", "tests.apps.ledger:app", "--dsn", dsn, *options]
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--metrics-port", "-1"], id="negative_port"),
        pytest.param(["--metrics-port", "70000"], id="port_over_65535"),
        pytest.param(["--metrics-port", "0", "--metrics-host", "no-such-host.invalid"],
                     id="unknown_host"),
    ],
)  # fmt: skip
def test_pgq_work_refuses_a_metrics_address_it_cannot_listen_on(
    seeded: Seeded, options: list[str]
) -> None:
    # A real process: a worker that fails half-way through its start can hang at exit.
    process = start_work(seeded.dsn, "--poll-seconds", "0.2", *options)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"`pgq work` still running 20 s after a bad metrics address: {output}")

    assert process.returncode == 1, output
    assert "Traceback" not in output, output
    assert f"error: --metrics-port {options[1]}" in " ".join(output.split())
