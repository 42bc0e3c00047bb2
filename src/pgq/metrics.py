"""Prometheus metrics and the /health endpoint of `pgq work --metrics-port`.

Job counters are updated by the worker as outcomes happen. Queue depth and lag
come from the fleet's shared snapshot (``refresh_queue_stats``): every worker
serves them, but one query per interval pays for the whole fleet, so dashboards
should aggregate them with max(), not sum(). So should they the unserved jobs
(``pgq_unserved_jobs``: queued jobs no live worker serves, by task and queue),
which each worker reads from the view ``unserved_jobs`` when scraped, at most
once per interval.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pgq.connection import ThreadConnection
from pgq.queries import query

log = logging.getLogger("pgq.metrics")

DEFAULT_HOST = "127.0.0.1"
QUEUE_STATS_MAX_AGE_SECONDS = 10.0

JOB_LABELS = ("task", "queue")
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
QUEUE_GAUGES = (
    ("due", "pgq_queue_due_jobs", "Jobs due now, waiting for a worker."),
    ("scheduled", "pgq_queue_scheduled_jobs", "Jobs queued for later."),
    ("running", "pgq_queue_running_jobs", "Jobs running in the fleet."),
    ("lag", "pgq_queue_lag_seconds", "Age of the oldest due job, in seconds."),
)


class WorkerMetrics:
    """The worker's counters, histograms and gauges, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.started = Counter(
            "pgq_jobs_started", "Jobs claimed and started.", JOB_LABELS, registry=r
        )
        self.succeeded = Counter(
            "pgq_jobs_succeeded", "Jobs that succeeded.", JOB_LABELS, registry=r
        )
        self.retried = Counter(
            "pgq_jobs_retried", "Failed attempts scheduled for a retry.", JOB_LABELS, registry=r
        )
        self.dead = Counter(
            "pgq_jobs_dead", "Jobs moved to dead (exhausted or given up).", JOB_LABELS, registry=r
        )
        self.snoozed = Counter("pgq_jobs_snoozed", "Jobs snoozed.", JOB_LABELS, registry=r)
        self.handed_back = Counter(
            "pgq_jobs_handed_back", "Jobs handed back at shutdown.", JOB_LABELS, registry=r
        )
        self.discarded = Counter(
            "pgq_results_discarded",
            "Outcomes refused by the fence (lease lost before finishing).",
            registry=r,
        )
        self.rescued = Counter(
            "pgq_jobs_rescued",
            "Jobs this worker rescued after another worker lost their lease.",
            JOB_LABELS,
            registry=r,
        )
        self.duration = Histogram(
            "pgq_job_duration_seconds", "Handler run time.", ("task",), buckets=DURATION_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.claim_batch = Histogram(
            "pgq_claim_batch_size", "Jobs per claim round trip.", buckets=BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge("pgq_worker_in_flight_jobs", "Jobs running now.", registry=r)
        self.heartbeat_failures = Counter(
            "pgq_heartbeat_failures", "Heartbeats that could not reach the database.", registry=r
        )
        self._by_outcome = {
            "succeeded": self.succeeded,
            "retried": self.retried,
            "dead": self.dead,
            "gave_up": self.dead,
            "refused": self.dead,
            "snoozed": self.snoozed,
            "handed_back": self.handed_back,
        }

    def outcome(self, kind: str, task: str, queue: str, duration_seconds: float | None) -> None:
        counter = self._by_outcome.get(kind)
        if counter is not None:
            counter.labels(task, queue).inc()
        if duration_seconds is not None and kind != "handed_back":
            self.duration.labels(task).observe(duration_seconds)


class QueueStatsCollector(Collector):
    """Queue gauges read from the fleet's snapshot, refreshed at most every 10 s."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        max_age_seconds: float = QUEUE_STATS_MAX_AGE_SECONDS,
        *,
        prepare_statements: bool = True,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()
        self._rows: list[tuple[Any, ...]] = []
        self._unserved: list[tuple[Any, ...]] = []
        self._read_at = 0.0
        # Used under self._lock only. prepare_statements=False behind PgBouncer.
        self._connection = ThreadConnection(dsn, prepare_statements=prepare_statements)

    def _read(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The queue snapshot's rows and the unserved jobs' rows."""
        with self._lock:
            if time.monotonic() - self._read_at < self.max_age_seconds / 2:
                return self._rows, self._unserved
            # No retry loop: a failed read keeps the last figures, and the next
            # scrape reconnects.
            try:
                conn = self._connection.get()
                params = {"max_age_seconds": self.max_age_seconds}
                conn.execute(query("refresh_queue_stats", self.schema), params)
                self._rows = conn.execute(
                    query("read_queue_stats_snapshot", self.schema)
                ).fetchall()
                self._unserved = conn.execute(query("read_unserved_jobs", self.schema)).fetchall()
                self._read_at = time.monotonic()
            except psycopg.Error as error:
                log.warning("queue metrics unavailable: %s", error)
                self._connection.close()
            return self._rows, self._unserved

    def collect(self) -> Iterable[Metric]:
        rows, unserved_rows = self._read()
        families = {
            name: GaugeMetricFamily(metric, help_text, labels=["queue"])
            for name, metric, help_text in QUEUE_GAUGES
        }
        for queue, due, scheduled, running, _expired, lag in rows:
            families["due"].add_metric([queue], due)
            families["scheduled"].add_metric([queue], scheduled)
            families["running"].add_metric([queue], running)
            families["lag"].add_metric([queue], lag)
        yield from families.values()
        unserved = GaugeMetricFamily(
            "pgq_unserved_jobs",
            "Queued jobs that no live worker serves (a misspelt task, a missing worker).",
            labels=["task", "queue"],
        )
        for task, queue, due, scheduled, _oldest in unserved_rows:
            unserved.add_metric([task, queue], due + scheduled)
        yield unserved

    def check_database(self) -> bool:
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn:
                conn.execute(query("probe_server", self.schema))
            return True
        except psycopg.Error:
            return False


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the worker's log


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterator[bytes] | list[bytes]]


def serve(
    metrics: WorkerMetrics,
    queue_stats: QueueStatsCollector,
    heartbeat_age: Callable[[], float],
    heartbeat_limit_seconds: float,
    *,
    port: int,
    host: str = DEFAULT_HOST,
) -> WSGIServer:
    """Serve /metrics and /health on ``host:port`` from a daemon thread."""
    metrics.registry.register(queue_stats)
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/health":
            return metrics_app(environ, start_response)
        age = heartbeat_age()
        database_ok = queue_stats.check_database()
        healthy = database_ok and age < heartbeat_limit_seconds
        body = json.dumps({
            "status": "ok" if healthy else "failing",
            "database": "ok" if database_ok else "unreachable",
            "heartbeat_age_seconds": round(age, 3),
        }).encode()  # fmt: skip
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [body]

    server = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="pgq-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /health", host, server.server_port)
    return server
