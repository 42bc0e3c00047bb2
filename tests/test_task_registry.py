"""The fleet's shared knowledge: task defaults that apply however a job is enqueued, and the
list of live workers. Fleet-wide guarantees run real `pgq work` processes
(``tests.apps.registry_app:app``); the registry's own rules run in process.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgq
from apps.registry_app import always_fails
from pgq.metrics import QueueStatsCollector
from pgq.rescue import rescue_stale_jobs
from pgq.tasks import App
from pgq.worker.registration import Registration
from seeding import seed_job
from worker_helpers import REPO_ROOT, WorkerProcesses, scalar, stop, wait_until

APP = "tests.apps.registry_app:app"
# Short leases: a killed worker leaves `pgq workers` within seconds.
LEASE = ["--lease-seconds", "2", "--log-level", "info"]


def pgq_json(*args: str, dsn: str) -> Any:
    """``pgq ARGS --json --dsn DSN`` as an operator runs it, parsed."""
    done = subprocess.run(
        [sys.executable, "-m", "pgq", *args, "--json", "--dsn", dsn], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def enqueue_three_ways(dsn: str, **options: Any) -> list[int]:
    """One always_fails job through each route: Task.enqueue, pgq.enqueue by name, SQL.

    SQL gets every option, NULL when not chosen: NULL means the task's default.
    """
    chosen = {"queue": None, "priority": None, "max_attempts": None, **options}
    with psycopg.connect(dsn) as conn:  # commits at exit
        via_task = always_fails.enqueue(conn, {"n": 1}, **options).id
        by_name = pgq.enqueue(conn, "always_fails", {"n": 2}, **options).id
        row = conn.execute(
            "SELECT id FROM pgq.enqueue('always_fails', '{\"n\": 3}', queue => %(queue)s,"
            " priority => %(priority)s, max_attempts => %(max_attempts)s)",
            chosen,
        ).fetchone()
        assert row is not None
        return [via_task, by_name, row[0]]


def finished(dsn: str, ids: list[int]) -> list[tuple[Any, ...]]:
    """(queue, priority, attempts, max_attempts) of each job, once all are dead; else []."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status::text, queue, priority, attempts, max_attempts FROM pgq.jobs"
            " WHERE id = ANY(%s) ORDER BY id",
            [ids],
        ).fetchall()
    return [row[1:] for row in rows] if all(row[0] == "dead" for row in rows) else []


def registered(dsn: str) -> Callable[[], bool]:
    return lambda: scalar(dsn, "SELECT count(*) FROM pgq.live_workers") > 0


# -- task defaults, however the job came -----------------------------------------------------


@pytest.mark.parametrize("worker_first", [False, True], ids=["enqueued first", "worker first"])
def test_task_defaults_apply_to_every_enqueue_route_with_or_without_a_worker_running(
    dsn: str, workers: WorkerProcesses, worker_first: bool
) -> None:
    # The worker serves only the task's queue: a job left in 'default' would never run.
    if worker_first:
        workers.start(dsn, "--queues", "fragile", *LEASE, app=APP)
        wait_until(registered(dsn), 30, "the worker registered")
    ids = enqueue_three_ways(dsn)
    if not worker_first:
        workers.start(dsn, "--queues", "fragile", *LEASE, app=APP)

    wait_until(lambda: bool(finished(dsn, ids)), 60, "all three jobs dead")
    # The task's queue and priority, and 3 attempts, not 5, for every route.
    assert finished(dsn, ids) == [("fragile", 7, 3, 3)] * 3


def test_values_chosen_at_enqueue_win_over_the_tasks_defaults(
    dsn: str, workers: WorkerProcesses
) -> None:
    workers.start(dsn, "--queues", "fragile,other", *LEASE, app=APP)
    wait_until(registered(dsn), 30, "the worker registered")

    ids = enqueue_three_ways(dsn, queue="other", priority=0, max_attempts=1)

    wait_until(lambda: bool(finished(dsn, ids)), 60, "all three jobs dead")
    assert finished(dsn, ids) == [("other", 0, 1, 1)] * 3


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT args->>'n', queue, priority FROM pgq.jobs ORDER BY (args->>'n')::int"
    ).fetchall()


def app_declaring(queue: str, priority: int, max_attempts: int) -> App:
    app = App()

    @app.task(name="always_fails", queue=queue, priority=priority, max_attempts=max_attempts)
    def handler(n: int = 0) -> None: ...

    return app


def register(conn: psycopg.Connection[Any], app: App, name: str) -> None:
    Registration(
        schema="pgq", name=name, tasks=tuple(app.tasks.values()), queues=None, concurrency=1,
        lease_seconds=30,
    ).register(conn)  # fmt: skip


def test_the_latest_registered_declaration_wins_says_so_and_moves_only_jobs_that_left_it_open(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        register(conn, app_declaring("old", 1, 3), "worker-v1")
        pgq.enqueue(conn, "always_fails", {"n": 1})
        pgq.enqueue(conn, "always_fails", {"n": 2}, queue="chosen")
        pgq.enqueue(conn, "always_fails", {"n": 3}, priority=4)
        assert rows(conn) == [("1", "old", 1), ("2", "chosen", 1), ("3", "old", 4)]

        with caplog.at_level(logging.WARNING, logger="pgq.worker"):
            register(conn, app_declaring("new", 2, 8), "worker-v2")

        assert rows(conn) == [("1", "new", 2), ("2", "chosen", 2), ("3", "new", 4)]
        stored = conn.execute(
            "SELECT queue, priority, max_attempts, registered_by FROM pgq.task_defaults"
        ).fetchall()
        assert stored == [("new", 2, 8, "worker-v2")]
    message = caplog.text
    assert "worker-v1" in message and "'old' -> 'new'" in message and "3 -> 8" in message


def test_an_unchanged_declaration_logs_nothing_and_moves_nothing(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        register(conn, app_declaring("q", 0, 3), "worker-a")
        conn.execute("UPDATE pgq.tasks SET registered_at = now() - interval '1 hour'")
        with caplog.at_level(logging.INFO, logger="pgq.worker"):
            register(conn, app_declaring("q", 0, 3), "worker-b")
        by, fresh = conn.execute(
            "SELECT registered_by, registered_at > now() - interval '1 minute' FROM pgq.tasks"
        ).fetchone() or (None, None)
    assert (by, fresh) == ("worker-b", True)
    assert caplog.text == ""


# -- live workers ------------------------------------------------------------------------------


@pytest.mark.slow
def test_pgq_workers_lists_two_running_workers_and_drops_a_killed_one_after_its_lease(
    dsn: str, workers: WorkerProcesses
) -> None:
    first = workers.start(dsn, *LEASE, app=APP)
    second = workers.start(dsn, "--queues", "fragile", "--concurrency", "3", *LEASE, app=APP)

    def listed() -> dict[int, dict[str, Any]]:
        return {worker["pid"]: worker for worker in pgq_json("workers", dsn=dsn)}

    wait_until(lambda: len(listed()) == 2, 30, lambda: f"two workers listed: {listed()}")
    both = listed()
    assert set(both) == {first.pid, second.pid}
    assert both[second.pid]["queues"] == ["fragile"] and both[second.pid]["concurrency"] == 3
    assert both[first.pid]["queues"] is None
    assert both[first.pid]["tasks"] == ["always_fails", "noop"]
    assert both[first.pid]["version"] == pgq.__version__

    second.kill()
    killed_at = time.monotonic()
    wait_until(lambda: set(listed()) == {first.pid}, 15, "the killed worker dropped")
    # Gone once its 2 s lease ran out: not before, and not much after.
    assert 1.0 < time.monotonic() - killed_at < 8

    assert stop(first) == 0
    assert listed() == {}, "a clean stop leaves the list at once"


# -- jobs no live worker serves ----------------------------------------------------------------


def test_a_job_for_a_misspelt_task_is_named_by_pgq_stats_within_seconds(
    dsn: str, workers: WorkerProcesses
) -> None:
    workers.start(dsn, *LEASE, app=APP)
    wait_until(registered(dsn), 30, "the worker registered")
    with psycopg.connect(dsn) as conn:
        pgq.enqueue(conn, "alwys_fails", {"n": 1})  # the typo
        pgq.enqueue(conn, "noop")  # served: never listed
    enqueued_at = time.monotonic()

    def unserved() -> list[tuple[str, str, int]]:
        found = pgq_json("stats", dsn=dsn)["unserved"]
        return [(row["task"], row["queue"], row["due"]) for row in found]

    wait_until(lambda: unserved() == [("alwys_fails", "default", 1)], 10, "the typo named")
    assert time.monotonic() - enqueued_at < 5


def test_the_unserved_jobs_metric_counts_jobs_no_live_worker_serves(conn: Any) -> None:
    pgq.enqueue(conn, "nobody_runs_this", queue="q1")
    pgq.enqueue(conn, "nobody_runs_this", queue="q1", delay=3600)
    conn.commit()
    dsn = conn.info.dsn
    collector = QueueStatsCollector(dsn, "pgq", max_age_seconds=0.1)

    samples = {
        (sample.labels["task"], sample.labels["queue"]): sample.value
        for family in collector.collect()
        if family.name == "pgq_unserved_jobs"
        for sample in family.samples
    }

    assert samples == {("nobody_runs_this", "q1"): 2}


def test_pgq_tasks_lists_the_registry(dsn: str, workers: WorkerProcesses) -> None:
    worker = workers.start(dsn, *LEASE, app=APP)
    wait_until(registered(dsn), 30, "the worker registered")

    found = {task["task"]: task for task in pgq_json("tasks", dsn=dsn)}

    assert set(found) == {"always_fails", "noop"}
    assert (found["always_fails"]["queue"], found["always_fails"]["priority"]) == ("fragile", 7)
    assert found["always_fails"]["max_attempts"] == 3
    assert found["noop"]["registered_by"].split(":")[1] == str(worker.pid)
    worker.signal(signal.SIGTERM)


def test_rescue_waits_as_the_tasks_registered_retry_policy_says_though_its_worker_is_gone(
    dsn: str,
) -> None:
    slow_app = App()

    @slow_app.task(name="slow_backoff", retry=pgq.Retry(base_seconds=1000, cap_seconds=2000))
    def slow_backoff() -> None: ...

    with psycopg.connect(dsn, autocommit=True) as conn:
        register(conn, slow_app, "worker-that-knows-it")
        registered = seed_job(conn, "running", task="slow_backoff", lease_in=-60, attempts=1)
        unknown = seed_job(conn, "running", task="nobody_registered", lease_in=-60, attempts=1)

        rescued = rescue_stale_jobs(conn, "pgq")  # by a worker without either task

        waits: dict[int, Any] = dict(
            conn.execute("SELECT id, extract(epoch FROM run_at - now()) FROM pgq.jobs").fetchall()
        )
    assert {job.id for job in rescued} == {registered, unknown}
    # Attempt 1 failed: half to all of the base. 500-1000 s registered; 0.5-1 s by default.
    assert 490 <= float(waits[registered]) <= 1000
    assert float(waits[unknown]) <= 1
