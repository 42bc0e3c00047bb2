"""The SQL side of the API: ``pgq.enqueue(...)`` from plain SQL, and the status enum."""

from __future__ import annotations

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
    assert (job["priority"], job["attempts"], job["max_attempts"]) == (0, 0, 5)


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
    assert (job["queue"], job["priority"], job["max_attempts"]) == ("default", 0, 5)
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
