"""What this worker did: counts by outcome, Prometheus metrics, and log lines of job events.

Every part reports here (the producer its claims, the writer each stored
outcome, the executor each discarded result, maintenance each rescue), so a
count, a metric and a log line can never disagree about what happened.

What an operator needs from a log at INFO is what went wrong, job by job, and
how much went right: retries and deaths are one line each (WARNING, ERROR),
successes one line each at DEBUG and, at INFO, a summary every
``SUMMARY_SECONDS`` while jobs finish. A line per success cost a busy worker a
fifth of its time, and nobody reads ten thousand of them a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from pgq.errors import ConfigError
from pgq.job import ClaimedJob
from pgq.metrics import QueueStatsCollector, WorkerMetrics, serve
from pgq.rescue import RescuedJob
from pgq.worker.lease import Heartbeat
from pgq.worker.outcome import Outcome
from pgq.worker.settings import WorkerSettings

log = logging.getLogger("pgq.worker")

#: How often a worker that finished jobs logs how many, at INFO.
SUMMARY_SECONDS = 10.0


class WorkerStats:
    """Counts by event (for logs, tests and the demo) and, with a metrics port, metrics."""

    def __init__(self, metrics: WorkerMetrics | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.metrics = metrics
        self._since_summary: Counter[str] = Counter()
        self._server: WSGIServer | None = None

    def serve_metrics(
        self, settings: WorkerSettings, heartbeat: Heartbeat, in_flight: Callable[[], int]
    ) -> None:
        """Serve /metrics and /health if there is a metrics port; ConfigError if it is taken."""
        if self.metrics is None or settings.metrics_port is None:
            return
        self.metrics.in_flight.set_function(in_flight)
        try:
            self._server = serve(
                self.metrics,
                QueueStatsCollector(
                    settings.dsn, settings.schema, prepare_statements=not settings.poll_only
                ),
                heartbeat_age=lambda: time.monotonic() - heartbeat.last_heartbeat,
                # Healthy while the heartbeat ran within three of its intervals.
                heartbeat_limit_seconds=3 * heartbeat.heartbeat_seconds + 1,
                port=settings.metrics_port,
                host=settings.metrics_host,
            )
        except OSError as error:
            raise ConfigError(
                f"--metrics-port {settings.metrics_port}: cannot listen on "
                f"{settings.metrics_host}:{settings.metrics_port}: {error}"
            ) from None

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def claimed(self, jobs: list[ClaimedJob]) -> None:
        self.counts["claimed"] += len(jobs)
        if self.metrics is not None and jobs:
            self.metrics.claim_batch.observe(len(jobs))
            for job in jobs:
                self.metrics.started.labels(job.task, job.queue).inc()

    def decided(self, result: Outcome) -> None:
        """An outcome was decided (not yet stored): its log line."""
        log_job_event(result)

    def stored(self, result: Outcome) -> None:
        """Counted once stored, so that a result the fence refused is not counted twice."""
        self.counts[result.kind] += 1
        self._since_summary[result.kind] += 1
        if self.metrics is not None:
            job = result.job
            self.metrics.outcome(result.kind, job.task, job.queue, result.duration_seconds)

    def log_summary(self, seconds: float) -> None:
        """One INFO line: the outcomes stored in the last ``seconds`` (nothing if none)."""
        counts, self._since_summary = self._since_summary, Counter()
        total = sum(counts.values())
        if total == 0:
            return
        kinds = ", ".join(
            f"{count:,} {kind.replace('_', ' ')}" for kind, count in counts.most_common()
        )
        log.info("last %.0fs: %s (%.1f jobs/s)", seconds, kinds, total / seconds,
                 extra={"summary": dict(counts)})  # fmt: skip

    async def log_summaries(self, seconds: float = SUMMARY_SECONDS) -> None:
        """Log a summary every ``seconds``, forever; cancel the task to stop."""
        while True:
            await asyncio.sleep(seconds)
            self.log_summary(seconds)

    def discarded(self) -> None:
        """A result the fence refused: this worker no longer held the job's lease."""
        self.counts["discarded"] += 1
        if self.metrics is not None:
            self.metrics.discarded.inc()

    def rescued(self, jobs: list[RescuedJob]) -> None:
        if self.metrics is not None:
            for job in jobs:
                self.metrics.rescued.labels(job.task, job.queue).inc()

    def heartbeat_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.heartbeat_failures.inc()


def log_job_event(result: Outcome) -> None:
    """One line per job event: the message for people, the fields for log pipelines."""
    job, kind, duration_seconds = result.job, result.kind, result.duration_seconds
    if kind == "succeeded" and not log.isEnabledFor(logging.DEBUG):
        return  # the hot path: skip building a record nobody will see
    duration_ms = None if duration_seconds is None else round(duration_seconds * 1000, 3)
    fields: dict[str, Any] = {
        "job_id": job.id, "task": job.task, "queue": job.queue, "attempt": job.attempt,
        "outcome": kind, "duration_ms": duration_ms,
    }  # fmt: skip
    if kind == "succeeded":
        took = "" if duration_ms is None else f" in {duration_ms:.1f}ms"
        log.debug("job %s (%s) succeeded on attempt %s%s", job.id, job.task, job.attempt, took,
                  extra=fields)  # fmt: skip
    elif kind == "retried":
        fields["error"] = result.error
        log.warning(
            "job %s (%s) failed on attempt %s/%s, retrying in %.1fs: %s",
            job.id, job.task, job.attempt, job.max_attempts, result.delay_seconds, result.error,
            extra=fields,
        )  # fmt: skip
    elif kind in ("dead", "gave_up", "refused"):
        fields["error"] = result.error
        log.error(
            "job %s (%s) is dead after attempt %s/%s: %s",
            job.id, job.task, job.attempt, job.max_attempts, result.error, extra=fields,
        )  # fmt: skip
    else:
        log.info("job %s (%s) %s", job.id, job.task, kind.replace("_", " "), extra=fields)
