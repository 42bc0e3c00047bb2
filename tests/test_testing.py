"""pgq.testing: assertions on what a test enqueued, drain through the worker's own SQL, and the
pytest plugin's fixtures, run as a user's suite would run them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgq
import pgq.testing
from pgq.testing import assert_enqueued, drain, enqueued_jobs, refute_enqueued

Conn = psycopg.Connection[Any]

app = pgq.App()
ran: list[str] = []


@app.task(queue="emails")
def send_welcome(to: str, plan: str = "free") -> None:
    ran.append(f"welcome {to}")


@app.task()
def flaky(attempts_needed: int, ctx: pgq.JobContext) -> None:
    if ctx.attempt < attempts_needed:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    ran.append("flaky")


@app.task()
async def notify(channel: str) -> dict[str, str]:
    await asyncio.sleep(0)
    ran.append(f"notify {channel}")
    return {"sent": channel}


@pytest.fixture(autouse=True)
def nothing_ran_yet() -> None:
    ran.clear()


def test_assert_enqueued_matches_task_queue_and_part_of_the_args(pgq_conn: Conn) -> None:
    send_welcome.enqueue(pgq_conn, {"to": "ada@example.com", "plan": "pro"})
    send_welcome.enqueue(pgq_conn, {"to": "alan@example.com"})

    found = assert_enqueued(pgq_conn, "send_welcome", args={"to": "ada@example.com"})
    assert [job.args for job in found] == [{"to": "ada@example.com", "plan": "pro"}]
    assert_enqueued(pgq_conn, send_welcome, queue="emails", count=2)
    refute_enqueued(pgq_conn, send_welcome, args={"to": "eve@example.com"})
    refute_enqueued(pgq_conn, send_welcome, queue="default")


def test_a_failed_assertion_says_what_was_queued_instead(pgq_conn: Conn) -> None:
    send_welcome.enqueue(pgq_conn, {"to": "ada@example.com"})

    with pytest.raises(AssertionError) as failed:
        assert_enqueued(pgq_conn, send_welcome, args={"to": "ada@example.org"})
    message = str(failed.value)
    assert (
        "expected a job of 'send_welcome' with args containing {'to': 'ada@example.org'}" in message
    )
    assert "queued for this task: #" in message and "'ada@example.com'" in message

    with pytest.raises(AssertionError, match=r"expected 2 job\(s\) of 'send_welcome'.* found 1"):
        assert_enqueued(pgq_conn, send_welcome, count=2)
    with pytest.raises(AssertionError, match="expected no job of 'send_welcome' queued, found 1"):
        refute_enqueued(pgq_conn, send_welcome)


def test_drain_runs_due_jobs_through_claim_and_finish_in_the_tests_transaction(
    pgq_conn: Conn,
) -> None:
    send_welcome.enqueue(pgq_conn, {"to": "ada@example.com"})
    pgq.enqueue(pgq_conn, "notify", {"channel": "ops"})
    later = send_welcome.enqueue(pgq_conn, {"to": "bob@example.com"}, delay=3600)

    counts = drain(pgq_conn, app)

    assert counts == {"succeeded": 2}
    assert sorted(ran) == ["notify ops", "welcome ada@example.com"]
    notified = enqueued_jobs(pgq_conn)  # only the later one is still queued
    results = pgq_conn.execute("SELECT task, result FROM pgq.jobs WHERE status = 'succeeded'")
    assert sorted(results.fetchall()) == [("notify", {"sent": "ops"}), ("send_welcome", None)]
    assert len(notified) == 1
    assert [job.id for job in enqueued_jobs(pgq_conn)] == [later.id], "not due yet: still queued"
    statuses = pgq_conn.execute("SELECT status::text, count(*) FROM pgq.jobs GROUP BY 1 ORDER BY 1")
    assert statuses.fetchall() == [("queued", 1), ("succeeded", 2)]


def test_drain_records_failures_as_a_worker_does(pgq_conn: Conn) -> None:
    first = flaky.enqueue(pgq_conn, {"attempts_needed": 2})
    dead = flaky.enqueue(pgq_conn, {"attempts_needed": 9}, max_attempts=1)
    unbound = pgq.enqueue(pgq_conn, "send_welcome", {"address": "x"})  # by name: not checked

    counts = drain(pgq_conn, app)

    assert counts == {"retried": 2, "dead": 1}
    found = pgq_conn.execute("SELECT id, status::text, attempts, last_error FROM pgq.jobs")
    rows = {job_id: (status, attempts, error) for job_id, status, attempts, error in found}
    assert rows[first.id][:2] == ("queued", 1) and "attempt 1 fails" in rows[first.id][2]
    assert rows[dead.id][:2] == ("dead", 1)
    assert rows[unbound.id][0] == "queued"  # retried: another version may take these args
    assert rows[unbound.id][2].startswith("InvalidJobError: args do not match send_welcome")


def test_drain_runs_async_handlers_from_an_async_test_too(pgq_conn: Conn) -> None:
    async def an_async_test() -> dict[str, int]:
        pgq.enqueue(pgq_conn, "notify", {"channel": "a"})
        return dict(drain(pgq_conn, app))

    assert asyncio.run(an_async_test()) == {"succeeded": 1}
    assert ran == ["notify a"]


def test_pgq_conn_puts_the_session_schema_in_pgq_schema(pgq_conn: Conn) -> None:
    assert os.environ["PGQ_SCHEMA"] == "pgq"


USER_SUITE = """
import os

import pgq
import pgq.testing

app = pgq.App()


@app.task()
def charge(order_id: int) -> None:
    print("charged", order_id)


def test_checkout_enqueues_and_the_job_runs(pgq_conn):
    pgq_conn.execute("CREATE TABLE orders (id int)")
    pgq_conn.execute("INSERT INTO orders VALUES (42)")
    charge.enqueue(pgq_conn, {"order_id": 42})
    pgq.testing.assert_enqueued(pgq_conn, "charge", args={"order_id": 42})
    assert pgq.testing.drain(pgq_conn, app) == {"succeeded": 1}


def test_nothing_leaked_from_the_test_before(pgq_conn):
    assert pgq.testing.enqueued_jobs(pgq_conn) == []
    assert pgq_conn.execute("SELECT to_regclass('orders')").fetchone() == (None,)
    jobs = f"SELECT count(*) FROM {os.environ['PGQ_SCHEMA']}.jobs"
    assert pgq_conn.execute(jobs).fetchone() == (0,)
"""


def test_the_plugin_gives_a_users_suite_a_migrated_schema_and_rolls_each_test_back(
    empty_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(USER_SUITE))
    env = {**os.environ, "PGQ_TEST_DSN": empty_dsn}
    env.pop("PGQ_SCHEMA", None)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    with psycopg.connect(empty_dsn) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgq%'")
        assert left.fetchall() == [], "the session's schema is dropped at the end"


def test_without_a_database_the_plugin_says_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "test_app.py").write_text("def test_x(pgq_conn):\n    pass\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PGQ_TEST_DSN", "PGQ_DSN", "DATABASE_URL")
    }

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode != 0
    assert "set $PGQ_TEST_DSN (or $PGQ_DSN) to a test database" in done.stdout


@pytest.mark.parametrize("max_jobs", [0, -1, 1.5, True, "5", None])
def test_drain_refuses_a_max_jobs_that_is_not_a_count(pgq_conn: Conn, max_jobs: Any) -> None:
    with pytest.raises(pgq.ConfigError, match="max_jobs must be a whole number >= 1"):
        drain(pgq_conn, app, max_jobs=max_jobs)


def test_drain_records_a_handler_raising_a_base_exception_as_a_worker_does(
    pgq_conn: Conn,
) -> None:
    class Escaped(BaseException):
        pass

    weird = pgq.App()

    @weird.task()
    def escape_hatch() -> None:
        raise Escaped("not an Exception")

    escape_hatch.enqueue(pgq_conn, {}, max_attempts=1)

    assert drain(pgq_conn, weird) == {"dead": 1}
