"""``Worker``: wires the parts of pgq/worker together and runs them until stopped.

It owns no behaviour of its own: the producer claims, the executor runs
handlers, the outcome writer records, the heartbeat extends leases,
maintenance rescues and prunes, and shutdown ends running jobs. The package
docstring (pgq/worker/__init__.py) maps them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from psycopg_pool import AsyncConnectionPool

from pgq.errors import ConfigError
from pgq.logs import plural
from pgq.metrics import DEFAULT_HOST, WorkerMetrics
from pgq.retention import Retention
from pgq.tasks import App
from pgq.worker.database import check_database, open_pool, wait_for_database
from pgq.worker.executor import Executor
from pgq.worker.lease import Heartbeat, LeaseTable
from pgq.worker.listen import listen_for_wakeups
from pgq.worker.maintenance import Maintenance
from pgq.worker.outcome import Outcome
from pgq.worker.outcome_writer import OutcomeWriter
from pgq.worker.producer import Producer
from pgq.worker.progress import ProgressBuffer
from pgq.worker.registration import Registration
from pgq.worker.scheduler import Scheduler
from pgq.worker.settings import PRUNE_INTERVAL_SECONDS, WorkerSettings
from pgq.worker.shutdown import SignalHandler, stop_running
from pgq.worker.stats import WorkerStats

log = logging.getLogger("pgq.worker")


class Worker:
    """Runs an App's tasks until stopped.

    ``queues`` maps queue name to its own concurrency limit (None: no limit but
    the total); None serves every queue. With several queues, each claim takes
    them in turn, first one then another; ``queue_weights`` (queue name to a whole
    weight, 1 for a queue left out) shares the worker's capacity among them when
    all have jobs, and ``strict_queue_order=True`` takes a queue only when those
    listed before it have no due job. See docs/howto/queues.md.
    ``poll_only=True`` is for PgBouncer in transaction mode (no LISTEN, no
    prepared statements, no session settings).
    ``synchronous_commit=False`` (the default) lets claims and outcome writes
    commit without waiting for their WAL flush; see docs/concepts/delivery.md.

    Example::

        worker = pgq.Worker(app, dsn, concurrency=20)
        asyncio.run(worker.run())
    """

    def __init__(
        self, app: App, dsn: str, *, schema: str | None = None,
        queues: Mapping[str, int | None] | None = None, concurrency: int = 10,
        poll_seconds: float = 1.0, lease_seconds: float = 30.0, poll_only: bool = False,
        shutdown_grace_seconds: float = 30.0, rescue_interval_seconds: float | None = None,
        retention: Retention | None = None, prune_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
        metrics_port: int | None = None, metrics_host: str = DEFAULT_HOST,
        name: str | None = None, synchronous_commit: bool = False,
        queue_weights: Mapping[str, int] | None = None, strict_queue_order: bool = False,
    ) -> None:  # fmt: skip
        if not app.tasks:
            raise ConfigError("the app has no tasks: register handlers with @app.task")
        settings = WorkerSettings.create(
            dsn, schema=schema or app.schema, queues=queues, concurrency=concurrency,
            poll_seconds=poll_seconds, lease_seconds=lease_seconds, poll_only=poll_only,
            shutdown_grace_seconds=shutdown_grace_seconds,
            rescue_interval_seconds=rescue_interval_seconds, retention=retention,
            prune_interval_seconds=prune_interval_seconds, metrics_port=metrics_port,
            metrics_host=metrics_host, name=name, synchronous_commit=synchronous_commit,
            queue_weights=queue_weights, strict_queue_order=strict_queue_order,
        )  # fmt: skip
        self._wire(app, settings)

    @classmethod
    def from_settings(cls, app: App, settings: WorkerSettings) -> Worker:
        """A worker for settings already checked (``pgq work --processes`` children)."""
        worker = cls.__new__(cls)
        worker._wire(app, settings)
        return worker

    def _wire(self, app: App, settings: WorkerSettings) -> None:
        self.app, self.settings, self.name = app, settings, settings.name
        self.stats = WorkerStats(WorkerMetrics() if settings.metrics_port is not None else None)
        self.leases = LeaseTable()
        self.progress = ProgressBuffer(settings.schema)
        self.executor = Executor(
            app.tasks, chains={name: app.chain(task) for name, task in app.tasks.items()},
            concurrency=settings.concurrency, worker_name=settings.name,
            leases=self.leases, progress=self.progress, record=self._record,
            discard=lambda _: self.stats.discarded(),
            on_job_done=lambda: self.producer.job_done(),
            on_thread_freed=lambda: self.producer.wake(),
        )  # fmt: skip
        self.producer = Producer(settings, sorted(app.tasks), self.executor, self.stats)
        self._signals = SignalHandler(self.request_stop, self._describe_stop)
        self._writer: OutcomeWriter | None = None
        self.pool: AsyncConnectionPool[Any] | None = None  # while running

    @property
    def stuck_threads(self) -> int:
        """Sync handlers still running after their job timed out or was handed back."""
        return self.executor.stuck_threads

    def request_stop(self) -> None:
        """Begin a graceful shutdown: stop claiming, let running jobs finish."""
        self.producer.stop()

    def check_schema_now(self) -> None:
        """Fail now (SchemaError, ConfigError) if this worker could not start on its database."""
        check_database(self.settings)

    async def run(self, *, handle_signals: bool = False) -> None:
        """Work until ``request_stop()`` (or SIGTERM/SIGINT with ``handle_signals``)."""
        settings = self.settings
        if handle_signals:
            self._signals.install(asyncio.get_running_loop())
        registration = Registration.for_worker(settings, self.app.tasks)
        await wait_for_database(settings, lambda: self.producer.stopping, registration)
        heartbeat = Heartbeat.for_worker(
            settings, self.leases, self.executor.lease_lost, self.stats.heartbeat_failed,
            registration,
        )  # fmt: skip
        maintenance = Maintenance.for_worker(settings, self.stats.rescued)
        threads = [heartbeat, maintenance]
        if self.app.schedules:
            threads.append(Scheduler.for_worker(settings, self.app.schedules, self.app.tasks))
        # Bind the metrics port before anything starts: a port in use is a
        # configuration error to report, not a reason to leave threads behind.
        self.stats.serve_metrics(settings, heartbeat, self.executor.executing)
        self.pool = pool = open_pool(settings)
        self._writer = writer = OutcomeWriter(
            pool, settings.schema, self.app.tasks, self.progress, release=self.leases.release,
            applied=self._stored, discarded=self.stats.discarded,
        )  # fmt: skip
        try:
            await pool.open(wait=False)
            for thread in threads:
                thread.start()
            background = [
                asyncio.create_task(writer.run(), name="pgq-flush"),
                asyncio.create_task(self.stats.log_summaries(), name="pgq-summary"),
                asyncio.create_task(self.progress.run(pool), name="pgq-progress"),
            ]
            if not settings.poll_only:
                listen = listen_for_wakeups(
                    settings.dsn, settings.schema, self.producer.serves,
                    self.producer.wake_for_due_job, self.executor.cancel,
                )  # fmt: skip
                background.append(asyncio.create_task(listen, name="pgq-listen"))
            log.info("worker %s started: tasks %s, %s", self.name,
                     ", ".join(sorted(self.app.tasks)), settings.summary())  # fmt: skip
            self._warn_of_queues_no_task_uses()
            try:
                await self.producer.run(pool, writer)
            finally:
                grace = settings.shutdown_grace_seconds
                await stop_running(self.executor, writer, grace, *background)
        finally:
            # Last: leases must be extended until every outcome is written.
            for thread in threads:
                if thread.is_alive():
                    thread.stop()
            await pool.close()
            self.stats.stop_serving()
        log.info("worker %s stopped: %s", self.name, dict(self.stats.counts))

    def _warn_of_queues_no_task_uses(self) -> None:
        """A served queue that no task declares is most often a typo (--queues emials).

        Only a warning: a job enqueued with ``queue=`` explicitly reaches any queue.
        """
        declared = sorted({task.queue for task in self.app.tasks.values()})
        for queue in self.settings.queues or ():
            if queue not in declared:
                log.warning(
                    "queue %r is no task's queue in this app (tasks use: %s); jobs reach it "
                    "only when enqueued with queue=%r", queue, ", ".join(declared), queue,
                )  # fmt: skip

    # -- what the parts tell each other ------------------------------------------

    def _record(self, result: Outcome) -> None:
        """An outcome was decided: log it, queue it for the writer's next batch."""
        self.stats.decided(result)
        assert self._writer is not None
        self._writer.add(result)
        if result.delay_seconds is not None and result.delay_seconds < self.settings.poll_seconds:
            # A short retry or snooze would otherwise wait for the next poll.
            loop = asyncio.get_running_loop()
            loop.call_later(result.delay_seconds + 0.005, self.producer.wake_for_due_job)

    def _stored(self, result: Outcome) -> None:
        self.stats.stored(result)
        self.producer.wake()  # a slot held by an unwritten outcome is free again

    def _describe_stop(self) -> str:
        running, grace = self.executor.executing(), self.settings.shutdown_grace_seconds
        return f"waiting up to {grace:g}s for {plural(running, 'running job')}"
