"""Rescue (pgq.rescue): a running job whose lease expired goes back to the queue after the
default policy's backoff, or to dead when it has no attempt left; a live lease is never
touched, and two rescuers at once never rescue the same job twice.

Most tests seed running jobs straight into pgq.jobs (tests/seeding.py) and call
``rescue_stale_jobs`` directly, as a worker's maintenance thread does. The last two kill
real `pgq work` processes and watch the fleet rescue their jobs.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import pgq
from pgq.queries import query
from pgq.rescue import RESCUE_BATCH, RescuedJob, rescue_stale_jobs
from seeding import WORKER_NAME, Conn, fetch_job, seed_job
from worker_helpers import (
    WorkerProcesses,
    all_succeeded,
    count_where,
    create_ledger,
    enqueue_jobs,
    jobs_by_id,
    ledger_rows,
    status_counts,
    stop,
    wait_until,
    worker_pid_pattern,
)


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    """Autocommit, as rescue_stale_jobs requires: each batch is a transaction of its own."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def delay_seconds(db: Conn, job_id: int) -> float:
    """How long after its rescue the job is due again (run_at and the error's time are
    the same statement's now())."""
    row = db.execute(
        "SELECT extract(epoch FROM run_at - (errors->-1->>'at')::timestamptz)"
        " FROM pgq.jobs WHERE id = %s",
        [job_id],
    ).fetchone()
    assert row is not None
    return float(row[0])


def all_rows(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM pgq.jobs ORDER BY id").fetchall()


# -- what becomes of a stale job ----------------------------------------------------------------


# DEFAULT_RETRY's ceilings (1 s after the first attempt, doubling, at most an hour) by the
# number of attempts made: a rescued job waits between half the ceiling and the ceiling.
DEFAULT_CEILINGS = {1: 1.0, 2: 2.0, 4: 8.0, 12: 2048.0, 13: 3600.0, 19: 3600.0}


def test_a_job_whose_lease_expired_is_queued_again_after_the_default_backoff(db: Conn) -> None:
    ids = {
        attempts: seed_job(db, "running", lease_in=-1, attempts=attempts, max_attempts=20)
        for attempts in DEFAULT_CEILINGS
    }

    rescued = rescue_stale_jobs(db, "pgq")

    assert set(rescued) == {
        RescuedJob(job_id, "task", "default", attempts, "queued")
        for attempts, job_id in ids.items()
    }
    for attempts, job_id in ids.items():
        job = fetch_job(db, job_id)
        assert job["status"] == "queued"
        assert job["attempts"] == attempts, "the lost attempt stays counted"
        ceiling = DEFAULT_CEILINGS[attempts]
        assert ceiling / 2 <= delay_seconds(db, job_id) <= ceiling, attempts
        assert job["locked_by"] is None and job["locked_until"] is None
        assert job["finished_at"] is None
        assert job["last_error"].startswith(f"worker lost: {WORKER_NAME} stopped renewing")
        (entry,) = job["errors"]
        assert (entry["attempt"], entry["worker"]) == (attempts, WORKER_NAME)
        assert entry["error"].startswith("worker lost: lease expired at ")


def test_a_stale_job_that_used_its_last_attempt_ends_dead(db: Conn) -> None:
    # The only attempt, the last of three, and past the last (max_attempts lowered by hand).
    ids = {
        (attempts, max_attempts): seed_job(
            db, "running", lease_in=-1, attempts=attempts, max_attempts=max_attempts
        )
        for attempts, max_attempts in [(1, 1), (3, 3), (4, 3)]
    }
    run_at = {job_id: fetch_job(db, job_id)["run_at"] for job_id in ids.values()}

    rescued = rescue_stale_jobs(db, "pgq")

    assert set(rescued) == {
        RescuedJob(job_id, "task", "default", attempts, "dead")
        for (attempts, _), job_id in ids.items()
    }
    for (attempts, _), job_id in ids.items():
        job = fetch_job(db, job_id)
        assert job["status"] == "dead"
        assert job["attempts"] == attempts
        assert job["finished_at"] is not None and job["finished_at"] <= job["db_now"]
        assert job["run_at"] == run_at[job_id], "no next attempt is scheduled"
        assert job["locked_by"] is None and job["locked_until"] is None
        assert job["last_error"].startswith("worker lost: ")
        assert [entry["attempt"] for entry in job["errors"]] == [attempts]


def test_a_running_job_with_no_attempt_counted_is_rescued_as_its_first(db: Conn) -> None:
    # claim_jobs always counts the attempt; an operator's UPDATE may not have.
    job_id = seed_job(db, "running", lease_in=-1, attempts=0, max_attempts=5)

    rescued = rescue_stale_jobs(db, "pgq")

    assert rescued == [RescuedJob(job_id, "task", "default", 0, "queued")]
    assert 0.5 <= delay_seconds(db, job_id) <= 1.0


def test_a_job_at_zero_of_one_attempts_is_queued_not_killed(db: Conn) -> None:
    job_id = seed_job(db, "running", lease_in=-1, attempts=0, max_attempts=1)

    assert rescue_stale_jobs(db, "pgq") == [RescuedJob(job_id, "task", "default", 0, "queued")]


def test_the_write_leaves_alone_a_job_that_changed_since_it_was_read(db: Conn) -> None:
    # rescue_jobs checks each job again under its lock: the delay was decided for what
    # find_stale_jobs read, so a renewed lease or a moved attempt count means hands off.
    renewed = seed_job(db, "running", lease_in=30, attempts=1)
    reclaimed = seed_job(db, "running", lease_in=-1, attempts=2)
    finished = seed_job(db, "succeeded", attempts=1)
    before = all_rows(db)
    decided = {
        "ids": [renewed, reclaimed, finished],
        "attempts": [1, 1, 1],  # reclaimed was read at attempt 1: it is at 2 now
        "max_attempts": [5, 5, 5],
        "delays_seconds": [1.0, 1.0, None],
    }

    written = db.execute(query("rescue_jobs", "pgq"), decided).fetchall()

    assert written == []
    assert all_rows(db) == before


def test_jobs_whose_lease_has_not_expired_are_left_alone(db: Conn) -> None:
    for status in ("queued", "succeeded", "dead", "cancelled"):
        seed_job(db, status, due_in=-60)
    seed_job(db, "running", lease_in=30)
    seed_job(db, "running", lease_in=1)
    before = all_rows(db)

    assert rescue_stale_jobs(db, "pgq") == []

    assert all_rows(db) == before


# -- many stale jobs, and many rescuers ---------------------------------------------------------


def test_one_rescue_call_rescues_every_stale_job_however_many_batches_it_takes(db: Conn) -> None:
    count = 2 * RESCUE_BATCH + 1  # two full batches and one short one
    ids = [
        row[0]
        for row in db.execute(
            "INSERT INTO pgq.jobs (task, status, attempts, started_at, locked_until, locked_by,"
            "                      lease_token)"
            " SELECT 'task', 'running', 1, now() - interval '1 minute',"
            "        now() - n * interval '1 millisecond', 'gone-worker', gen_random_uuid()"
            " FROM generate_series(1, %s) AS n"
            " RETURNING id",
            [count],
        )
    ]
    seed_job(db, "running", lease_in=30)  # one live lease among them

    rescued = rescue_stale_jobs(db, "pgq")

    assert sorted(job.id for job in rescued) == sorted(ids)
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE status = 'running'").fetchone() == (1,)
    counts = db.execute(
        "SELECT jsonb_array_length(errors), count(*) FROM pgq.jobs WHERE id = ANY(%s) GROUP BY 1",
        [ids],
    ).fetchall()
    assert counts == [(1, count)], "each job rescued once"


PAUSED = "paused rescuer"
PAUSE_LOCK = 4242


def test_two_rescuers_at_once_never_rescue_the_same_job_twice(dsn: str, db: Conn) -> None:
    """The first rescuer is paused inside its rescue_jobs statement, holding the rows it has
    locked, while the second runs: SKIP LOCKED keeps the second off those rows (it never
    waits), every job is rescued by exactly one of them, and nothing is left after."""
    # Scaffolding in the database: the paused rescuer's UPDATE waits on an advisory lock
    # that this test holds. Every other connection's UPDATE goes through.
    db.execute(
        "CREATE FUNCTION public.pause_rescuer() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN"
        f"   IF current_setting('application_name') = '{PAUSED}' THEN"
        f"     PERFORM pg_advisory_xact_lock({PAUSE_LOCK});"
        "   END IF;"
        "   RETURN NEW;"
        " END $$"
    )
    db.execute(
        "CREATE TRIGGER pause_rescuer BEFORE UPDATE ON pgq.jobs"
        " FOR EACH ROW EXECUTE FUNCTION public.pause_rescuer()"
    )
    first_stale = {seed_job(db, "running", lease_in=-60), seed_job(db, "running", lease_in=-50)}
    later_stale = {seed_job(db, "running", lease_in=30), seed_job(db, "running", lease_in=30)}
    db.execute("SELECT pg_advisory_lock(%s)", [PAUSE_LOCK])

    paused = psycopg.connect(dsn, autocommit=True, application_name=PAUSED)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        first = pool.submit(rescue_stale_jobs, paused, "pgq")

        def first_is_paused() -> bool:
            row = db.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND wait_event = 'advisory'",
                [PAUSED],
            ).fetchone()
            return row == (1,)

        wait_until(first_is_paused, 10, "the first rescuer waits inside its batch")
        # Meanwhile two more leases expire; the second rescuer runs while the first holds
        # its rows. A lock wait would mean it did not skip them: fail rather than hang.
        db.execute(
            "UPDATE pgq.jobs SET locked_until = now() - interval '1 second' WHERE id = ANY(%s)",
            [list(later_stale)],
        )
        db.execute("SET lock_timeout = '5s'")
        second = rescue_stale_jobs(db, "pgq")
        db.execute("SELECT pg_advisory_unlock(%s)", [PAUSE_LOCK])
        first_rescued = first.result(timeout=10)
    finally:
        db.execute("SELECT pg_advisory_unlock_all()")
        pool.shutdown(wait=True)
        paused.close()

    by_first, by_second = {job.id for job in first_rescued}, {job.id for job in second}
    assert by_first, "the paused rescuer kept the row it was paused on"
    assert by_first.isdisjoint(by_second), "no job rescued by both"
    assert by_first | by_second == first_stale | later_stale
    assert later_stale <= by_second
    assert rescue_stale_jobs(db, "pgq") == []
    for job_id in first_stale | later_stale:
        job = fetch_job(db, job_id)
        assert job["status"] == "queued"
        assert len(job["errors"]) == 1, f"job {job_id} rescued once"


# -- real worker processes, killed --------------------------------------------------------------


@pytest.mark.slow
def test_jobs_of_a_killed_worker_come_back_after_the_lease_and_finish_elsewhere(
    dsn: str, workers: WorkerProcesses
) -> None:
    create_ledger(dsn)
    options = ["--concurrency", "4", "--lease-seconds", "2", "--poll-seconds", "0.2"]
    ids = enqueue_jobs(dsn, [pgq.JobSpec("record_after", {"seconds": 1.0}) for _ in range(8)])
    doomed = workers.start(dsn, *options)
    wait_until(
        lambda: sum(pid == doomed.pid for _, _, pid in ledger_rows(dsn, "start")) == 4, 30,
        "the first worker is in the middle of four jobs",
    )  # fmt: skip
    doomed.kill()  # SIGKILL: no hand back, no outcome written
    with psycopg.connect(dsn, autocommit=True) as conn:
        killed = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM pgq.jobs WHERE status = 'running' AND locked_by LIKE %s",
                [worker_pid_pattern(doomed)],
            )
        }
    assert killed, "the killed worker held jobs"

    survivor = workers.start(dsn, *options)
    wait_until(all_succeeded(dsn, len(ids)), 45, lambda: f"all succeeded: {status_counts(dsn)}")
    assert stop(survivor) == 0

    jobs = jobs_by_id(dsn)
    done = ledger_rows(dsn, "done")
    for job_id in ids:
        job = jobs[job_id]
        assert {j for j, _, _ in done} >= {job_id}, f"job {job_id} finished its work"
        if job_id in killed:
            assert job["attempts"] == 2, "the crash used up an attempt"
            assert len(job["errors"]) == 1
            assert job["errors"][0]["error"].startswith("worker lost: lease expired")
            assert f":{doomed.pid}:" in job["errors"][0]["worker"]
            assert job["last_error"].startswith("worker lost: ")
            assert (job_id, 2, survivor.pid) in done, "finished by the other worker"
        else:
            assert job["attempts"] == 1 and job["errors"] == []


@pytest.mark.slow
def test_poison_job_that_kills_its_process_ends_dead_while_other_jobs_succeed(
    dsn: str, workers: WorkerProcesses
) -> None:
    create_ledger(dsn)
    poison_id = enqueue_jobs(dsn, [pgq.JobSpec("poison", max_attempts=3)])[0]
    # Jobs claimed in the same batch as the poison die with it: give them attempts to spare.
    others = enqueue_jobs(
        dsn,
        [pgq.JobSpec("record_after", {"seconds": 0.3}, max_attempts=10) for _ in range(24)],
    )
    supervisor = workers.start(
        dsn, "--processes", "2", "--concurrency", "2", "--lease-seconds", "1",
        "--poll-seconds", "0.2",
    )  # fmt: skip

    def settled() -> bool:
        poison_dead = count_where(dsn, "id = %s AND status = 'dead'", [poison_id]) == 1
        succeeded = count_where(dsn, "id = ANY(%s) AND status = 'succeeded'", [others])
        return poison_dead and succeeded == len(others)

    wait_until(settled, 60, lambda: f"poison dead, others succeeded: {status_counts(dsn)}")
    assert supervisor.running(), "the supervisor outlives its children"
    assert stop(supervisor) == 0

    jobs = jobs_by_id(dsn)
    poison = jobs[poison_id]
    assert poison["attempts"] == 3
    assert poison["finished_at"] is not None
    assert poison["last_error"].startswith("worker lost: ")
    assert [entry["attempt"] for entry in poison["errors"]] == [1, 2, 3]
    assert all(entry["error"].startswith("worker lost") for entry in poison["errors"])
    assert min(jobs[i]["finished_at"] for i in others) < poison["finished_at"], (
        "other jobs succeeded while the poison was still being retried"
    )
    done_jobs = {job_id for job_id, _, _ in ledger_rows(dsn, "done")}
    assert done_jobs >= set(others)
    assert "exited with code 1; restarting" in supervisor.log()
