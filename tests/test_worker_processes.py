"""Real `pgq work` processes: many workers sharing a queue, signals and graceful shutdown,
and a PostgreSQL restart under a running worker. A worker killed mid-job is
test_rescue.py's; the supervisor of `pgq work --processes` is test_supervisor.py's. All
three use worker_helpers.py, and conftest.py's ``workers`` fixture.

Workers run ``tests.apps.ledger:app``; its handlers write into a ``ledger`` table,
which tells how often each job really ran and on which process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg
import pytest

import pgq
from pgcluster import StopMode, ThrowawayCluster
from pgq.worker.shutdown import DUPLICATE_SIGNAL_SECONDS
from worker_helpers import (
    EXIT_SECONDS,
    REPO_ROOT,
    WorkerProcesses,
    all_succeeded,
    count_where,
    create_ledger,
    enqueue_jobs,
    jobs_by_id,
    ledger_rows,
    listeners,
    status_counts,
    stop,
    wait_until,
    worker_pid_pattern,
)

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
