"""The SQL side of the API: ``pgq.enqueue(...)`` from plain SQL, and the status enum."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgq import JobStatus
from pgq.config import wakeup_channel

Conn = psycopg.Connection[tuple[Any, ...]]
CHANNEL = wakeup_channel("pgq")


@pytest.fixture
def listener(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        yield connection


def wakeups(listener: Conn, *, expected: int = 0) -> list[str]:
    timeout = 5.0 if expected else 0.3
    return [n.payload for n in listener.notifies(timeout=timeout, stop_after=expected or None)]


def fetch_job(conn: Conn, job_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute("SELECT * FROM pgq.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None, f"job {job_id} not found"
    return row


def test_enqueue_from_plain_sql_creates_a_job_and_wakes_workers_at_commit(
    conn: Conn, listener: Conn
) -> None:
    row = conn.execute("""SELECT * FROM pgq.enqueue('task', '{"a":1}'::jsonb)""").fetchone()
    assert row is not None
    job_id, created = row
    assert created is True
    assert wakeups(listener) == []

    conn.commit()

    assert wakeups(listener, expected=1) == ["default"]
    job = fetch_job(conn, job_id)
    assert (job["task"], job["args"], job["queue"], job["status"]) == (
        "task", {"a": 1}, "default", "queued",
    )  # fmt: skip
    # max_attempts left out: the task's, read by the first claim.
    assert (job["priority"], job["attempts"], job["max_attempts"]) == (0, 0, None)


def test_enqueue_from_sql_rolled_back_leaves_nothing_and_wakes_nobody(
    conn: Conn, listener: Conn
) -> None:
    conn.execute("SELECT pgq.enqueue('task')")
    conn.rollback()

    assert conn.execute("SELECT count(*) FROM pgq.jobs").fetchone() == (0,)
    assert wakeups(listener) == []


def test_enqueue_from_psql(dsn: str, listener: Conn) -> None:
    result = subprocess.run(
        ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c",
         """SELECT id, created FROM pgq.enqueue('report.build', '{"month": "2030-01"}')"""],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    job_id, created = result.stdout.strip().split("|")
    assert created == "t"
    assert wakeups(listener, expected=1) == ["default"]
    with psycopg.connect(dsn) as conn:
        job = fetch_job(conn, int(job_id))
    assert (job["task"], job["args"]) == ("report.build", {"month": "2030-01"})


def test_enqueue_from_sql_takes_named_arguments(conn: Conn, listener: Conn) -> None:
    row = conn.execute(
        """
        SELECT id, created FROM pgq.enqueue(
            'send_email', '{"to": "a@example.com"}',
            queue => 'emails', priority => 5, max_attempts => 2,
            run_at => now() + interval '1 hour', dedupe_key => 'email:1')
        """
    ).fetchone()
    assert row is not None
    conn.commit()

    job = fetch_job(conn, row[0])
    assert (job["queue"], job["priority"], job["max_attempts"], job["dedupe_key"]) == (
        "emails", 5, 2, "email:1",
    )  # fmt: skip
    assert job["run_at"] - job["created_at"] == timedelta(hours=1)
    assert wakeups(listener, expected=1) == ["emails"]


def test_enqueue_from_sql_with_a_held_dedupe_key_returns_the_existing_job(conn: Conn) -> None:
    statement = "SELECT id, created FROM pgq.enqueue('sync', dedupe_key => 'sync:1')"
    first = conn.execute(statement).fetchone()
    second = conn.execute(statement).fetchone()
    assert first is not None and second is not None

    assert first[1] is True
    assert second == (first[0], False)
    conn.execute("UPDATE pgq.jobs SET status = 'dead', finished_at = now()")
    third = conn.execute(statement).fetchone()
    assert third is not None and third[1] is True and third[0] != first[0]


def test_enqueue_from_sql_defaults_nulls_like_omitted_arguments(conn: Conn) -> None:
    row = conn.execute(
        "SELECT id FROM pgq.enqueue('t', queue => NULL, priority => NULL, run_at => NULL,"
        " max_attempts => NULL)"
    ).fetchone()
    assert row is not None

    job = fetch_job(conn, row[0])
    # No worker registered 't': the defaults, and max_attempts for the first claim to read.
    assert (job["queue"], job["priority"], job["max_attempts"]) == ("default", 0, None)
    assert job["run_at"] == job["created_at"]


@pytest.mark.parametrize(
    ("args_sql", "named"),
    [("'[1, 2]'::jsonb", "array"), ("'\"text\"'::jsonb", "string"), ("NULL", "NULL"),
     ("'null'::jsonb", "null"), ("'3'::jsonb", "number")],
)  # fmt: skip
def test_enqueue_from_sql_refuses_args_that_are_not_an_object(
    rollback_conn: Conn, args_sql: str, named: str
) -> None:
    conn = rollback_conn
    statement = sql.SQL("SELECT pgq.enqueue('t', {})").format(sql.SQL(args_sql))

    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        conn.execute(statement)

    message = str(raised.value)
    assert "job args must be a JSON object" in message
    assert f"got {named}" in message


@pytest.mark.parametrize(
    ("call", "constraint"),
    [
        ("pgq.enqueue('t', queue => 'bad queue')", "jobs_queue_name_valid"),
        ("pgq.enqueue('t', queue => '')", "jobs_queue_name_valid"),
        ("pgq.enqueue('t', queue => '''; DROP TABLE x; --')", "jobs_queue_name_valid"),
        ("pgq.enqueue('bad task')", "jobs_task_name_valid"),
        ("pgq.enqueue('t', priority => -1)", "jobs_priority_not_negative"),
        ("pgq.enqueue('t', max_attempts => 0)", "jobs_max_attempts_positive"),
        ("pgq.enqueue('t', dedupe_key => '')", "jobs_dedupe_key_length"),
    ],
)
def test_enqueue_from_sql_names_the_check_constraint_it_violates(
    rollback_conn: Conn, call: str, constraint: str
) -> None:
    conn = rollback_conn
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute(sql.SQL("SELECT {}").format(sql.SQL(call)))

    assert constraint in str(raised.value)
    assert raised.value.diag.constraint_name == constraint


def test_database_job_statuses_equal_the_python_enum_in_order(conn: Conn) -> None:
    rows = conn.execute("SELECT unnest(enum_range(NULL::pgq.job_status))::text").fetchall()

    assert [row[0] for row in rows] == [status.value for status in JobStatus]


# -- what a worker can run, and what every tool can show (revision 0004) ----------------------

DEEP = "[" * 100 + "]" * 100  # with the args object, 101 levels: one too many
DEEP_ENOUGH = "[" * 99 + "]" * 99  # exactly 100 levels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ('{"n": 1e5000}', "hold a number of 4,301 digits or more"),
        ('{"n": -1e4300}', "hold a number of 4,301 digits or more"),
        ('{"a": ' + DEEP + "}", "nest more than 100 levels deep"),
        ('{"a": ' + "[" * 3000 + "]" * 3000 + "}", "nest more than 100 levels deep"),
    ],
    ids=["5001 digits", "4301 digits", "101 levels", "3000 levels"],
)
def test_enqueue_from_sql_refuses_args_a_worker_could_not_decode(
    conn: Conn, args: str, message: str
) -> None:
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=message):
        conn.execute("SELECT * FROM pgq.enqueue('t', %s::jsonb)", [args])


def test_enqueue_from_sql_takes_args_at_the_limits_and_a_worker_decodes_them(conn: Conn) -> None:
    args = '{"n": 9.99e4299, "deep": ' + DEEP_ENOUGH + "}"
    row = conn.execute("SELECT id FROM pgq.enqueue('t', %s::jsonb)", [args]).fetchone()
    assert row is not None

    text = conn.execute("SELECT args::text FROM pgq.jobs WHERE id = %s", [row[0]]).fetchone()
    assert text is not None
    decoded = json.loads(text[0])  # as the worker's claim does
    assert len(str(decoded["n"])) == 4300


@pytest.mark.parametrize("run_at", ["infinity", "-infinity", "20000-01-01", "9999-01-01 00:00Z"])
def test_enqueue_from_sql_refuses_a_run_at_outside_the_range(conn: Conn, run_at: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="run_at must be from 1970"):
        conn.execute("SELECT * FROM pgq.enqueue('t', run_at => %s::timestamptz)", [run_at])


def test_no_run_at_outside_the_range_can_be_written_at_all(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_run_at_in_range"):
        conn.execute("INSERT INTO pgq.jobs (task, run_at) VALUES ('t', 'infinity')")
    conn.rollback()
    row = conn.execute("SELECT id FROM pgq.enqueue('t', run_at => '1970-01-01 00:00Z')").fetchone()
    assert row is not None
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_run_at_in_range"):
        conn.execute("UPDATE pgq.jobs SET run_at = '-infinity' WHERE id = %s", [row[0]])
