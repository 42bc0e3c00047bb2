"""pgq.admin, the Python side of the operators' functions: its types, exceptions and batching.

What the SQL does to each job is covered in test_admin_sql.py; here, what a
Python caller relies on: typed rows, JobNotFoundError and JobStateError instead
of SQL errors, naive datetimes refused, and bulk work done in committed batches.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgq
from pgq import admin
from seeding import Conn, fetch_job, job_ids, job_statuses, seed_job

HOUR = 3600.0


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    """An autocommit connection, as the CLI uses: each admin call commits on its own."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def observer(dsn: str) -> Iterator[Conn]:
    """A second connection, to see what other sessions see (committed work only)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def finishes_within(
    dsn: str, seconds: float, work: Callable[[Conn], Any]
) -> tuple[bool, BaseException | None]:
    """Run ``work`` on a connection of its own in a thread; (finished in time, what it raised).

    A call that is still running at the deadline has its backend terminated, so a
    runaway loop cannot outlive the test.
    """
    connection = psycopg.connect(dsn, autocommit=True)
    pid = connection.info.backend_pid
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work(connection)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    finished = not thread.is_alive()
    if not finished:
        with psycopg.connect(dsn, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        thread.join(10)
    connection.close()
    return finished, raised[0] if raised else None


# -- inspection -----------------------------------------------------------------------------


def test_queue_stats_returns_one_typed_row_per_queue_in_name_order(db: Conn) -> None:
    seed_job(db, queue="reports", due_in=-60)
    seed_job(db, queue="emails", due_in=3600)
    seed_job(db, "running", queue="emails", lease_in=-1)
    seed_job(db, "succeeded", queue="archive")

    stats = admin.queue_stats(db)

    assert [s.queue for s in stats] == ["emails", "reports"]
    emails, reports = stats
    assert (emails.due, emails.scheduled, emails.running, emails.lease_expired) == (0, 1, 1, 1)
    assert emails.lag_seconds == 0.0
    assert (reports.due, reports.scheduled) == (1, 0)
    assert 59 <= reports.lag_seconds < 120
    assert isinstance(reports.due, int) and isinstance(reports.lag_seconds, float)


def test_dead_job_counts_returns_each_queues_dead_jobs_and_newest_death(db: Conn) -> None:
    seed_job(db, "dead", queue="payments", finished_ago=3 * HOUR)
    newest = seed_job(db, "dead", queue="payments", finished_ago=HOUR)
    only = seed_job(db, "dead", queue="emails", finished_ago=60)
    seed_job(db, queue="reports")
    seed_job(db, "succeeded", queue="archive")

    counts = admin.dead_job_counts(db)

    assert [(c.queue, c.dead) for c in counts] == [("emails", 1), ("payments", 2)]
    assert counts[0].last_died_at == fetch_job(db, only)["finished_at"]
    assert counts[1].last_died_at == fetch_job(db, newest)["finished_at"]


def test_job_counts_returns_queue_status_and_count_for_every_status(db: Conn) -> None:
    for status in ("queued", "succeeded", "succeeded", "dead"):
        seed_job(db, status, queue="emails")
    seed_job(db, "cancelled", queue="default")

    assert admin.job_counts(db) == [
        ("default", "cancelled", 1),
        ("emails", "dead", 1),
        ("emails", "queued", 1),
        ("emails", "succeeded", 2),
    ]


def test_list_jobs_filters_by_status_queue_task_and_creation_time_newest_first(
    db: Conn,
) -> None:
    old = seed_job(db, "dead", task="charge", queue="payments", created_ago=3 * HOUR)
    charges = [seed_job(db, "dead", task="charge", queue="payments") for _ in range(3)]
    seed_job(db, "dead", task="charge", queue="default")
    seed_job(db, "dead", task="email", queue="payments")
    seed_job(db, "queued", task="charge", queue="payments")
    since = datetime.now(UTC) - timedelta(hours=1)

    found = admin.list_jobs(db, status="dead", queue="payments", task="charge", since=since)

    assert [job.id for job in found] == sorted(charges, reverse=True)
    assert all(isinstance(job, admin.JobSummary) for job in found)
    assert {(j.status, j.queue, j.task) for j in found} == {("dead", "payments", "charge")}
    everything = admin.list_jobs(db, status=pgq.JobStatus.DEAD, queue="payments", task="charge")
    assert [job.id for job in everything] == [*sorted(charges, reverse=True), old]
    assert [job.id for job in admin.list_jobs(db, limit=2)] == sorted(job_ids(db))[-2:][::-1]


def test_list_jobs_refuses_a_naive_since_and_an_unknown_status(db: Conn) -> None:
    with pytest.raises(pgq.InvalidJobError, match="since must be timezone-aware"):
        admin.list_jobs(db, since=datetime(2030, 1, 1))
    with pytest.raises(pgq.InvalidJobError, match="unknown status 'finished'"):
        admin.list_jobs(db, status="finished")


def test_get_job_returns_args_error_history_lease_and_dedupe_key(db: Conn) -> None:
    job_id = seed_job(
        db, "dead", task="charge", args={"order": 7, "cents": 1999}, attempts=2,
        max_attempts=2, dedupe_key="order-7", last_error="ValueError: declined",
    )  # fmt: skip

    job = admin.get_job(db, job_id)

    assert isinstance(job, admin.JobDetail)
    assert (job.id, job.task, job.status, job.attempts, job.max_attempts) == (
        job_id, "charge", "dead", 2, 2,
    )  # fmt: skip
    assert job.args == {"order": 7, "cents": 1999}
    assert [e["error"] for e in job.errors] == ["ValueError: declined"] * 2
    assert job.last_error == "ValueError: declined"
    assert job.dedupe_key == "order-7" and job.locked_until is None
    assert job.finished_at is not None and job.finished_at.tzinfo is not None
    assert job.as_dict()["args"] == {"order": 7, "cents": 1999}


def test_get_job_shows_args_python_cannot_decode_as_their_json_text(db: Conn) -> None:
    # Written past pgq's checks: the row must not break the operator's view of it.
    row = db.execute(
        "INSERT INTO pgq.jobs (task, args) VALUES ('t', '{\"n\": 1e5000}') RETURNING id"
    ).fetchone()
    assert row is not None

    found = admin.get_job(db, row[0])

    assert isinstance(found.args, str)
    assert found.args.startswith('{"n": 1000') and len(found.args) == 5_008


def test_get_job_of_an_unknown_id_raises_job_not_found(db: Conn) -> None:
    with pytest.raises(pgq.JobNotFoundError, match="no job with id 999") as raised:
        admin.get_job(db, 999)

    assert isinstance(raised.value, LookupError) and isinstance(raised.value, pgq.PgqError)


# -- requeue --------------------------------------------------------------------------------


def test_requeue_of_a_dead_job_is_committed_on_its_own(db: Conn, observer: Conn) -> None:
    job_id = seed_job(db, "dead")

    admin.requeue(db, job_id)

    assert fetch_job(observer, job_id)["status"] == "queued"


def test_requeue_on_a_connection_without_autocommit_commits_too(dsn: str, observer: Conn) -> None:
    job_id = seed_job(observer, "dead")
    with psycopg.connect(dsn) as conn:
        admin.requeue(conn, job_id)
        assert fetch_job(observer, job_id)["status"] == "queued"
        conn.rollback()  # nothing left to roll back

    assert fetch_job(observer, job_id)["status"] == "queued"


def test_requeue_of_a_running_job_raises_job_state_error_and_leaves_it_running(
    db: Conn,
) -> None:
    job_id = seed_job(db, "running")

    with pytest.raises(pgq.JobStateError) as raised:
        admin.requeue(db, job_id)

    assert str(raised.value) == (
        f"job {job_id} is running, only dead or cancelled jobs can be requeued"
    )
    assert fetch_job(db, job_id)["status"] == "running"
    # The refusal rolled back cleanly: the connection still works.
    assert admin.get_job(db, job_id).status == "running"


def test_requeue_raises_job_not_found_or_job_state_error_instead_of_sql_errors(
    db: Conn,
) -> None:
    dead = seed_job(db, "dead", dedupe_key="k")
    seed_job(db, "queued", dedupe_key="k")

    with pytest.raises(pgq.JobNotFoundError, match="no job with id 123456"):
        admin.requeue(db, 123456)
    with pytest.raises(pgq.JobStateError, match="an unfinished job holds its dedupe key"):
        admin.requeue(db, dead)

    assert fetch_job(db, dead)["status"] == "dead"


def test_find_dead_jobs_lists_matches_in_id_order_and_changes_nothing(db: Conn) -> None:
    first = seed_job(db, "dead", task="charge", finished_ago=HOUR, last_error="Timeout: a")
    seed_job(db, "dead", task="charge", finished_ago=HOUR, last_error="ValueError")
    second = seed_job(db, "dead", task="charge", finished_ago=2 * HOUR, last_error="timeout: b")
    seed_job(db, "dead", task="email", finished_ago=HOUR, last_error="Timeout")
    seed_job(db, "queued", task="charge", last_error="Timeout: c")
    before = job_statuses(db)

    found = admin.find_dead_jobs(db, admin.DeadJobFilter(task="charge", error_pattern="%timeout%"))

    assert [job.id for job in found] == [first, second]
    assert all(isinstance(job, admin.DeadJob) for job in found)
    assert [job.last_error for job in found] == ["Timeout: a", "timeout: b"]
    assert [(job.task, job.queue, job.attempts) for job in found] == [("charge", "default", 5)] * 2
    assert found[1].died_at == admin.get_job(db, second).finished_at
    assert job_statuses(db) == before
    assert admin.count_dead_jobs(db, admin.DeadJobFilter(task="charge")) == 3
    assert admin.count_dead_jobs(db, admin.DeadJobFilter(error_pattern="%timeout%")) == 3
    page = admin.find_dead_jobs(db, admin.DeadJobFilter(task="charge"), limit=1, after_id=first)
    assert [job.id for job in page] == [first + 1]


def test_requeue_dead_works_in_committed_batches_and_reports_each_batch_size(
    db: Conn, observer: Conn
) -> None:
    dead = [seed_job(db, "dead", finished_ago=HOUR * (10 - i)) for i in range(7)]
    seed_job(db, "dead", task="other")
    batches: list[int] = []
    queued_seen_by_others: list[int] = []

    def on_batch(size: int) -> None:
        batches.append(size)
        count = observer.execute("SELECT count(*) FROM pgq.jobs WHERE status = 'queued'")
        queued_seen_by_others.append(int((count.fetchone() or [0])[0]))

    requeued = admin.requeue_dead(
        db, admin.DeadJobFilter(task="task"), batch_size=3, on_batch=on_batch
    )

    assert requeued == dead, "oldest death first"
    assert batches == [3, 3, 1]
    assert queued_seen_by_others == [3, 6, 7], "each batch is committed before the next"
    assert sorted(job_statuses(db).values()) == ["dead"] + ["queued"] * 7


def test_requeue_dead_with_exactly_full_batches_requeues_everything(db: Conn) -> None:
    dead = [seed_job(db, "dead") for _ in range(4)]
    batches: list[int] = []

    requeued = admin.requeue_dead(db, admin.DeadJobFilter(), batch_size=2, on_batch=batches.append)

    assert requeued == dead
    assert batches == [2, 2]
    assert admin.requeue_dead(db, admin.DeadJobFilter(), batch_size=2) == []


def test_requeue_dead_requeues_every_match_even_when_one_is_skipped_for_its_dedupe_key(
    db: Conn,
) -> None:
    blocked = seed_job(db, "dead", dedupe_key="sync-1", finished_ago=5 * HOUR)
    seed_job(db, "queued", dedupe_key="sync-1")
    others = [seed_job(db, "dead", finished_ago=HOUR * (4 - i)) for i in range(4)]

    # The skipped job makes the first batch short: the batches must go on past it.
    requeued = admin.requeue_dead(db, admin.DeadJobFilter(), batch_size=2)

    assert requeued == others
    assert fetch_job(db, blocked)["status"] == "dead"


def test_requeue_dead_refuses_naive_death_times_and_changes_nothing(db: Conn) -> None:
    job_id = seed_job(db, "dead")

    with pytest.raises(pgq.InvalidJobError, match="died_after must be timezone-aware"):
        admin.requeue_dead(db, admin.DeadJobFilter(died_after=datetime(2030, 1, 1)))
    with pytest.raises(pgq.InvalidJobError, match="died_before must be timezone-aware"):
        admin.find_dead_jobs(db, admin.DeadJobFilter(died_before=datetime(2030, 1, 1)))

    assert fetch_job(db, job_id)["status"] == "dead"


# -- cancel, retry now, prune ---------------------------------------------------------------


def test_cancel_a_queued_and_a_running_job_and_job_state_error_for_a_finished_one(
    db: Conn,
) -> None:
    queued = seed_job(db, due_in=600)
    running = seed_job(db, "running")
    dead = seed_job(db, "dead")

    admin.cancel(db, queued)
    admin.cancel(db, running)
    with pytest.raises(pgq.JobStateError, match=f"job {dead} is dead, only queued or running"):
        admin.cancel(db, dead)
    with pytest.raises(pgq.JobNotFoundError):
        admin.cancel(db, 4040)

    assert job_statuses(db) == {queued: "cancelled", running: "cancelled", dead: "dead"}


def test_retry_now_makes_a_scheduled_job_due_and_refuses_a_dead_one(db: Conn) -> None:
    scheduled = seed_job(db, due_in=3600)
    dead = seed_job(db, "dead")

    admin.retry_now(db, scheduled)
    with pytest.raises(pgq.JobStateError, match="requeue dead ones"):
        admin.retry_now(db, dead)

    job = fetch_job(db, scheduled)
    assert job["run_at"] <= job["db_now"]
    assert fetch_job(db, dead)["status"] == "dead"


def test_prune_deletes_every_old_job_of_the_status_in_batches_and_returns_the_total(
    db: Conn,
) -> None:
    for _ in range(5):
        seed_job(db, "succeeded", finished_ago=2 * HOUR)
    recent = seed_job(db, "succeeded", finished_ago=60)
    dead = seed_job(db, "dead", finished_ago=2 * HOUR)

    assert admin.prune(db, pgq.JobStatus.SUCCEEDED, HOUR, batch_size=2) == 5

    assert job_ids(db) == {recent, dead}
    assert admin.prune(db, "succeeded", HOUR) == 0


@pytest.mark.parametrize(
    ("status", "age", "message"),
    [
        ("queued", 60.0, "only finished jobs can be pruned"),
        ("running", 60.0, "only finished jobs can be pruned"),
        ("finished", 60.0, "unknown status 'finished'"),
        ("succeeded", -1.0, "the age must be >= 0 seconds"),
        ("succeeded", math.nan, "the age must be >= 0 seconds"),
    ],
)
def test_prune_refuses_unfinished_statuses_and_bad_ages_before_touching_the_database(
    db: Conn, status: str, age: float, message: str
) -> None:
    job_id = seed_job(db, "succeeded", finished_ago=2 * HOUR)

    with pytest.raises(pgq.InvalidJobError, match=message):
        admin.prune(db, status, age)

    assert job_ids(db) == {job_id}


def test_plan_prune_counts_each_status_up_to_one_moment_and_deletes_nothing(db: Conn) -> None:
    old = {seed_job(db, status, finished_ago=2 * HOUR) for status in ("dead", "dead", "cancelled")}
    young = seed_job(db, "dead", finished_ago=600)
    row = db.execute("SELECT now() - interval '1 hour'").fetchone()
    assert row is not None

    plan = admin.plan_prune(db, ["dead", pgq.JobStatus.CANCELLED, "succeeded", "dead"], HOUR)

    assert list(plan.jobs.items()) == [
        (pgq.JobStatus.DEAD, 2), (pgq.JobStatus.CANCELLED, 1), (pgq.JobStatus.SUCCEEDED, 0),
    ], "in the order asked, each status once"  # fmt: skip
    assert plan.total == 3
    assert abs((plan.finished_before - row[0]).total_seconds()) < 5
    assert job_ids(db) == old | {young}


def test_prune_as_planned_stops_at_the_counted_moment_however_late_it_runs(db: Conn) -> None:
    seed_job(db, "dead", finished_ago=2.0)
    plan = admin.plan_prune(db, ["dead"], 1.0)
    # Finished after the moment counted to; by the time of the delete it is older than the
    # age too, and a prune by age (admin.prune) would take it. The operator was not asked.
    later = seed_job(db, "dead", finished_ago=0.5)
    db.execute("SELECT pg_sleep(1)")

    assert plan.jobs == {pgq.JobStatus.DEAD: 1}
    assert admin.prune_as_planned(db, plan, batch_size=1) == {pgq.JobStatus.DEAD: 1}
    assert job_ids(db) == {later}


@pytest.mark.parametrize(
    ("statuses", "age", "message"),
    [
        (["dead", "queued"], 60.0, "only finished jobs can be pruned"),
        (["finished"], 60.0, "unknown status 'finished'"),
        ([], 60.0, "say which finished statuses to prune"),
        (42, 60.0, "statuses must be a list of finished statuses, got 42"),
        (["dead"], -1.0, "the age must be >= 0 seconds"),
        (["dead"], math.inf, "the age must be >= 0 seconds"),
    ],
)
def test_plan_prune_refuses_unfinished_statuses_none_and_bad_ages(
    db: Conn, statuses: list[str], age: float, message: str
) -> None:
    with pytest.raises(pgq.InvalidJobError, match=message):
        admin.plan_prune(db, statuses, age)


def test_plan_prune_takes_one_status_as_a_string(db: Conn) -> None:
    seed_job(db, "dead", finished_ago=2 * HOUR)

    assert admin.plan_prune(db, "dead", HOUR).jobs == {pgq.JobStatus.DEAD: 1}


def test_prune_as_planned_refuses_anything_but_a_plan(db: Conn) -> None:
    with pytest.raises(pgq.InvalidJobError, match=r"plan must be a pgq\.admin\.PrunePlan"):
        admin.prune_as_planned(db, {"dead": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        "prune",
        "prune_as_planned",
        "requeue_dead",
    ],
)
def test_a_batch_size_below_one_never_loops_forever(dsn: str, db: Conn, call: str) -> None:
    seed_job(db, "succeeded", finished_ago=2 * HOUR)
    seed_job(db, "dead")

    def work(conn: Conn) -> Any:
        if call == "prune":
            return admin.prune(conn, "succeeded", 0, batch_size=0)
        if call == "prune_as_planned":
            plan = admin.plan_prune(conn, ["succeeded"], 0)
            return admin.prune_as_planned(conn, plan, batch_size=0)
        return admin.requeue_dead(conn, admin.DeadJobFilter(), batch_size=0)

    finished, raised = finishes_within(dsn, 2.0, work)

    assert finished, f"admin.{call}(batch_size=0) was still looping after 2 s"
    assert raised is None or isinstance(raised, pgq.InvalidJobError), raised


# -- what the dashboard and the web API read and do ------------------------------------------


def test_queue_overview_joins_live_numbers_and_dead_jobs_a_dead_only_queue_included(
    db: Conn,
) -> None:
    seed_job(db, queue="emails", due_in=-30)
    seed_job(db, "dead", queue="emails", finished_ago=HOUR)
    newest = seed_job(db, "dead", queue="payments", finished_ago=60)
    seed_job(db, "succeeded", queue="archive")

    overview = {q.queue: q for q in admin.queue_overview(db)}

    assert sorted(overview) == ["emails", "payments"]
    assert (overview["emails"].due, overview["emails"].dead) == (1, 1)
    assert overview["emails"].lag_seconds >= 29
    payments = overview["payments"]
    assert (payments.due, payments.running, payments.lag_seconds, payments.dead) == (0, 0, 0.0, 1)
    assert payments.last_died_at == fetch_job(db, newest)["finished_at"]


def test_list_jobs_pages_by_before_id_without_repeating_or_skipping_a_job(db: Conn) -> None:
    ids = [seed_job(db) for _ in range(7)]

    pages, before = [], None
    while page := admin.list_jobs(db, limit=3, before_id=before):
        pages.append([job.id for job in page])
        before = page[-1].id

    assert pages == [ids[::-1][0:3], ids[::-1][3:6], ids[::-1][6:7]]


def test_list_jobs_search_finds_the_id_the_task_the_args_text_and_the_error_text(
    db: Conn,
) -> None:
    by_task = seed_job(db, task="send_invoice")
    by_args = seed_job(db, args={"email": "ada@example.com"})
    by_error = seed_job(db, "dead", last_error="SMTPTimeout: relay refused")
    seed_job(db, args={"note": "100% sure"})

    def found(text: str) -> list[int]:
        return [job.id for job in admin.list_jobs(db, search=text)]

    assert found("INVOICE") == [by_task]
    assert found("ada@example") == [by_args]
    assert found("smtptimeout") == [by_error]
    assert found(str(by_args)) == [by_args]
    # LIKE's wildcards are searched for as text, not as wildcards.
    assert found("0%") == [by_args + 2]
    assert found("_") == [by_task]


def test_bulk_actions_touch_only_the_jobs_in_their_statuses_and_say_which(db: Conn) -> None:
    dead = seed_job(db, "dead")
    queued = seed_job(db, due_in=HOUR)
    succeeded = seed_job(db, "succeeded")
    everything = [dead, queued, succeeded, 10**12]

    assert admin.count_for_bulk(db, "requeue", everything) == 1
    assert admin.count_for_bulk(db, "delete", everything) == 2
    assert admin.act_on_jobs(db, "retry_now", everything) == [queued]
    assert fetch_job(db, queued)["run_at"] <= datetime.now(UTC)
    assert admin.act_on_jobs(db, "cancel", everything) == [queued]
    assert admin.act_on_jobs(db, "requeue", everything) == [dead]
    assert admin.act_on_jobs(db, "delete", everything) == [queued, succeeded]  # cancelled now
    assert job_statuses(db) == {dead: "queued"}


def test_a_bulk_action_by_filter_acts_on_every_matching_queued_job_page_by_page(
    db: Conn,
) -> None:
    wanted = [seed_job(db, task="resize", queue="images") for _ in range(5)]
    other_task = seed_job(db, task="crop", queue="images")
    other_queue = seed_job(db, task="resize", queue="video")

    cancelled = admin.act_on_queued(
        db, "cancel", admin.QueuedJobFilter(task="resize", queue="images"), batch_size=2
    )

    assert cancelled == wanted
    statuses = job_statuses(db)
    assert (statuses[other_task], statuses[other_queue]) == ("queued", "queued")


BAD_IDS: Any = "12"  # a string: not a list of ids, nor an id


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: admin.act_on_jobs(c, "explode", [1]), "unknown bulk action 'explode'"),
        (lambda c: admin.act_on_jobs(c, "cancel", BAD_IDS), "job ids must be a list"),
        (lambda c: admin.act_on_jobs(c, "cancel", [1, BAD_IDS]), "a job id is an integer"),
        (lambda c: admin.act_on_queued(c, "delete", admin.QueuedJobFilter()), "only cancel"),
        (lambda c: admin.list_jobs(c, before_id=0), "before_id must be an int from 1"),
        (lambda c: admin.activity(c, minutes=0), "minutes must be an int from 1"),
    ],
)
def test_bulk_and_paging_calls_refuse_bad_input_by_name(
    db: Conn, call: Callable[[Conn], Any], message: str
) -> None:
    with pytest.raises(pgq.InvalidJobError, match=message):
        call(db)


def test_activity_counts_each_minutes_finished_jobs_with_a_row_for_every_minute(
    db: Conn,
) -> None:
    seed_job(db, "succeeded", finished_ago=0)
    seed_job(db, "succeeded", finished_ago=0)
    seed_job(db, "dead", finished_ago=0)
    seed_job(db, "succeeded", finished_ago=3 * HOUR)  # outside the window

    minutes = admin.activity(db, minutes=60)

    assert len(minutes) == 60
    assert [m.minute for m in minutes] == sorted(m.minute for m in minutes)
    assert (minutes[-1].succeeded, minutes[-1].dead) == (2, 1)
    assert sum(m.succeeded + m.dead for m in minutes[:-1]) == 0
