"""pgq.connection: what counts as an outage, the back-off every retry loop uses, the
connection a thread owns, and the thread that survives any error of its duty.

Outages are real: a port nothing listens on, a backend the server terminated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg.conninfo import make_conninfo

from pgcluster import free_port
from pgq.connection import Backoff, DatabaseThread, ThreadConnection, is_outage
from worker_helpers import wait_until

Conn = psycopg.Connection[tuple[Any, ...]]


def closed_port_dsn(dsn: str) -> str:
    """``dsn`` pointed at a local port nothing listens on: connecting is refused at once."""
    return make_conninfo(dsn, host="127.0.0.1", port=free_port(), connect_timeout=2)


def backend_alive(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return bool(row and row[0])


def terminate(dsn: str, pid: int) -> None:
    """End backend ``pid`` as an operator's pg_terminate_backend (or a restart) would."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    wait_until(lambda: not backend_alive(dsn, pid), 5, f"backend {pid} gone")


# -- Backoff ----------------------------------------------------------------------------------


def test_backoff_starts_at_half_a_second_and_doubles_up_to_ten_seconds() -> None:
    backoff = Backoff()

    waits = [backoff.failed() for _ in range(8)]

    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_at_once_retries_immediately_then_doubles_from_the_first_wait() -> None:
    backoff = Backoff()

    waits = [backoff.failed(at_once=True) for _ in range(7)]

    assert waits == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    backoff.succeeded()
    assert backoff.failed(at_once=True) == 0.0, "each new run of failures retries at once"


def test_backoff_with_its_own_first_wait_and_cap() -> None:
    backoff = Backoff(first_seconds=0.2, cap_seconds=1.0)

    assert [backoff.failed() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_backoff_stays_at_the_cap_after_a_very_long_outage() -> None:
    backoff = Backoff()

    waits = [backoff.failed() for _ in range(2_000)]

    assert waits[-1] == 10.0
    assert max(waits) == 10.0


def test_success_resets_the_backoff_and_says_whether_it_ended_a_run_of_failures() -> None:
    backoff = Backoff()
    assert backoff.succeeded() is False, "no failure before: nothing recovered"

    backoff.failed()
    backoff.failed()
    backoff.failed()
    assert backoff.succeeded() is True
    assert backoff.succeeded() is False, "only the first success after failures recovers"

    assert backoff.failed() == 0.5, "the next outage starts from the first wait again"


# -- is_outage --------------------------------------------------------------------------------


def test_a_refused_connection_is_an_outage(dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(closed_port_dsn(dsn))

    assert is_outage(refused.value)


def test_an_unknown_database_is_a_setting_to_fix_not_an_outage(dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError) as missing:
        psycopg.connect(make_conninfo(dsn, dbname="pgq_no_such_database"))

    assert "does not exist" in str(missing.value)
    assert not is_outage(missing.value)


def test_a_backend_terminated_under_a_connection_is_an_outage(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        terminate(dsn, conn.info.backend_pid)
        with pytest.raises(psycopg.OperationalError) as lost:
            conn.execute("SELECT 1")

    assert is_outage(lost.value)


def test_a_pool_that_cannot_hand_out_a_connection_in_time_is_an_outage(dsn: str) -> None:
    with (
        psycopg_pool.ConnectionPool(closed_port_dsn(dsn), min_size=1, open=True) as pool,
        pytest.raises(psycopg_pool.PoolTimeout) as timed_out,
    ):
        pool.getconn(timeout=0.3)

    assert is_outage(timed_out.value)


def test_sql_errors_and_bugs_are_not_outages(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero) as sql_error:
            conn.execute("SELECT 1 / 0")

    assert not is_outage(sql_error.value)
    assert not is_outage(RuntimeError("a bug"))
    assert not is_outage(TimeoutError("timed out"))


# -- ThreadConnection -------------------------------------------------------------------------


@pytest.fixture
def thread_connection(dsn: str) -> Iterator[ThreadConnection]:
    connection = ThreadConnection(dsn)
    try:
        yield connection
    finally:
        connection.close()


def test_thread_connection_opens_once_in_autocommit_and_reuses_it(
    thread_connection: ThreadConnection,
) -> None:
    first = thread_connection.get()

    assert thread_connection.get() is first
    assert first.autocommit is True
    first.execute("CREATE TABLE kept (n int)")  # autocommit: visible without a commit
    assert first.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_thread_connection_reconnects_after_the_server_ended_its_backend(
    dsn: str, thread_connection: ThreadConnection
) -> None:
    old_pid = thread_connection.get().info.backend_pid
    terminate(dsn, old_pid)
    with pytest.raises(psycopg.OperationalError):
        thread_connection.get().execute("SELECT 1")

    again = thread_connection.get()

    assert again.execute("SELECT 42").fetchone() == (42,)
    assert again.info.backend_pid != old_pid


def test_thread_connection_close_drops_the_connection_and_get_opens_a_new_one(
    dsn: str, thread_connection: ThreadConnection
) -> None:
    first = thread_connection.get()
    old_pid = first.info.backend_pid

    thread_connection.close()

    assert first.closed
    wait_until(lambda: not backend_alive(dsn, old_pid), 5, "the closed backend exits")
    assert thread_connection.get().info.backend_pid != old_pid
    thread_connection.close()
    thread_connection.close()  # closing twice is harmless


def prepared_statements(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%%pgq_probe%%'"
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("prepare_statements", "prepared"), [(True, 1), (False, 0)])
def test_thread_connection_prepares_repeated_statements_unless_told_not_to(
    dsn: str, prepare_statements: bool, prepared: int
) -> None:
    # PgBouncer in transaction mode may not keep prepared statements between transactions.
    connection = ThreadConnection(dsn, prepare_statements=prepare_statements)
    try:
        conn = connection.get()
        for _ in range(10):
            conn.execute("SELECT 1 AS pgq_probe")

        assert prepared_statements(conn) == prepared
    finally:
        connection.close()


# -- DatabaseThread ---------------------------------------------------------------------------


class ScriptedThread(DatabaseThread):
    """Runs its ``script`` one step per tick ("bug", "sql error", then "ok" forever)."""

    duty = "scripted duty"

    def __init__(self, dsn: str, script: list[str], backoff: Backoff) -> None:
        super().__init__(
            name="pgq-test-scripted", dsn=dsn, prepare_statements=True, backoff=backoff,
            stop_timeout_seconds=5,
        )  # fmt: skip
        self.script = script
        self.backend_pids: list[int] = []
        self.failures: list[Exception] = []
        self.oks = 0
        self.lock = threading.Lock()

    def tick(self, conn: Conn) -> float:
        with self.lock:
            step = len(self.backend_pids)
            self.backend_pids.append(conn.info.backend_pid)
        action = self.script[step] if step < len(self.script) else "ok"
        if action == "bug":
            raise RuntimeError("a bug in the duty")
        if action == "sql error":
            conn.execute("SELECT 1 / 0")
        conn.execute("SELECT 1")
        with self.lock:
            self.oks += 1
        return 0.01

    def on_failure(self, error: Exception) -> None:
        self.failures.append(error)


@pytest.fixture
def threads() -> Iterator[list[DatabaseThread]]:
    """Threads a test starts; stopped at the end whatever happened."""
    started: list[DatabaseThread] = []
    yield started
    for thread in started:
        thread.stop()


def duty_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pgq.connection" and "duty failed" in r.message]


def test_database_thread_survives_a_bug_and_a_sql_error_and_keeps_ticking(
    dsn: str, threads: list[DatabaseThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgq.connection")
    backoff = Backoff(first_seconds=0.01, cap_seconds=0.05)
    thread = ScriptedThread(dsn, ["bug", "sql error"], backoff)
    threads.append(thread)

    thread.start()
    wait_until(lambda: thread.oks >= 3, 10, lambda: f"three good ticks; {thread.failures}")

    assert thread.is_alive()
    assert [type(error) for error in thread.failures] == [
        RuntimeError, psycopg.errors.DivisionByZero,
    ]  # fmt: skip
    bug, sql_error = duty_warnings(caplog)[:2]
    assert bug.levelno == sql_error.levelno == logging.WARNING
    assert "scripted duty failed (a bug in the duty); retrying in" in bug.message
    assert "scripted duty failed (division by zero); retrying in" in sql_error.message
    # A bug in pgq is worth its traceback; a database error is not.
    assert bug.exc_info is not None and bug.exc_info[0] is RuntimeError
    assert not sql_error.exc_info
    assert len(duty_warnings(caplog)) == 2, "good ticks log nothing"
    assert backoff.failures == 0, "a good tick resets the back-off"


def test_database_thread_drops_its_connection_after_a_failure_and_keeps_it_otherwise(
    dsn: str, threads: list[DatabaseThread]
) -> None:
    thread = ScriptedThread(dsn, ["bug", "sql error"], Backoff(first_seconds=0.01))
    threads.append(thread)

    thread.start()
    wait_until(lambda: thread.oks >= 3, 10, "three good ticks")

    first, second, third, fourth = thread.backend_pids[:4]
    assert first != second, "a fresh connection after the bug"
    assert second != third, "a fresh connection after the SQL error"
    assert third == fourth, "a good tick keeps its connection"


def test_database_thread_retries_an_unreachable_database_with_the_backoff(
    dsn: str, threads: list[DatabaseThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgq.connection")
    backoff = Backoff(first_seconds=0.01, cap_seconds=0.02)
    thread = ScriptedThread(closed_port_dsn(dsn), [], backoff)
    threads.append(thread)

    thread.start()
    wait_until(lambda: len(thread.failures) >= 3, 10, "three failed connection attempts")

    assert thread.is_alive()
    assert thread.backend_pids == [], "tick never ran without a connection"
    assert all(is_outage(error) for error in thread.failures)
    assert backoff.failures >= 3
    warnings = duty_warnings(caplog)
    assert warnings and not any(record.exc_info for record in warnings)


def test_database_thread_stop_ends_the_thread_and_closes_its_connection(
    dsn: str, threads: list[DatabaseThread]
) -> None:
    thread = ScriptedThread(dsn, [], Backoff())
    threads.append(thread)
    thread.start()
    wait_until(lambda: thread.oks >= 1, 10, "a good tick")
    pid = thread.backend_pids[0]

    began = time.monotonic()
    thread.stop()

    assert not thread.is_alive()
    assert time.monotonic() - began < 2
    wait_until(lambda: not backend_alive(dsn, pid), 5, "the thread's backend exits")
