"""The operators' SQL surface (migrations 0002 and 0003) as an operator uses it from psql.

Views: queue_stats, job_counts, dead_jobs, running_jobs. Functions: requeue,
requeue_dead, cancel, retry_now, prune, refresh_queue_stats; from 0003 the dry run
requeueable_dead_job_ids, the filter dead_job_matches, and resolve_run_at. Jobs are seeded
straight into pgq.jobs (tests/seeding.py) in every state the functions meet.
Seeding and checking in one transaction shares one now(), so ages are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgq.config import wakeup_channel
from seeding import Conn, fetch_job, job_ids, job_statuses, seed_job

CHANNEL = wakeup_channel("pgq")


@pytest.fixture
def listener(dsn: str) -> Iterator[Conn]:
    """A connection listening on the wake-up channel workers listen on."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        yield connection


def wakeups(listener: Conn, *, expected: int = 0) -> list[str]:
    """Payloads of the wake-ups that arrive: wait for ``expected``, or briefly for none."""
    timeout = 5.0 if expected else 0.3
    return [n.payload for n in listener.notifies(timeout=timeout, stop_after=expected or None)]


def rows(conn: Conn, statement: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(statement, params).fetchall()


def one(conn: Conn, statement: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    """The single row ``statement`` returns."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row


def call(conn: Conn, statement: str, params: list[Any] | None = None) -> Any:
    """The single value ``statement`` returns."""
    return one(conn, statement, params)[0]


def refused(
    conn: Conn, statement: str, params: list[Any], error: type[psycopg.Error]
) -> psycopg.Error:
    """Run ``statement`` in a savepoint, expect ``error``, and return it (seeds survive)."""
    with pytest.raises(error) as raised, conn.transaction():
        conn.execute(statement, params)
    return raised.value


# -- views ----------------------------------------------------------------------------------


def test_queue_stats_counts_due_scheduled_running_and_expired_leases_per_queue(
    conn: Conn,
) -> None:
    seed_job(conn, queue="emails", due_in=-30)
    seed_job(conn, queue="emails", due_in=-5)
    seed_job(conn, queue="emails", due_in=60)
    seed_job(conn, "running", queue="emails", lease_in=20)
    seed_job(conn, "running", queue="emails", lease_in=-3)
    for status in ("succeeded", "dead", "cancelled"):
        seed_job(conn, status, queue="emails")
    seed_job(conn, queue="reports", due_in=-10)
    seed_job(conn, queue="reports", due_in=3600)
    seed_job(conn, "succeeded", queue="archive")  # only finished jobs: no row at all
    seed_job(conn, "dead", queue="archive")

    stats = rows(conn, "SELECT * FROM pgq.queue_stats ORDER BY queue")

    assert stats == [
        {"queue": "emails", "due": 2, "scheduled": 1, "running": 2, "lease_expired": 1,
         "lag_seconds": pytest.approx(30.0)},
        {"queue": "reports", "due": 1, "scheduled": 1, "running": 0, "lease_expired": 0,
         "lag_seconds": pytest.approx(10.0)},
    ]  # fmt: skip


def test_queue_stats_lag_is_zero_when_nothing_is_due(conn: Conn) -> None:
    seed_job(conn, queue="later", due_in=600)
    seed_job(conn, "running", queue="busy")

    stats = {r["queue"]: r for r in rows(conn, "SELECT * FROM pgq.queue_stats")}

    assert stats["later"]["lag_seconds"] == 0.0 and stats["later"]["scheduled"] == 1
    assert stats["busy"]["lag_seconds"] == 0.0 and stats["busy"]["running"] == 1


def test_job_counts_counts_every_status_per_queue_finished_jobs_included(conn: Conn) -> None:
    for status, queue, times in [
        ("queued", "default", 3), ("running", "default", 1), ("succeeded", "default", 4),
        ("dead", "default", 2), ("cancelled", "emails", 1), ("succeeded", "emails", 2),
    ]:  # fmt: skip
        for _ in range(times):
            seed_job(conn, status, queue=queue)

    counts = conn.execute("SELECT queue, status, jobs FROM pgq.job_counts").fetchall()

    assert sorted(counts) == [
        ("default", "dead", 2), ("default", "queued", 3), ("default", "running", 1),
        ("default", "succeeded", 4), ("emails", "cancelled", 1), ("emails", "succeeded", 2),
    ]  # fmt: skip


def test_dead_jobs_lists_only_dead_jobs_with_last_error_failures_and_death_time(
    conn: Conn,
) -> None:
    dead = seed_job(
        conn, "dead", task="charge", queue="payments", args={"order": 7}, attempts=3,
        max_attempts=3, finished_ago=120, last_error="TimeoutError: gateway",
    )  # fmt: skip
    seed_job(conn, "queued", task="charge", last_error="TimeoutError: earlier attempt")
    seed_job(conn, "cancelled", task="charge")
    seed_job(conn, "succeeded", task="charge")

    found = rows(conn, "SELECT *, now() - died_at AS dead_for FROM pgq.dead_jobs")

    assert len(found) == 1
    job = found[0]
    assert (job["id"], job["queue"], job["task"], job["args"]) == (
        dead, "payments", "charge", {"order": 7},
    )  # fmt: skip
    assert (job["attempts"], job["max_attempts"], job["failures"]) == (3, 3, 3)
    assert job["last_error"] == "TimeoutError: gateway"
    assert [entry["attempt"] for entry in job["errors"]] == [1, 2, 3]
    assert job["dead_for"] == timedelta(seconds=120)


def test_dead_jobs_failures_counts_failed_attempts_not_operator_events(conn: Conn) -> None:
    job_id = seed_job(conn, "dead", attempts=2, max_attempts=2)  # two failed attempts
    conn.execute("SELECT pgq.requeue(%s)", [job_id])  # adds a 'requeued' event to errors
    # It runs once more and fails again (what finish_jobs writes): three failures in all.
    conn.execute(
        """UPDATE pgq.jobs SET status = 'dead', attempts = 1, finished_at = now(),
                  last_error = 'RuntimeError: again',
                  errors = errors || '[{"attempt": 1, "error": "RuntimeError: again"}]'
           WHERE id = %s""",
        [job_id],
    )

    failures, entries, last_error = one(
        conn,
        "SELECT failures, jsonb_array_length(errors), last_error FROM pgq.dead_jobs WHERE id = %s",
        [job_id],
    )

    assert (failures, entries) == (3, 4)
    assert last_error == "RuntimeError: again"


def test_running_jobs_shows_worker_and_flags_expired_leases(conn: Conn) -> None:
    healthy = seed_job(conn, "running", task="resize", lease_in=25)
    stale = seed_job(conn, "running", task="resize", lease_in=-1)
    seed_job(conn, "queued", task="resize")

    found = {r["id"]: r for r in rows(conn, "SELECT * FROM pgq.running_jobs")}

    assert set(found) == {healthy, stale}
    assert found[healthy]["lease_expired"] is False
    assert found[stale]["lease_expired"] is True
    assert {r["worker"] for r in found.values()} == {"worker-host:4242:abcdef"}
    assert found[healthy]["running_seconds"] == pytest.approx(5.0)  # started 5 s before now()


# -- requeue --------------------------------------------------------------------------------


def test_requeue_makes_a_dead_job_queued_now_with_fresh_attempts_and_its_history_kept(
    conn: Conn,
) -> None:
    job_id = seed_job(
        conn, "dead", queue="payments", attempts=5, due_in=-3600, finished_ago=600,
        last_error="RuntimeError: boom", dedupe_key="order-7",
    )  # fmt: skip
    history = fetch_job(conn, job_id)["errors"]
    conn.commit()

    assert call(conn, "SELECT pgq.requeue(%s)", [job_id]) == job_id
    conn.commit()

    job = fetch_job(conn, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0
    assert abs((job["run_at"] - job["db_now"]).total_seconds()) < 5
    assert job["finished_at"] is None
    assert job["locked_until"] is None and job["locked_by"] is None
    assert job["last_error"] == "RuntimeError: boom"
    assert job["dedupe_key"] == "order-7"
    assert job["errors"][:-1] == history
    note = job["errors"][-1]
    assert (note["event"], note["previous_status"], note["by"]) == ("requeued", "dead", "postgres")
    assert "at" in note
    due = call(conn, "SELECT due FROM pgq.queue_stats WHERE queue = 'payments'")
    assert due == 1


def test_requeue_wakes_workers_of_the_jobs_queue_at_commit_not_before(
    conn: Conn, listener: Conn
) -> None:
    job_id = seed_job(conn, "dead", queue="payments")
    conn.commit()
    assert wakeups(listener) == []

    conn.execute("SELECT pgq.requeue(%s)", [job_id])
    assert wakeups(listener) == []

    conn.commit()
    assert wakeups(listener, expected=1) == ["payments"]


def test_requeue_of_a_cancelled_job_queues_it_again(conn: Conn) -> None:
    job_id = seed_job(conn, "cancelled", due_in=3600)

    conn.execute("SELECT pgq.requeue(%s)", [job_id])

    job = fetch_job(conn, job_id)
    assert (job["status"], job["attempts"], job["finished_at"]) == ("queued", 0, None)
    assert job["run_at"] == job["db_now"]
    assert job["errors"][-1]["previous_status"] == "cancelled"


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_requeue_refuses_a_job_that_is_not_dead_or_cancelled_and_changes_nothing(
    conn: Conn, status: str
) -> None:
    job_id = seed_job(conn, status)
    before = fetch_job(conn, job_id)

    error = refused(
        conn, "SELECT pgq.requeue(%s)", [job_id], psycopg.errors.ObjectNotInPrerequisiteState
    )

    assert error.sqlstate == "55000"
    assert error.diag.message_primary == (
        f"pgq: job {job_id} is {status}, only dead or cancelled jobs can be requeued"
    )
    assert fetch_job(conn, job_id) == before


def test_requeue_of_an_unknown_job_says_there_is_none(conn: Conn) -> None:
    error = refused(conn, "SELECT pgq.requeue(%s)", [424242], psycopg.errors.NoDataFound)

    assert error.sqlstate == "P0002"
    assert error.diag.message_primary == "pgq: no job with id 424242"


def test_requeue_refuses_a_dead_job_whose_dedupe_key_an_unfinished_job_now_holds(
    conn: Conn,
) -> None:
    dead = seed_job(conn, "dead", dedupe_key="invoice-9")
    holder = seed_job(conn, "queued", dedupe_key="invoice-9")
    conn.commit()

    error = refused(conn, "SELECT pgq.requeue(%s)", [dead], psycopg.errors.UniqueViolation)

    assert error.sqlstate == "23505"
    assert error.diag.message_primary == (
        f"pgq: job {dead} cannot be requeued: an unfinished job holds its dedupe key"
    )
    assert job_statuses(conn) == {dead: "dead", holder: "queued"}


# -- requeue_dead ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """One seeded job of the requeue_dead grid, with what the filters look at."""

    id: int
    status: str
    task: str
    queue: str
    error: str
    died_hours_ago: float


def seed_dead_grid(conn: Conn) -> list[Seeded]:
    """Dead jobs across tasks, queues, errors and death times, plus look-alikes not dead."""
    seeded: list[Seeded] = []
    for task in ("charge", "email"):
        for queue in ("payments", "default"):
            for error, hours in (
                ("TimeoutError: gateway timed out", 3.0),
                ("ValueError: bad amount", 1.0),
                ("ConnectionError: TIMEOUT talking to smtp", 0.1),
            ):
                job_id = seed_job(
                    conn, "dead", task=task, queue=queue, last_error=error,
                    finished_ago=hours * 3600,
                )  # fmt: skip
                seeded.append(Seeded(job_id, "dead", task, queue, error, hours))
    # Same task, queue and error, but not dead: never requeued by requeue_dead.
    for status in ("queued", "cancelled", "succeeded"):
        error = "TimeoutError: gateway timed out"
        job_id = seed_job(
            conn, status, task="charge", queue="payments", last_error=error, finished_ago=3 * 3600
        )
        seeded.append(Seeded(job_id, status, "charge", "payments", error, 3.0))
    return seeded


# (filters passed to requeue_dead, which seeded jobs they select)
REQUEUE_DEAD_CASES: dict[str, tuple[dict[str, Any], Callable[[Seeded], bool]]] = {
    "no filter: every dead job": ({}, lambda s: True),
    "task": ({"task": "charge"}, lambda s: s.task == "charge"),
    "queue": ({"queue": "default"}, lambda s: s.queue == "default"),
    "error pattern, case-insensitive": (
        {"error_pattern": "%timeout%"}, lambda s: "timeout" in s.error.lower(),
    ),
    "error pattern anchored": (
        {"error_pattern": "ValueError:%"}, lambda s: s.error.startswith("ValueError:"),
    ),
    "died after": ({"died_after": 2.0}, lambda s: s.died_hours_ago < 2.0),
    "died before": ({"died_before": 0.5}, lambda s: s.died_hours_ago > 0.5),
    "died between": (
        {"died_after": 2.0, "died_before": 0.5}, lambda s: 0.5 < s.died_hours_ago < 2.0,
    ),
    "all filters": (
        {"task": "email", "queue": "payments", "error_pattern": "%timeout%", "died_before": 2.0},
        lambda s: s.task == "email" and s.queue == "payments"
        and "timeout" in s.error.lower() and s.died_hours_ago > 2.0,
    ),
    "nothing matches": ({"task": "no-such-task"}, lambda s: False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REQUEUE_DEAD_CASES))
def test_requeue_dead_requeues_exactly_the_dead_jobs_matching_every_filter(
    conn: Conn, case: str
) -> None:
    filters, selects = REQUEUE_DEAD_CASES[case]
    seeded = seed_dead_grid(conn)
    params: dict[str, Any] = {
        "task": None, "queue": None, "error_pattern": None, "died_after": None,
        "died_before": None,
    }  # fmt: skip
    params.update(filters)
    conn.commit()

    requeued = [
        row[0]
        for row in conn.execute(
            """SELECT * FROM pgq.requeue_dead(
                   task => %(task)s, queue => %(queue)s, error_pattern => %(error_pattern)s,
                   died_after => now() - %(died_after)s::float8 * interval '1 hour',
                   died_before => now() - %(died_before)s::float8 * interval '1 hour')""",
            params,
        )
    ]
    conn.commit()

    expected = {s.id for s in seeded if s.status == "dead" and selects(s)}
    assert set(requeued) == expected
    assert len(requeued) == len(expected)
    statuses = job_statuses(conn)
    for s in seeded:
        assert statuses[s.id] == ("queued" if s.id in expected else s.status), s


def test_requeue_dead_max_jobs_requeues_the_oldest_deaths_first(conn: Conn) -> None:
    by_age = {hours: seed_job(conn, "dead", finished_ago=hours * 3600) for hours in (5, 1, 3, 2)}

    requeued = [row[0] for row in conn.execute("SELECT * FROM pgq.requeue_dead(max_jobs => 2)")]

    assert requeued == [by_age[5], by_age[3]]
    assert job_statuses(conn) == {
        by_age[5]: "queued", by_age[3]: "queued", by_age[2]: "dead", by_age[1]: "dead",
    }  # fmt: skip


def test_requeue_dead_skips_a_job_whose_dedupe_key_is_held_and_says_so(conn: Conn) -> None:
    blocked = seed_job(conn, "dead", dedupe_key="sync-1", finished_ago=300)
    holder = seed_job(conn, "running", dedupe_key="sync-1")
    free = seed_job(conn, "dead", dedupe_key="sync-2", finished_ago=200)
    plain = seed_job(conn, "dead", finished_ago=100)
    conn.commit()
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))

    requeued = [row[0] for row in conn.execute("SELECT * FROM pgq.requeue_dead()")]
    conn.commit()

    assert requeued == [free, plain]
    assert notices == [f"pgq: job {blocked} skipped: an unfinished job holds its dedupe key"]
    assert job_statuses(conn) == {
        blocked: "dead", holder: "running", free: "queued", plain: "queued",
    }  # fmt: skip


def test_requeue_dead_wakes_each_queue_once_at_commit(conn: Conn, listener: Conn) -> None:
    for queue in ("payments", "payments", "emails"):
        seed_job(conn, "dead", queue=queue)
    conn.commit()

    conn.execute("SELECT * FROM pgq.requeue_dead()").fetchall()
    assert wakeups(listener) == []
    conn.commit()

    assert sorted(wakeups(listener, expected=2)) == ["emails", "payments"]
    assert wakeups(listener) == []


# -- requeueable_dead_job_ids, dead_job_matches (revision 0003) -----------------------------

FILTER_ARGUMENTS = sql.SQL("""task => %(task)s, queue => %(queue)s,
    error_pattern => %(error_pattern)s,
    died_after => now() - %(died_after)s::float8 * interval '1 hour',
    died_before => now() - %(died_before)s::float8 * interval '1 hour'""")


def filter_params(filters: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = dict.fromkeys(
        ("task", "queue", "error_pattern", "died_after", "died_before")
    )
    params.update(filters)
    return params


@pytest.mark.parametrize("case", list(REQUEUE_DEAD_CASES))
def test_requeueable_dead_job_ids_lists_exactly_what_requeue_dead_then_requeues(
    conn: Conn, case: str
) -> None:
    filters, selects = REQUEUE_DEAD_CASES[case]
    seeded = seed_dead_grid(conn)
    timeout = "TimeoutError: gateway timed out"
    grid_job: dict[str, Any] = {"task": "charge", "queue": "payments", "last_error": timeout}
    keyed = {
        key: seed_job(conn, "dead", finished_ago=3 * 3600, dedupe_key=key, **grid_job)
        for key in ("held", "free", "held-by-a-finished-job")
    }
    seeded += [
        Seeded(job_id, "dead", "charge", "payments", timeout, 3.0) for job_id in keyed.values()
    ]
    seed_job(conn, "running", task="other", queue="other", dedupe_key="held")
    seed_job(conn, "succeeded", task="other", queue="other", dedupe_key="held-by-a-finished-job")
    conn.commit()
    params = filter_params(filters)
    before = job_statuses(conn)

    listed = [
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT * FROM pgq.requeueable_dead_job_ids({})").format(FILTER_ARGUMENTS),
            params,
        )
    ]
    assert job_statuses(conn) == before, "a dry run changes nothing"
    requeued = [
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT * FROM pgq.requeue_dead({})").format(FILTER_ARGUMENTS), params
        )
    ]
    conn.commit()

    expected = {s.id for s in seeded if s.status == "dead" and selects(s) and s.id != keyed["held"]}
    assert sorted(listed) == sorted(expected), "each id once, and only the requeueable ones"
    assert sorted(requeued) == sorted(listed)
    assert job_statuses(conn)[keyed["held"]] == "dead"


def test_requeueable_dead_job_ids_without_arguments_lists_every_requeueable_dead_job(
    conn: Conn,
) -> None:
    dead = {seed_job(conn, "dead", task=task) for task in ("a", "b", "c")}
    for status in ("queued", "running", "succeeded", "cancelled"):
        seed_job(conn, status)

    listed = {row[0] for row in conn.execute("SELECT * FROM pgq.requeueable_dead_job_ids()")}

    assert listed == dead


def test_dead_job_matches_is_true_only_for_dead_jobs_and_each_filter_narrows_it(
    conn: Conn,
) -> None:
    target = seed_job(
        conn, "dead", task="charge", queue="payments", last_error="TimeoutError: gateway",
        finished_ago=7200,
    )  # fmt: skip
    for status in ("queued", "running", "succeeded", "cancelled"):
        seed_job(conn, status, task="charge", queue="payments", last_error="TimeoutError: x")

    def matching(arguments: str) -> set[int]:
        statement = sql.SQL("SELECT j.id FROM pgq.jobs AS j WHERE pgq.dead_job_matches(j{})")
        return {row[0] for row in conn.execute(statement.format(sql.SQL(arguments)))}

    assert matching("") == {target}
    assert matching(", task => 'charge', queue => 'payments'") == {target}
    assert matching(", error_pattern => 'timeouterror:%'") == {target}
    assert matching(", died_after => now() - interval '3 hours'") == {target}
    assert matching(", died_before => now() - interval '1 hour'") == {target}
    assert matching(", task => 'email'") == set()
    assert matching(", queue => 'default'") == set()
    assert matching(", error_pattern => 'ValueError%'") == set()
    assert matching(", died_after => now() - interval '1 hour'") == set()
    assert matching(", died_before => now() - interval '3 hours'") == set()


def test_dead_job_matches_is_false_not_null_for_a_dead_job_without_an_error(conn: Conn) -> None:
    silent = seed_job(conn, "dead", last_error=None)
    conn.execute(
        "UPDATE pgq.jobs SET finished_at = NULL, last_error = NULL WHERE id = %s", [silent]
    )

    row = conn.execute(
        "SELECT pgq.dead_job_matches(j, error_pattern => '%%'),"
        " pgq.dead_job_matches(j, died_after => now() - interval '1 day'),"
        " NOT pgq.dead_job_matches(j, died_before => now())"
        " FROM pgq.jobs AS j WHERE j.id = %s",
        [silent],
    ).fetchone()

    assert row == (False, False, True)


# -- resolve_run_at (revision 0003) ---------------------------------------------------------


def test_resolve_run_at_without_a_time_is_the_delay_after_the_transactions_start(
    conn: Conn,
) -> None:
    began = call(conn, "SELECT now()")  # opens the transaction
    conn.execute("SELECT pg_sleep(0.1)")

    run_at, clock = one(conn, "SELECT pgq.resolve_run_at(NULL, 60), clock_timestamp()")

    assert run_at == began + timedelta(seconds=60)
    assert run_at < clock + timedelta(seconds=60), "the transaction's start, not the clock"
    assert call(conn, "SELECT pgq.resolve_run_at(NULL, 0)") == began
    assert call(conn, "SELECT pgq.resolve_run_at(NULL, 1.5)") == began + timedelta(seconds=1.5)


def test_resolve_run_at_with_a_time_is_that_time_whatever_the_delay(conn: Conn) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

    assert call(conn, "SELECT pgq.resolve_run_at(%s, 60)", [when]) == when
    assert call(conn, "SELECT pgq.resolve_run_at(%s, NULL)", [when]) == when
    past = when.replace(year=2001)
    assert call(conn, "SELECT pgq.resolve_run_at(%s, 0)", [past]) == past


# -- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["due now", "scheduled for later", "waiting to retry after a failure"]
)
def test_cancel_of_a_queued_job_marks_it_cancelled_and_finished(conn: Conn, kind: str) -> None:
    job_id = {
        "due now": lambda: seed_job(conn),
        "scheduled for later": lambda: seed_job(conn, due_in=3600),
        "waiting to retry after a failure": lambda: seed_job(
            conn, attempts=2, due_in=30, last_error="RuntimeError: flaky"
        ),
    }[kind]()

    assert call(conn, "SELECT pgq.cancel(%s)", [job_id]) == job_id

    job = fetch_job(conn, job_id)
    assert job["status"] == "cancelled"
    assert job["finished_at"] == job["db_now"]
    assert (job["errors"][-1]["event"], job["errors"][-1]["by"]) == ("cancelled", "postgres")
    assert call(conn, "SELECT count(*) FROM pgq.queue_stats") == 0


def test_cancelling_a_job_frees_its_dedupe_key(conn: Conn) -> None:
    job_id = seed_job(conn, dedupe_key="report-2030-01")
    conn.execute("SELECT pgq.cancel(%s)", [job_id])

    new_id, created = one(conn, "SELECT * FROM pgq.enqueue('task', dedupe_key => 'report-2030-01')")

    assert created is True and new_id != job_id


@pytest.mark.parametrize("status", ["dead", "succeeded", "cancelled"])
def test_cancel_refuses_a_finished_job_and_changes_nothing(conn: Conn, status: str) -> None:
    job_id = seed_job(conn, status)
    before = fetch_job(conn, job_id)

    error = refused(
        conn, "SELECT pgq.cancel(%s)", [job_id], psycopg.errors.ObjectNotInPrerequisiteState
    )

    assert error.sqlstate == "55000"
    assert error.diag.message_primary == (
        f"pgq: job {job_id} is {status}, only queued or running jobs can be cancelled"
    )
    assert fetch_job(conn, job_id) == before


def test_cancel_of_an_unknown_job_says_there_is_none(conn: Conn) -> None:
    error = refused(conn, "SELECT pgq.cancel(%s)", [31337], psycopg.errors.NoDataFound)

    assert error.diag.message_primary == "pgq: no job with id 31337"


# -- retry_now ------------------------------------------------------------------------------


def test_retry_now_makes_a_scheduled_job_due_now_and_wakes_its_queue(
    conn: Conn, listener: Conn
) -> None:
    job_id = seed_job(conn, queue="reports", due_in=3600, attempts=2)
    conn.commit()

    assert call(conn, "SELECT pgq.retry_now(%s)", [job_id]) == job_id
    stats = rows(conn, "SELECT due, scheduled FROM pgq.queue_stats WHERE queue = 'reports'")
    assert wakeups(listener) == []
    conn.commit()

    job = fetch_job(conn, job_id)
    assert job["status"] == "queued" and job["attempts"] == 2
    assert abs((job["run_at"] - job["db_now"]).total_seconds()) < 5
    assert stats == [{"due": 1, "scheduled": 0}]
    assert wakeups(listener, expected=1) == ["reports"]


def test_retry_now_never_pushes_an_already_due_job_back_in_line(conn: Conn) -> None:
    waiting_longest = seed_job(conn, queue="reports", due_in=-3600)
    seed_job(conn, queue="reports", due_in=-60)
    before = fetch_job(conn, waiting_longest)["run_at"]

    conn.execute("SELECT pgq.retry_now(%s)", [waiting_longest])

    assert fetch_job(conn, waiting_longest)["run_at"] == before
    assert call(conn, "SELECT lag_seconds FROM pgq.queue_stats") == pytest.approx(3600)


@pytest.mark.parametrize("status", ["running", "dead", "succeeded", "cancelled"])
def test_retry_now_refuses_a_job_that_is_not_queued(conn: Conn, status: str) -> None:
    job_id = seed_job(conn, status)
    before = fetch_job(conn, job_id)

    error = refused(
        conn, "SELECT pgq.retry_now(%s)", [job_id], psycopg.errors.ObjectNotInPrerequisiteState
    )

    assert error.sqlstate == "55000"
    assert f"job {job_id} is {status}, only queued jobs can be retried now" in str(error)
    assert fetch_job(conn, job_id) == before


def test_retry_now_of_an_unknown_job_says_there_is_none(conn: Conn) -> None:
    error = refused(conn, "SELECT pgq.retry_now(%s)", [777], psycopg.errors.NoDataFound)

    assert error.sqlstate == "P0002"


# -- prune ----------------------------------------------------------------------------------


def test_prune_deletes_exactly_the_jobs_of_that_status_finished_before_the_age(
    conn: Conn,
) -> None:
    day = 86400
    old_succeeded = {seed_job(conn, "succeeded", finished_ago=day * d) for d in (2, 3, 30)}
    kept = {
        seed_job(conn, "succeeded", finished_ago=3600),
        seed_job(conn, "succeeded", finished_ago=day - 60),
        seed_job(conn, "dead", finished_ago=day * 30),
        seed_job(conn, "cancelled", finished_ago=day * 30),
        seed_job(conn, "queued", created_ago=day * 30, due_in=-day * 30),
        seed_job(conn, "running", created_ago=day * 30),
    }

    deleted = call(conn, "SELECT pgq.prune('succeeded', interval '1 day')")

    assert deleted == 3
    assert job_ids(conn) == kept
    assert not old_succeeded & job_ids(conn)


@pytest.mark.parametrize("status", ["dead", "cancelled"])
def test_prune_deletes_old_dead_or_cancelled_jobs_on_request(conn: Conn, status: str) -> None:
    old = seed_job(conn, status, finished_ago=7200)
    recent = seed_job(conn, status, finished_ago=600)
    other = seed_job(conn, "succeeded", finished_ago=7200)

    assert call(conn, "SELECT pgq.prune(%s, interval '1 hour')", [status]) == 1

    assert job_ids(conn) == {recent, other}
    assert old not in job_ids(conn)


def test_prune_deletes_one_batch_of_batch_size_oldest_first(conn: Conn) -> None:
    by_age = {days: seed_job(conn, "succeeded", finished_ago=days * 86400) for days in range(2, 7)}

    assert call(conn, "SELECT pgq.prune('succeeded', interval '1 day', 2)") == 2
    assert job_ids(conn) == {by_age[2], by_age[3], by_age[4]}

    batches = [call(conn, "SELECT pgq.prune('succeeded', interval '1 day', 2)") for _ in range(3)]
    assert batches == [2, 1, 0]
    assert job_ids(conn) == set()


@pytest.mark.parametrize("status", ["queued", "running", "bogus"])
def test_prune_refuses_statuses_that_are_not_finished(conn: Conn, status: str) -> None:
    seed_job(conn, "queued", created_ago=86400 * 30)

    error = refused(
        conn, "SELECT pgq.prune(%s, interval '0')", [status], psycopg.errors.InvalidParameterValue
    )

    assert error.sqlstate == "22023"
    assert error.diag.message_primary == (
        f"pgq: only finished jobs can be pruned (succeeded, dead, cancelled), not {status}"
    )
    assert len(job_ids(conn)) == 1


@pytest.mark.parametrize("age", ["-1 second", None])
def test_prune_refuses_a_negative_or_missing_age(conn: Conn, age: str | None) -> None:
    seed_job(conn, "succeeded", finished_ago=86400)

    error = refused(
        conn, "SELECT pgq.prune('succeeded', %s::interval)", [age],
        psycopg.errors.InvalidParameterValue,
    )  # fmt: skip

    assert "older_than must be an interval >= 0" in str(error)
    assert len(job_ids(conn)) == 1


def test_two_concurrent_prunes_delete_different_rows_without_waiting_for_each_other(
    dsn: str, conn: Conn
) -> None:
    seeded = {seed_job(conn, "succeeded", finished_ago=86400 * (i + 2)) for i in range(7)}
    conn.commit()
    first, second, third = (psycopg.connect(dsn) for _ in range(3))
    try:
        for pruner in (first, second, third):
            # Waiting on the other's row locks would fail here instead of hanging.
            pruner.execute("SET lock_timeout = '3s'")
        # Both transactions stay open: their deleted rows stay locked.
        assert call(first, "SELECT pgq.prune('succeeded', interval '1 day', 3)") == 3
        assert call(second, "SELECT pgq.prune('succeeded', interval '1 day', 3)") == 3
        deleted_by_first = seeded - job_ids(first)
        deleted_by_second = seeded - job_ids(second)
        # A third pruner finds only the one row nobody holds.
        assert call(third, "SELECT pgq.prune('succeeded', interval '1 day', 3)") == 1
        deleted_by_third = seeded - job_ids(third)
        first.commit()
        second.commit()
        third.commit()
    finally:
        for pruner in (first, second, third):
            pruner.close()

    assert len(deleted_by_first) == len(deleted_by_second) == 3
    assert len(deleted_by_third) == 1
    assert not deleted_by_first & deleted_by_second
    assert not (deleted_by_first | deleted_by_second) & deleted_by_third
    assert job_ids(conn) == set()


# -- refresh_queue_stats --------------------------------------------------------------------


def snapshot(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT queue, due, scheduled, running, lease_expired FROM pgq.queue_stats_snapshot "
        "ORDER BY queue"
    ).fetchall()


def test_refresh_queue_stats_copies_queue_stats_into_the_snapshot(conn: Conn) -> None:
    seed_job(conn, queue="emails", due_in=-20)
    seed_job(conn, queue="emails", due_in=60)
    seed_job(conn, "running", queue="reports", lease_in=-1)
    seed_job(conn, "succeeded", queue="archive")
    conn.commit()

    assert call(conn, "SELECT pgq.refresh_queue_stats(interval '10 seconds')") is True
    conn.commit()

    assert snapshot(conn) == [("emails", 1, 1, 0, 0), ("reports", 0, 0, 1, 1)]
    lag, taken_ago = one(
        conn,
        "SELECT lag_seconds, now() - taken_at FROM pgq.queue_stats_snapshot WHERE queue = 'emails'",
    )
    assert lag == pytest.approx(20.0, abs=5.0)
    assert taken_ago < timedelta(seconds=5)


def test_refresh_queue_stats_keeps_a_fresh_snapshot_and_refreshes_a_stale_one(
    conn: Conn,
) -> None:
    seed_job(conn, queue="emails")
    conn.commit()
    assert call(conn, "SELECT pgq.refresh_queue_stats(interval '1 hour')") is True
    conn.commit()
    seed_job(conn, queue="reports")
    conn.commit()

    assert call(conn, "SELECT pgq.refresh_queue_stats(interval '1 hour')") is False
    conn.commit()
    assert snapshot(conn) == [("emails", 1, 0, 0, 0)], "a fresh snapshot is left alone"

    conn.execute("UPDATE pgq.queue_stats_snapshot SET taken_at = now() - interval '2 hours'")
    conn.commit()
    assert call(conn, "SELECT pgq.refresh_queue_stats(interval '1 hour')") is True
    conn.commit()
    assert snapshot(conn) == [("emails", 1, 0, 0, 0), ("reports", 1, 0, 0, 0)]


def test_refresh_queue_stats_returns_false_while_another_session_is_refreshing(
    dsn: str, conn: Conn
) -> None:
    seed_job(conn, queue="emails")
    conn.commit()
    with psycopg.connect(dsn) as other:
        # The other session refreshes in a transaction it keeps open.
        assert call(other, "SELECT pgq.refresh_queue_stats(interval '10 seconds')") is True

        # The snapshot this session sees is still empty (so stale): only the lock says no.
        assert snapshot(conn) == []
        assert call(conn, "SELECT pgq.refresh_queue_stats(interval '10 seconds')") is False
        conn.commit()
        other.commit()

    assert snapshot(conn) == [("emails", 1, 0, 0, 0)]


def test_refresh_queue_stats_drops_queues_that_have_no_unfinished_jobs_left(conn: Conn) -> None:
    job_id = seed_job(conn, queue="emails")
    conn.commit()
    call(conn, "SELECT pgq.refresh_queue_stats(interval '0 seconds')")
    conn.commit()
    conn.execute("SELECT pgq.cancel(%s)", [job_id])
    conn.commit()

    assert call(conn, "SELECT pgq.refresh_queue_stats(interval '0 seconds')") is True
    conn.commit()

    assert snapshot(conn) == []


# -- table settings -------------------------------------------------------------------------


def test_jobs_table_is_vacuumed_and_analyzed_more_eagerly_than_the_default(conn: Conn) -> None:
    options = call(conn, "SELECT reloptions FROM pg_class WHERE oid = 'pgq.jobs'::regclass")

    assert sorted(options) == sorted([
        "autovacuum_vacuum_scale_factor=0.02",
        "autovacuum_vacuum_threshold=1000",
        "autovacuum_analyze_scale_factor=0.01",
        "autovacuum_vacuum_cost_delay=0",
        "autovacuum_vacuum_insert_scale_factor=0.05",
    ])  # fmt: skip
