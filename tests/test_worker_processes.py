"""Real `pgq work` processes: many workers sharing a queue, crashes, the supervisor, signals,
and a PostgreSQL restart under a running worker.

Workers run ``tests.apps.ledger:app``; its handlers write into a ``ledger`` table,
which tells how often each job really ran and on which process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgq
from pgcluster import StopMode, ThrowawayCluster
from pgq.worker.shutdown import DUPLICATE_SIGNAL_SECONDS
from worker_helpers import (
    REPO_ROOT,
    WorkerProcess,
    WorkerProcesses,
    child_pids,
    create_ledger,
    pid_alive,
    scalar,
    status_counts,
    wait_until,
)

EXIT_SECONDS = 30.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Starts `pgq work` subprocesses; kills them all at teardown and prints their logs."""
    procs = WorkerProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()
        print(procs.logs())  # shown by pytest when the test failed


def enqueue_jobs(dsn: str, specs: list[pgq.JobSpec]) -> list[int]:
    with psycopg.connect(dsn) as conn:  # commits at exit
        return pgq.enqueue_many(conn, specs)


def jobs_by_id(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT *, status::text AS status FROM pgq.jobs").fetchall()
    return {row["id"]: row for row in rows}


def ledger_rows(dsn: str, event: str) -> list[tuple[int, int, int]]:
    """(job id, attempt, pid) of every ledger row for ``event``, oldest first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT job_id, attempt, pid FROM ledger WHERE event = %s ORDER BY at", [event]
        ).fetchall()
    return [(int(a), int(b), int(c)) for a, b, c in rows]


def count_where(dsn: str, condition: str, params: list[Any] | None = None) -> int:
    return int(scalar(dsn, f"SELECT count(*) FROM pgq.jobs WHERE {condition}", params))  # noqa: S608


def listeners(dsn: str) -> int:
    return int(
        scalar(
            dsn,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN %%'",
        )
    )


def all_succeeded(dsn: str, total: int) -> Callable[[], bool]:
    def check() -> bool:
        return status_counts(dsn).get("succeeded", 0) == total

    return check


def stop(worker: WorkerProcess, signum: int = signal.SIGTERM) -> int:
    worker.signal(signum)
    return worker.wait(EXIT_SECONDS)


def worker_pid_pattern(worker: WorkerProcess | int) -> str:
    """A LIKE pattern for ``locked_by`` (``host:pid:random``) of this worker process."""
    pid = worker if isinstance(worker, int) else worker.pid
    return f"%:{pid}:%"


# -- many workers, one queue ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["three pgq work commands", "pgq work --processes 3"])
def test_every_job_succeeds_exactly_once_across_three_worker_processes(
    dsn: str, workers: WorkerProcesses, layout: str
) -> None:
    total = 5_000
    create_ledger(dsn)
    options = ["--concurrency", "8", "--log-level", "warning"]
    if layout == "three pgq work commands":
        for _ in range(3):
            workers.start(dsn, *options)
    else:
        workers.start(dsn, "--processes", "3", *options)
    # All three wait on LISTEN, so they race for the jobs from the first one on.
    wait_until(lambda: listeners(dsn) == 3, 30, "three workers listening")

    ids = enqueue_jobs(dsn, [pgq.JobSpec("record") for _ in range(total)])
    assert len(ids) == total
    wait_until(
        all_succeeded(dsn, total), 90, lambda: f"all jobs succeeded; now {status_counts(dsn)}",
        interval=0.5,
    )  # fmt: skip
    for worker in workers.started:
        assert stop(worker) == 0

    done = ledger_rows(dsn, "done")
    runs_per_job: dict[int, int] = {}
    for job_id, _, _ in done:
        runs_per_job[job_id] = runs_per_job.get(job_id, 0) + 1
    assert set(runs_per_job) == set(ids)
    assert [job for job, runs in runs_per_job.items() if runs != 1] == []
    assert {attempt for _, attempt, _ in done} == {1}
    assert len({pid for _, _, pid in done}) == 3, "all three processes took jobs"
    assert status_counts(dsn) == {"succeeded": total}
    assert count_where(dsn, "attempts <> 1 OR errors <> '[]' OR finished_at IS NULL") == 0


# -- crashes --------------------------------------------------------------------------------


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


# -- the supervisor ---------------------------------------------------------------------------


@pytest.mark.slow
def test_supervisor_restarts_a_killed_child_and_stops_all_children_on_sigterm(
    dsn: str, workers: WorkerProcesses
) -> None:
    create_ledger(dsn)
    supervisor = workers.start(
        dsn, "--processes", "2", "--concurrency", "4", "--lease-seconds", "2",
        "--poll-seconds", "0.2",
    )  # fmt: skip
    wait_until(lambda: len(child_pids(supervisor.pid)) == 2, 20, "two children")
    wait_until(lambda: listeners(dsn) == 2, 30, "both children listening")
    first_children = child_pids(supervisor.pid)
    victim = min(first_children)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = child_pids(supervisor.pid)
        return len(now) == 2 and victim not in now

    wait_until(replaced, 20, lambda: f"a new child; children now {child_pids(supervisor.pid)}")
    (newcomer,) = child_pids(supervisor.pid) - first_children
    wait_until(lambda: listeners(dsn) == 2, 30, "the new child listening")

    ids = enqueue_jobs(dsn, [pgq.JobSpec("record_after", {"seconds": 0.5}) for _ in range(16)])
    wait_until(all_succeeded(dsn, len(ids)), 30, lambda: f"jobs flow: {status_counts(dsn)}")
    assert newcomer in {pid for _, _, pid in ledger_rows(dsn, "done")}, "the new child works"

    children = child_pids(supervisor.pid)
    assert stop(supervisor) == 0
    assert not any(pid_alive(pid) for pid in children), "every child stopped"
    assert "exited with code -9; restarting" in supervisor.log()


@pytest.mark.slow
def test_ctrl_c_to_the_supervisors_process_group_still_shuts_down_gracefully(
    dsn: str, workers: WorkerProcesses
) -> None:
    """A terminal's Ctrl-C (or systemd's control-group SIGTERM) signals every process."""
    create_ledger(dsn)
    supervisor = workers.start(
        dsn, "--processes", "2", "--concurrency", "2", "--shutdown-grace-seconds", "10",
        "--lease-seconds", "30",
    )  # fmt: skip
    wait_until(lambda: listeners(dsn) == 2, 30, "both children listening")
    ids = enqueue_jobs(dsn, [pgq.JobSpec("record_after", {"seconds": 2.0}) for _ in range(2)])
    wait_until(lambda: len(ledger_rows(dsn, "start")) == 2, 20, "both jobs started")

    supervisor.signal_group(signal.SIGINT)
    assert supervisor.wait(EXIT_SECONDS) == 0
    # Shorter than the grace: they finish instead of being cut off.
    assert status_counts(dsn) == {"succeeded": 2}, supervisor.log()
    assert sorted(job_id for job_id, _, _ in ledger_rows(dsn, "done")) == sorted(ids)


# -- signals and shutdown ---------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_finishes_short_jobs_and_hands_back_long_ones_to_the_next_worker(
    dsn: str, workers: WorkerProcesses
) -> None:
    create_ledger(dsn)
    grace_seconds = 3.0
    options = ["--concurrency", "4", "--lease-seconds", "5", "--poll-seconds", "0.2"]
    first = workers.start(dsn, *options, "--shutdown-grace-seconds", str(grace_seconds))
    short = enqueue_jobs(dsn, [pgq.JobSpec("record_after", {"seconds": 1.0}) for _ in range(2)])
    long = enqueue_jobs(
        dsn,
        [
            pgq.JobSpec("slow_first_time", {"seconds": 60}),  # a thread: cannot be cancelled
            pgq.JobSpec("slow_first_time_async", {"seconds": 60}),
        ],
    )
    wait_until(lambda: len(ledger_rows(dsn, "start")) == 4, 30, "all four jobs started")

    signalled = time.monotonic()
    assert stop(first) == 0
    took = time.monotonic() - signalled
    assert grace_seconds - 0.5 <= took < grace_seconds + 10, took

    jobs = jobs_by_id(dsn)
    for job_id in short:
        assert jobs[job_id]["status"] == "succeeded" and jobs[job_id]["attempts"] == 1
    for job_id in long:
        job = jobs[job_id]
        assert job["status"] == "queued", "handed back"
        assert job["attempts"] == 0, "the handed-back attempt is refunded"
        assert job["locked_by"] is None and job["errors"] == []
    assert count_where(dsn, "id = ANY(%s) AND run_at <= now()", [long]) == 2, "due at once"

    second = workers.start(dsn, *options)
    wait_until(all_succeeded(dsn, 4), 30, lambda: f"all succeeded: {status_counts(dsn)}")
    assert stop(second) == 0
    jobs = jobs_by_id(dsn)
    done = ledger_rows(dsn, "done")
    for job_id in long:
        assert jobs[job_id]["attempts"] == 1
        assert [(j, pid) for j, _, pid in done if j == job_id] == [(job_id, second.pid)]


@pytest.mark.slow
def test_second_sigterm_exits_at_once_and_leases_return_the_jobs_later(
    dsn: str, workers: WorkerProcesses
) -> None:
    create_ledger(dsn)
    options = ["--concurrency", "4", "--lease-seconds", "2", "--poll-seconds", "0.2"]
    first = workers.start(dsn, *options, "--shutdown-grace-seconds", "60")
    ids = enqueue_jobs(
        dsn,
        [
            pgq.JobSpec("slow_first_time", {"seconds": 60}),
            pgq.JobSpec("slow_first_time_async", {"seconds": 60}),
        ],
    )
    wait_until(lambda: len(ledger_rows(dsn, "start")) == 2, 30, "both jobs started")

    first.signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: stopping" in first.log(), 10, "the first SIGTERM was handled")
    # A repeat within DUPLICATE_SIGNAL_SECONDS counts as the same request (a process
    # group's copy of it): an operator's second signal comes later.
    time.sleep(DUPLICATE_SIGNAL_SECONDS + 0.5)
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    code = first.wait(EXIT_SECONDS)
    assert time.monotonic() - signalled < 5, "the second signal does not wait for the grace"
    assert code != 0
    abandoned = count_where(
        dsn, "status = 'running' AND locked_by LIKE %s", [worker_pid_pattern(first)]
    )
    assert abandoned == 2, "still leased to the worker that left"

    second = workers.start(dsn, *options)
    wait_until(all_succeeded(dsn, 2), 30, lambda: f"rescued and finished: {status_counts(dsn)}")
    assert stop(second) == 0
    jobs = jobs_by_id(dsn)
    for job_id in ids:
        assert jobs[job_id]["attempts"] == 2, "the abandoned attempt counts, like a crash"
        assert jobs[job_id]["errors"][0]["error"].startswith("worker lost")


# -- the database goes away -------------------------------------------------------------------


@pytest.mark.slow
def test_worker_survives_postgres_restarts_and_finishes_every_job(
    throwaway_cluster: ThrowawayCluster, workers: WorkerProcesses
) -> None:
    cluster = throwaway_cluster
    dsn = cluster.dsn()
    migrated = subprocess.run(
        [sys.executable, "-m", "pgq", "migrate", "--dsn", dsn],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    create_ledger(dsn)
    total = 2_000
    ids = enqueue_jobs(
        dsn, [pgq.JobSpec("record", {"spin_ms": 4}, max_attempts=50) for _ in range(total)]
    )
    worker = workers.start(
        dsn, "--concurrency", "8", "--lease-seconds", "3", "--poll-seconds", "0.2"
    )

    def succeeded_at_least(count: int) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return status_counts(dsn).get("succeeded", 0) >= count
            except psycopg.OperationalError:
                return False  # the server is still coming back

        return check

    restarts: list[tuple[StopMode, int]] = [("fast", total // 5), ("immediate", total // 2)]
    for mode, before in restarts:
        wait_until(succeeded_at_least(before), 60, f"{before} jobs done before the {mode} restart")
        cluster.restart(mode)
        assert worker.running(), f"the worker outlived the {mode} restart"
    wait_until(succeeded_at_least(total), 90, "every job done after the restarts", interval=0.5)
    assert worker.running()
    assert stop(worker) == 0

    log = worker.log()
    assert "unreachable" in log or "connection lost" in log or "heartbeat failed" in log, log
    assert status_counts(dsn) == {"succeeded": total}
    done_jobs = {job_id for job_id, _, _ in ledger_rows(dsn, "done")}
    assert done_jobs == set(ids), "every job ran to the end at least once"
