"""`pgq work --metrics-port`: Prometheus metrics and /health of a real worker process, and
`--log-format json`.

Most tests share one worker run (module fixture ``finished_run``): a known set of
jobs from tests/apps/metrics_app.py whose outcomes are fixed in advance, plus
jobs of a task no worker knows, which stay due. The counters it serves are
checked against what the jobs table says happened.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

import pgq
import pgq.migrate
from pgcluster import ThrowawayCluster, free_port
from worker_helpers import WorkerProcess, WorkerProcesses, status_counts, wait_until

METRICS_APP = "tests.apps.metrics_app:app"
FAST = ["--poll-seconds", "0.2"]
DEADLINE = 30.0

# What the shared run enqueues: (task, queue, how many). Outcomes, by the app's design:
# succeed: succeeds at once; fail_once: fails, then succeeds; always_fail: fails twice, dead.
KNOWN_JOBS = [
    ("succeed", "default", 3),
    ("succeed", "emails", 2),
    ("fail_once", "emails", 2),
    ("always_fail", "default", 2),
]
ORPHANS = 3  # jobs of a task no worker knows, in their own queue: due forever

# (task, queue) -> (started, succeeded, retried, dead) that KNOWN_JOBS must produce.
EXPECTED_COUNTS = {
    ("succeed", "default"): (3, 3, 0, 0),
    ("succeed", "emails"): (2, 2, 0, 0),
    ("fail_once", "emails"): (4, 2, 2, 0),
    ("always_fail", "default"): (4, 0, 2, 2),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """Every sample on /metrics, by (sample name, labels)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def enqueue(dsn: str, specs: list[pgq.JobSpec]) -> list[int]:
    with psycopg.connect(dsn) as conn:  # commits at exit
        return pgq.enqueue_many(conn, specs)


def jobs_table(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute("SELECT *, status::text AS status FROM pgq.jobs ORDER BY id").fetchall()


def stop(worker: WorkerProcess) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time."""
    if worker.running():
        worker.signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except Exception:
            worker.kill()


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine other than 127.x, or None if it has none."""
    candidates: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # a UDP "connect" sends nothing: it picks a route
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    for address in candidates:
        if address.startswith("127.") or address == "0.0.0.0":
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((address, 0))  # only this machine's own addresses can be bound
        except OSError:
            continue
        return address
    return None


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()
        print(procs.logs())  # shown by pytest when the test failed


@dataclass
class Run:
    dsn: str
    port: int
    worker: WorkerProcess


@pytest.fixture(scope="module")
def finished_run(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One worker with --metrics-port and JSON logs that has run every known job; still up."""
    specs = [
        pgq.JobSpec(task, queue=queue, max_attempts=2 if task == "always_fail" else 5)
        for task, queue, count in KNOWN_JOBS
        for _ in range(count)
    ]
    enqueue(module_dsn, specs + [pgq.JobSpec("not_served", queue="orphans")] * ORPHANS)
    procs = WorkerProcesses(tmp_path_factory.mktemp("metrics-run"))
    port = free_port()
    worker = procs.start(
        module_dsn, "--metrics-port", str(port), "--log-format", "json", *FAST, app=METRICS_APP
    )
    try:
        total = sum(count for _, _, count in KNOWN_JOBS)

        def settled() -> bool:
            counts = status_counts(module_dsn)
            return counts.get("succeeded", 0) + counts.get("dead", 0) == total

        wait_until(settled, DEADLINE, lambda: f"every job finished; {status_counts(module_dsn)}")
        wait_until(lambda: "metrics on http" in worker.log(), DEADLINE, "metrics server up")

        def counted() -> bool:
            samples = scrape(port)
            return total == sum(
                v for (name, _), v in samples.items()
                if name in ("pgq_jobs_succeeded_total", "pgq_jobs_dead_total")
            )  # fmt: skip

        # The counters may move just after the table does (or before): wait for both.
        wait_until(counted, DEADLINE, lambda: f"outcomes counted: {scrape(port)}")
        yield Run(module_dsn, port, worker)
    finally:
        stop(worker)
        procs.kill_all()
        print(procs.logs())


# -- the shared run -------------------------------------------------------------------------


def test_job_counters_per_task_and_queue_match_what_the_jobs_table_recorded(
    finished_run: Run,
) -> None:
    samples = scrape(finished_run.port)
    table: dict[tuple[str, str], list[int]] = {}
    for job in jobs_table(finished_run.dsn):
        if job["task"] == "not_served":
            continue
        started, succeeded, retried, dead = table.setdefault((job["task"], job["queue"]), [0] * 4)
        failures = sum(1 for entry in job["errors"] if "error" in entry)
        table[(job["task"], job["queue"])] = [
            started + job["attempts"],
            succeeded + (job["status"] == "succeeded"),
            retried + failures - (job["status"] == "dead"),
            dead + (job["status"] == "dead"),
        ]

    served = {
        key: tuple(
            int(value(samples, f"pgq_jobs_{kind}_total", task=key[0], queue=key[1]) or 0)
            for kind in ("started", "succeeded", "retried", "dead")
        )
        for key in table
    }

    assert {key: tuple(counts) for key, counts in table.items()} == EXPECTED_COUNTS
    assert served == EXPECTED_COUNTS
    # A series appears the first time its counter moves: no retries, no retried series.
    assert value(samples, "pgq_jobs_retried_total", task="succeed", queue="default") is None
    assert value(samples, "pgq_results_discarded_total") == 0.0


def test_duration_histogram_has_one_observation_per_attempt_per_task(finished_run: Run) -> None:
    samples = scrape(finished_run.port)

    for task in ("succeed", "fail_once", "always_fail"):
        attempts = sum(started for (t, _), (started, *_) in EXPECTED_COUNTS.items() if t == task)
        assert value(samples, "pgq_job_duration_seconds_count", task=task) == attempts, task
        assert value(samples, "pgq_job_duration_seconds_bucket", task=task, le="+Inf") == attempts
        total_seconds = value(samples, "pgq_job_duration_seconds_sum", task=task)
        assert total_seconds is not None and 0 < total_seconds < 5
    claims = value(samples, "pgq_claim_batch_size_sum")
    assert claims == sum(started for started, *_ in EXPECTED_COUNTS.values())


def test_queue_gauges_show_due_jobs_and_lag_of_a_queue_no_worker_serves(
    finished_run: Run,
) -> None:
    samples = scrape(finished_run.port)

    assert value(samples, "pgq_queue_due_jobs", queue="orphans") == ORPHANS
    assert value(samples, "pgq_queue_scheduled_jobs", queue="orphans") == 0
    assert value(samples, "pgq_queue_running_jobs", queue="orphans") == 0
    lag = value(samples, "pgq_queue_lag_seconds", queue="orphans")
    assert lag is not None and 0 < lag < 300
    # Queues with nothing left unfinished have no series at all.
    assert value(samples, "pgq_queue_due_jobs", queue="emails") is None


def test_in_flight_gauge_is_zero_once_the_worker_is_idle(finished_run: Run) -> None:
    assert value(scrape(finished_run.port), "pgq_worker_in_flight_jobs") == 0


def test_health_answers_200_with_json_status_ok(finished_run: Run) -> None:
    status, content_type, body = get(f"http://127.0.0.1:{finished_run.port}/health")

    assert (status, content_type) == (200, "application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and health["database"] == "ok"
    assert 0 <= health["heartbeat_age_seconds"] < 31


def test_metrics_server_listens_on_loopback_only_by_default(finished_run: Run) -> None:
    address = non_loopback_ipv4()
    if address is None:
        # Only when the machine has no address but loopback: nothing else to try.
        pytest.skip("this machine has no non-loopback IPv4 address")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as control:
        # The address is reachable: a server on every interface answers there.
        control.bind(("0.0.0.0", 0))
        control.listen()
        socket.create_connection((address, control.getsockname()[1]), timeout=5).close()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, finished_run.port), timeout=5).close()
    assert scrape(finished_run.port, "127.0.0.1")


def test_json_logs_are_one_object_per_line_with_fields_for_each_job_event(
    finished_run: Run,
) -> None:
    lines = [line for line in finished_run.worker.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object

    for entry in entries:
        assert {"time", "level", "logger", "pid", "message"} <= set(entry), entry
        assert entry["pid"] == finished_run.worker.pid
    events = [e for e in entries if "job_id" in e]
    by_job: dict[int, list[tuple[int, str]]] = {}
    for event in events:
        assert {"task", "queue", "attempt", "outcome", "duration_ms"} <= set(event), event
        assert ("error" in event) == (event["outcome"] in ("retried", "dead")), event
        by_job.setdefault(event["job_id"], []).append((event["attempt"], event["outcome"]))
    # At INFO (the default), every retry and death is a line of its own; successes are
    # counted in a summary (next test), one line each only at DEBUG.
    expected_events = {
        "fail_once": [(1, "retried")],
        "always_fail": [(1, "retried"), (2, "dead")],
    }
    known = [job for job in jobs_table(finished_run.dsn) if job["task"] in expected_events]
    assert by_job == {job["id"]: expected_events[job["task"]] for job in known}
    dead = next(e for e in events if e["outcome"] == "dead")
    assert (dead["level"], dead["error"]) == ("error", "RuntimeError: fails on purpose, every time")


def test_info_logs_summarize_the_outcomes_every_ten_seconds(finished_run: Run) -> None:
    expected: Counter[str] = Counter()
    for _started, succeeded, retried, dead in EXPECTED_COUNTS.values():
        expected.update(succeeded=succeeded, retried=retried, dead=dead)

    def summarized() -> Counter[str]:
        total: Counter[str] = Counter()
        for line in finished_run.worker.log().splitlines():
            entry = json.loads(line) if line.strip() else {}
            if "summary" in entry:
                assert entry["level"] == "info" and entry["message"].startswith("last 10s: ")
                total.update(entry["summary"])
        return total

    # The first summary comes 10 s after the worker started.
    wait_until(lambda: summarized() == expected, 15, lambda: f"summaries {summarized()}")


def test_json_logs_stay_json_when_the_worker_cannot_start(
    empty_dsn: str, workers: WorkerProcesses
) -> None:
    worker = workers.start(empty_dsn, "--log-format", "json", app=METRICS_APP)
    assert worker.wait(DEADLINE) == 1

    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert lines, "the worker says why it stopped"
    entries = [json.loads(line) for line in lines]
    assert any("run `pgq migrate`" in entry["message"] for entry in entries)


# -- workers of their own -------------------------------------------------------------------


def test_a_worker_that_rescues_a_killed_workers_job_counts_it_as_rescued(
    dsn: str, workers: WorkerProcesses
) -> None:
    (job_id,) = enqueue(dsn, [pgq.JobSpec("slow_first_attempt", {"seconds": 60})])
    first_port, second_port = free_port(), free_port()
    first = workers.start(
        dsn, "--lease-seconds", "2", "--metrics-port", str(first_port), *FAST, app=METRICS_APP
    )

    def running_on_first() -> bool:
        (job,) = jobs_table(dsn)
        return bool(job["status"] == "running" and f":{first.pid}:" in (job["locked_by"] or ""))

    wait_until(
        running_on_first, DEADLINE, lambda: f"job running on the first worker: {jobs_table(dsn)}"
    )
    wait_until(lambda: "metrics on http" in first.log(), DEADLINE, "first worker's metrics up")
    before = scrape(first_port)
    assert value(before, "pgq_worker_in_flight_jobs") == 1
    assert value(before, "pgq_jobs_started_total", task="slow_first_attempt", queue="default") == 1

    first.kill()  # SIGKILL mid-job: its lease runs out, nobody extends it
    second = workers.start(
        dsn, "--lease-seconds", "2", "--metrics-port", str(second_port), *FAST, app=METRICS_APP
    )

    wait_until(
        lambda: jobs_table(dsn)[0]["status"] == "succeeded", DEADLINE,
        lambda: f"job rescued and run again: {jobs_table(dsn)}",
    )  # fmt: skip
    wait_until(lambda: "metrics on http" in second.log(), DEADLINE, "second worker's metrics up")
    after = scrape(second_port)
    labels = {"task": "slow_first_attempt", "queue": "default"}
    assert value(after, "pgq_jobs_rescued_total", **labels) == 1
    assert value(after, "pgq_jobs_started_total", **labels) == 1
    assert value(after, "pgq_jobs_succeeded_total", **labels) == 1
    (job,) = jobs_table(dsn)
    assert job["id"] == job_id and job["attempts"] == 2, "the crash used up an attempt"
    assert job["errors"][0]["error"].startswith("worker lost")
    stop(second)
    assert second.popen.returncode == 0


def test_health_answers_503_when_the_database_is_gone(
    throwaway_cluster: ThrowawayCluster, workers: WorkerProcesses
) -> None:
    dsn = throwaway_cluster.dsn()
    pgq.migrate.migrate(dsn)
    port = free_port()
    worker = workers.start(dsn, "--metrics-port", str(port), *FAST, app=METRICS_APP)
    url = f"http://127.0.0.1:{port}/health"
    wait_until(lambda: "metrics on http" in worker.log(), DEADLINE, "metrics server up")
    assert get(url)[0] == 200

    throwaway_cluster.stop("immediate")
    status, content_type, body = get(url)

    assert (status, content_type) == (503, "application/json")
    health = json.loads(body)
    assert (health["status"], health["database"]) == ("failing", "unreachable")
    # /metrics still answers, without the queue gauges it cannot read, and says why.
    samples = scrape(port)
    assert value(samples, "pgq_worker_in_flight_jobs") == 0
    assert not any(name.startswith("pgq_queue_") for name, _ in samples)
    wait_until(lambda: "queue metrics unavailable" in worker.log(), 10, "the warning logged")
    assert worker.running(), "a database outage does not stop the worker"


def test_a_metrics_port_in_use_fails_the_worker_with_a_clear_message(
    dsn: str, workers: WorkerProcesses
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = workers.start(dsn, "--metrics-port", str(port), *FAST, app=METRICS_APP)
        deadline = time.monotonic() + 10
        while worker.running() and time.monotonic() < deadline:
            time.sleep(0.1)

        assert not worker.running(), "the worker still runs 10 s after failing to bind"
    assert worker.popen.returncode == 1
    assert f"error: --metrics-port {port}" in worker.log()
    assert "Traceback" not in worker.log()


def test_a_text_log_line_is_one_line_whatever_the_error_holds() -> None:
    import logging

    from pgq.logs import TEXT_FORMAT, TextFormatter

    record = logging.LogRecord(
        "pgq.worker", logging.ERROR, __file__, 1, "job %s failed: %s", (7, "x\x1b[2J\nFORGED"), None
    )
    line = TextFormatter(TEXT_FORMAT).format(record)

    assert "\n" not in line and "\x1b" not in line
    assert line.endswith("job 7 failed: x\\x1b[2J\\nFORGED")
