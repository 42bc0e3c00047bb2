"""The worker: claim due jobs in batches, run their handlers, record outcomes in batches.

One asyncio loop per process. Claims are sized to free slots (one round trip
for many jobs), outcomes are written by one flusher in batches (whatever
finished while the previous write was in flight), and leases are extended by a
separate thread (lease.py). Every outcome is fenced by its lease token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg_pool

from pgq import outcome as outcomes
from pgq.config import resolve_schema, worker_conninfo
from pgq.enqueue import QUEUE_NAME
from pgq.errors import ConfigError, GiveUp, Snooze
from pgq.finish import DATABASE_DOWN, MAX_BACKOFF_SECONDS, OutcomeWriter, backoff
from pgq.job import ClaimedJob
from pgq.lease import Heartbeat
from pgq.listen import listen_for_wakeups
from pgq.logs import log_job_event
from pgq.maintenance import PRUNE_INTERVAL_SECONDS, Maintenance
from pgq.metrics import DEFAULT_HOST, QueueStatsCollector, WorkerMetrics, serve
from pgq.migrate import check_schema
from pgq.outcome import Outcome
from pgq.queries import array_literal, query
from pgq.rescue import RescuedJob
from pgq.retention import Retention
from pgq.retry import Retry
from pgq.runner import HandlerRunner, HandlerTimeout, RunningJob, args_mismatch
from pgq.tasks import App, JobContext

log = logging.getLogger("pgq.worker")

STARTUP_TIMEOUT_SECONDS = 60.0
FINAL_FLUSH_SECONDS = 15.0
MAX_CONCURRENCY = 10_000
DAY_SECONDS = 86_400.0
WORKER_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}\Z")
# Connection errors that waiting will not fix: fail at once instead of retrying.
# libpq gives no SQLSTATE for a failed connection, so these match its messages.
NOT_AN_OUTAGE = ("does not exist", "authentication failed", "no pg_hba.conf entry")
DUPLICATE_SIGNAL_SECONDS = 1.0


@dataclass(slots=True)
class WorkerStats:
    """What this worker did, by outcome (for logs, tests and the demo)."""

    counts: Counter[str] = field(default_factory=Counter)


def _not_an_outage(error: Exception) -> bool:
    text = str(error)
    return any(marker in text for marker in NOT_AN_OUTAGE)


def _check_range(
    what: str, value: float, low: float, high: float, *, above_low: bool = False, unit: str = ""
) -> None:
    """ConfigError unless ``low <= value <= high`` (``low < value`` with ``above_low``)."""
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not (low < value if above_low else low <= value) or not value <= high:
        bound = f"> {low:g}" if above_low else f">= {low:g}"
        raise ConfigError(f"{what} must be {bound}{unit} and <= {high:g}{unit}, got {value!r}")


def _claimed(row: tuple[Any, ...]) -> ClaimedJob:
    """A claim_jobs row as a ClaimedJob; args arrive as JSON text (see claim_jobs)."""
    job_id, queue, task, args_json, attempt, max_attempts, lease_token, created_at = row
    return ClaimedJob(
        job_id, queue, task, json.loads(args_json), attempt, max_attempts, lease_token, created_at
    )


def worker_name() -> str:
    """``host:pid:random``: who holds a lease, as shown in ``locked_by``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs an App's tasks until stopped.

    ``queues`` maps queue name to its own concurrency limit (None: no limit but
    the total); None serves every queue. ``listen=False`` is the poll-only mode
    for PgBouncer in transaction mode (no LISTEN, no prepared statements).
    ``synchronous_commit=False`` (the default) lets claims and outcome writes
    commit without waiting for their WAL flush; see docs/concepts/delivery.md.

    Example::

        worker = pgq.Worker(app, dsn, concurrency=20)
        asyncio.run(worker.run())
    """

    def __init__(
        self,
        app: App,
        dsn: str,
        *,
        schema: str | None = None,
        queues: Mapping[str, int | None] | None = None,
        concurrency: int = 10,
        poll_seconds: float = 1.0,
        lease_seconds: float = 30.0,
        listen: bool = True,
        shutdown_grace_seconds: float = 30.0,
        rescue_interval_seconds: float | None = None,
        retention: Retention | None = None,
        prune_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_HOST,
        name: str | None = None,
        synchronous_commit: bool = False,
    ) -> None:
        if not app.tasks:
            raise ConfigError("the app has no tasks: register handlers with @app.task")
        _check_range("concurrency", concurrency, 1, MAX_CONCURRENCY)
        _check_range("poll interval", poll_seconds, 0, DAY_SECONDS, above_low=True, unit=" seconds")
        _check_range("lease", lease_seconds, 0.5, DAY_SECONDS, unit=" seconds")
        _check_range("shutdown grace", shutdown_grace_seconds, 0, DAY_SECONDS, unit=" seconds")
        if rescue_interval_seconds is not None:
            _check_range(
                "rescue interval", rescue_interval_seconds, 0, DAY_SECONDS, above_low=True,
                unit=" seconds",
            )  # fmt: skip
        if metrics_port is not None:
            _check_range("metrics port", metrics_port, 0, 65535)
        if queues is not None and not queues:
            raise ConfigError("queues is empty: pass None to serve every queue")
        for queue, limit in (queues or {}).items():
            if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
                raise ConfigError(f"invalid queue name {queue!r}")
            if limit is not None:
                _check_range(f"queue {queue!r}: concurrency", limit, 1, MAX_CONCURRENCY)
        if name is not None and not WORKER_NAME.match(name):
            raise ConfigError(
                f"invalid worker name {name!r}: 1 to 200 characters, no control characters"
            )
        self.app = app
        self.dsn = worker_conninfo(dsn)
        self.schema = resolve_schema(schema or app.schema)
        self.queues = dict(queues) if queues else None
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.listen = listen
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.rescue_interval_seconds = rescue_interval_seconds or max(1.0, lease_seconds / 2)
        self.retention = retention or Retention()
        if not prune_interval_seconds > 0:
            raise ConfigError(f"prune interval must be > 0 seconds, got {prune_interval_seconds}")
        self.prune_interval_seconds = prune_interval_seconds
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics = WorkerMetrics() if metrics_port is not None else None
        self.name = name or worker_name()
        self.synchronous_commit = synchronous_commit
        self.stats = WorkerStats()
        self.task_names = sorted(app.tasks)
        self._tasks_literal = array_literal(self.task_names)

        # Both keyed by lease token, not job id: a stale run of a job (a sync
        # handler past a lost lease) and its newer run may both be here at once.
        self._running: dict[uuid.UUID, RunningJob] = {}
        self._held: dict[uuid.UUID, int] = {}  # leases to extend: running or outcome unwritten
        self._held_lock = threading.Lock()
        self._backlog = True  # the last claim filled its batch: more may be due
        self._claim_rounds = 0
        self._stopping = False
        self._signals = 0
        self._first_signal_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._runner = HandlerRunner(concurrency, on_thread_freed=self._wake)
        self._writer: OutcomeWriter | None = None
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None

    # -- public --------------------------------------------------------------

    @property
    def stuck_threads(self) -> int:
        """Sync handlers still running after their job timed out or was handed back."""
        return self._runner.stuck_threads

    def request_stop(self) -> None:
        """Begin a graceful shutdown: stop claiming, let running jobs finish."""
        if not self._stopping:
            self._stopping = True
            if self._wakeup is not None:
                self._wakeup.set()

    def _serve_metrics(self, heartbeat: Heartbeat) -> Any:
        if self.metrics is None or self.metrics_port is None:
            return None
        self.metrics.in_flight.set_function(lambda: len(self._running))
        try:
            return self._start_metrics_server(heartbeat)
        except OSError as error:
            raise ConfigError(
                f"--metrics-port {self.metrics_port}: cannot listen on "
                f"{self.metrics_host}:{self.metrics_port}: {error}"
            ) from None

    def _start_metrics_server(self, heartbeat: Heartbeat) -> Any:
        assert self.metrics is not None and self.metrics_port is not None
        return serve(
            self.metrics,
            QueueStatsCollector(self.dsn, self.schema),
            heartbeat_age=lambda: time.monotonic() - heartbeat.last_heartbeat,
            # Healthy while the heartbeat ran within three of its intervals.
            heartbeat_limit_seconds=3 * heartbeat.heartbeat_seconds + 1,
            port=self.metrics_port,
            host=self.metrics_host,
        )

    def _heartbeat_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.heartbeat_failures.inc()

    def _rescued(self, jobs: list[RescuedJob]) -> None:
        if self.metrics is not None:
            for job in jobs:
                self.metrics.rescued.labels(job.task, job.queue).inc()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Work until ``request_stop()`` (or SIGTERM/SIGINT with ``handle_signals``)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        await self._wait_for_database()
        heartbeat = Heartbeat(
            dsn=self.dsn,
            schema=self.schema,
            lease_seconds=self.lease_seconds,
            held=self._held_leases,
            on_lost=self._lease_lost_threadsafe,
            on_failure=self._heartbeat_failed,
            prepare_statements=self.listen,
        )
        # Bind the metrics port before anything starts: a port in use is a
        # configuration error to report, not a reason to leave threads behind.
        metrics_server = self._serve_metrics(heartbeat)
        self._pool = psycopg_pool.AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True, "prepare_threshold": 5 if self.listen else None},
            configure=self._configure_connection,
            open=False,
            name="pgq-worker",
            # Fail a claim or a write after 10 s without a connection, and retry
            # it with backoff, rather than hang while the database is away.
            timeout=10,
            # psycopg_pool doubles its reconnect delay without limit until this
            # timeout: with 3600 s, a worker reconnected as late after an outage as
            # the outage lasted. Giving up after MAX_BACKOFF_SECONDS lets the next
            # claim start a fresh attempt.
            reconnect_timeout=MAX_BACKOFF_SECONDS,
        )
        maintenance = Maintenance(
            dsn=self.dsn,
            schema=self.schema,
            rescue_interval_seconds=self.rescue_interval_seconds,
            retention=self.retention,
            on_rescued=self._rescued,
            prepare_statements=self.listen,
            prune_interval_seconds=self.prune_interval_seconds,
        )
        self._writer = OutcomeWriter(
            self._pool, self.schema, self.app.tasks,
            release=self._release, applied=self._count_outcome, discarded=self._count_discarded,
        )  # fmt: skip
        try:
            await self._pool.open(wait=False)
            heartbeat.start()
            maintenance.start()
            flusher = asyncio.create_task(self._writer.run(), name="pgq-flush")
            listener = None
            if self.listen:
                listener = asyncio.create_task(
                    listen_for_wakeups(self.dsn, self.schema, self._serves, self._wake_for_due_job),
                    name="pgq-listen",
                )
            log.info(
                "worker %s started: tasks %s, queues %s, concurrency %d, lease %gs, %s",
                self.name, ", ".join(self.task_names),
                ", ".join(self.queues) if self.queues else "all", self.concurrency,
                self.lease_seconds,
                "listening" if self.listen else f"polling every {self.poll_seconds:g}s",
            )  # fmt: skip
            try:
                await self._claim_loop()
            finally:
                await self._shutdown(flusher, listener, heartbeat, maintenance)
        finally:
            if heartbeat.is_alive():  # started but not stopped: the start failed half-way
                heartbeat.stop()
            if maintenance.is_alive():
                maintenance.stop()
            await self._pool.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()

    async def _configure_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Session settings for the pooled connections (claims and outcome writes).

        Plans: the claim walks its index even when the table's statistics are
        missing or stale (see worker_session_plans in queries.sql). Commits: claims
        and outcome writes need not wait for their WAL flush, since a write lost in
        a database crash only re-runs a job (the claim reverts to queued, a lost
        outcome leaves the job to rescue), which at-least-once allows; enqueues run
        in the application's own transactions, untouched. Measured: +60 % drain rate
        (docs/concepts/delivery.md). Neither with PgBouncer in transaction mode
        (listen=False): a session setting would land on whichever server connection
        the SET happened to get.
        """
        if not self.listen:
            return
        await conn.execute(query("worker_session_plans", self.schema))
        if not self.synchronous_commit:
            await conn.execute(query("worker_session_async_commit", self.schema))

    # -- claiming ------------------------------------------------------------

    async def _wait_for_database(self) -> None:
        """Return once the schema checks out; ConfigError if that cannot happen (or a stop came)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        failures = 0
        while True:
            try:
                await asyncio.to_thread(self._check_schema)
                return
            except DATABASE_DOWN as error:
                failures += 1
                if _not_an_outage(error):
                    raise ConfigError(f"cannot use the database: {error}") from error
                if self._stopping:
                    raise ConfigError(
                        f"stopped before the database could be reached: {error}"
                    ) from error
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"cannot reach the database after {STARTUP_TIMEOUT_SECONDS:g}s: {error}"
                    ) from error
                log.warning("database unreachable (%s); retrying", error)
                await asyncio.sleep(backoff(failures))

    def check_schema_now(self) -> None:
        """Fail now (SchemaError, ConfigError) if this worker could not start on its database."""
        try:
            self._check_schema()
        except psycopg.OperationalError as error:
            raise ConfigError(f"cannot use the database: {error}") from error

    def _check_schema(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            check_schema(conn, schema=self.schema)

    async def _claim_loop(self) -> None:
        assert self._wakeup is not None
        failures = 0
        while not self._stopping:
            try:
                more_due = await self._claim()
                if failures:
                    log.info("database reachable again; claiming resumed")
                failures = 0
            except DATABASE_DOWN as error:
                failures += 1
                if self._pool is not None:
                    with contextlib.suppress(Exception):
                        await self._pool.check()  # drop every connection the server closed
                delay = 0.0 if failures == 1 else backoff(failures - 1)
                log.warning(
                    "claim failed, database unreachable (%s); retrying in %.1fs", error, delay
                )
                await self._sleep_unless_stopping(delay)
                continue
            except psycopg.Error as error:
                # Not an outage (a dropped table, a revoked grant): say so loudly,
                # but stay alive for when an operator fixes it.
                failures += 1
                delay = backoff(failures)
                log.error("claim failed: %s; retrying in %.1fs", error, delay)
                await self._sleep_unless_stopping(delay)
                continue
            if more_due and self._free_slots() > 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)
            self._wakeup.clear()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        # Only a stop cuts a backoff short: job wake-ups (a handler ending, a short
        # retry coming due) would turn it into a retry storm, each failure doubling
        # the next delay, up to the 10 s cap within a second.
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.1))

    def _free_slots(self) -> int:
        # Outcomes not yet written still hold their leases. Past one batch's worth,
        # claim no more: a worker whose writes stall (outage, deadlock retry) would
        # otherwise keep claiming, and hold hundreds of leases for a concurrency of 4.
        writer = self._writer
        unwritten = 0 if writer is None else len(writer.pending) + writer.in_flight
        return (
            self.concurrency
            - len(self._running)
            - self._runner.stuck_threads
            - max(0, unwritten - self.concurrency)
        )

    def _queue_room(self, queue: str, limit: int | None) -> int:
        free = self._free_slots()
        if limit is None:
            return free
        busy = sum(1 for run in self._running.values() if run.job.queue == queue)
        return min(free, limit - busy)

    async def _claim(self) -> bool:
        """Claim into free slots; True if some queue filled its batch (more may be due)."""
        assert self._pool is not None
        if self._free_slots() <= 0:
            return False
        params: dict[str, Any] = {
            "tasks": self._tasks_literal,
            "lease_seconds": self.lease_seconds,
            "worker": self.name,
        }
        more_due = False
        async with self._pool.connection() as conn:
            if self.queues is None:
                params["limit"] = self._free_slots()
                cursor = await conn.execute(query("claim_jobs", self.schema), params)
                rows = await cursor.fetchall()
                for row in rows:
                    self._start(_claimed(row))
                self._observe_claim(len(rows))
                more_due = len(rows) == params["limit"]
            else:
                # Room is recomputed after each queue's claim, so all queues
                # together never exceed the total; the order rotates for fairness.
                order = list(self.queues.items())
                shift = self._claim_rounds % len(order)
                self._claim_rounds += 1
                for queue, limit in order[shift:] + order[:shift]:
                    room = self._queue_room(queue, limit)
                    if room <= 0:
                        continue
                    params["queue"], params["limit"] = queue, room
                    cursor = await conn.execute(query("claim_jobs_from_queue", self.schema), params)
                    rows = await cursor.fetchall()
                    for row in rows:
                        self._start(_claimed(row))
                    self._observe_claim(len(rows))
                    more_due = more_due or len(rows) == room
        self._backlog = more_due
        return more_due

    def _observe_claim(self, claimed: int) -> None:
        if self.metrics is not None and claimed:
            self.metrics.claim_batch.observe(claimed)

    def _start(self, job: ClaimedJob) -> None:
        run = RunningJob(job=job, task=self.app.tasks[job.task])
        self._running[job.lease_token] = run
        with self._held_lock:
            self._held[job.lease_token] = job.id
        self.stats.counts["claimed"] += 1
        if self.metrics is not None:
            self.metrics.started.labels(job.task, job.queue).inc()
        run.future = asyncio.create_task(self._execute(run))

    # -- running -------------------------------------------------------------

    async def _execute(self, run: RunningJob) -> None:
        job = run.job
        try:
            result = await self._run_and_decide(run)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # deciding the outcome itself failed: never strand the job
            log.exception("job %s (%s): could not decide its outcome", job.id, job.task)
            result = outcomes.failed(
                job, RuntimeError(f"pgq could not decide this job's outcome: {error!r}"), Retry()
            )
        finally:
            self._running.pop(job.lease_token, None)
            if self._backlog and self._wakeup is not None:
                self._wakeup.set()
        if result is None or run.lease_lost:
            self._release([job.lease_token])
            self._count_discarded()
            log.warning("job %s (%s): lease lost, outcome discarded", job.id, job.task)
            return
        self._record(run, result)

    async def _run_and_decide(self, run: RunningJob) -> Outcome | None:
        """Run the handler and turn what happened into the job's outcome (None: lease lost)."""
        job, task = run.job, run.task
        kwargs: dict[str, Any] = job.args
        if task.wants_context:
            kwargs = {**job.args, "ctx": self._context(job)}
        try:
            await self._runner.call(run, kwargs)
            return outcomes.succeeded(job)
        except asyncio.CancelledError as error:
            if run.handing_back:
                return outcomes.handed_back(job)
            if run.lease_lost:
                return None
            current = asyncio.current_task()
            if current is None or current.cancelling() == 0:
                # Raised inside the handler (it awaited something cancelled),
                # not a cancellation of this run: a failure like any other.
                return outcomes.failed(job, error, task.retry)
            # This run itself is being cancelled from outside: hand the job
            # back rather than leave it running until rescue.
            self._record(run, outcomes.handed_back(job))
            raise
        except Snooze as signal_:
            return outcomes.snoozed(job, signal_.seconds)
        except GiveUp as signal_:
            return outcomes.gave_up(job, signal_.reason)
        except HandlerTimeout as error:
            return outcomes.failed(job, error, task.retry)
        except TypeError as error:
            # Args that cannot bind to the handler will never work: no retry.
            if args_mismatch(task, kwargs):
                return outcomes.gave_up(job, f"args do not match {task.name}'s signature: {error}")
            return outcomes.failed(job, error, task.retry)
        except (Exception, SystemExit) as error:
            return outcomes.failed(job, error, task.retry)

    def _record(self, run: RunningJob, result: Outcome) -> None:
        """Queue an outcome for the flusher's next batch write."""
        self._log_outcome(run, result)
        assert self._writer is not None
        self._writer.add(result)
        if result.delay_seconds is not None and result.delay_seconds < self.poll_seconds:
            # A short retry or snooze would otherwise wait for the next poll.
            assert self._loop is not None
            self._loop.call_later(result.delay_seconds + 0.005, self._wake_for_due_job)

    def _context(self, job: ClaimedJob) -> JobContext:
        return JobContext(
            job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
            max_attempts=job.max_attempts, worker=self.name, enqueued_at=job.created_at,
        )  # fmt: skip

    def _wake_for_due_job(self) -> None:
        """A job is due (enqueued, or a short retry): claim even after a short claim."""
        self._backlog = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _count_discarded(self) -> None:
        self.stats.counts["discarded"] += 1
        if self.metrics is not None:
            self.metrics.discarded.inc()

    def _log_outcome(self, run: RunningJob, result: Outcome) -> None:
        if run.started:
            result.duration_seconds = time.monotonic() - run.started_at
        log_job_event(log, result, result.duration_seconds)

    def _count_outcome(self, result: Outcome) -> None:
        """Counted once stored, so that a result the fence refused is not counted twice."""
        self._wake()  # a slot held by an unwritten outcome is free again
        self.stats.counts[result.kind] += 1
        if self.metrics is not None:
            job = result.job
            self.metrics.outcome(result.kind, job.task, job.queue, result.duration_seconds)

    # -- leases --------------------------------------------------------------

    def _held_leases(self) -> list[tuple[int, uuid.UUID]]:
        with self._held_lock:
            return [(job_id, token) for token, job_id in self._held.items()]

    def _release(self, lease_tokens: list[uuid.UUID]) -> None:
        with self._held_lock:
            for token in lease_tokens:
                self._held.pop(token, None)

    def _lease_lost_threadsafe(self, lost: list[tuple[int, uuid.UUID]]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nothing left to tell
                loop.call_soon_threadsafe(self._lease_lost, lost)

    def _lease_lost(self, lost: list[tuple[int, uuid.UUID]]) -> None:
        # Stop extending a lease that is gone (and stop reporting it each heartbeat).
        self._release([token for _, token in lost])
        for job_id, token in lost:
            run = self._running.get(token)
            if run is None or run.handing_back or run.lease_lost:
                continue  # finished meanwhile: its outcome write is fenced anyway
            run.lease_lost = True
            log.warning(
                "job %s (%s): lease lost (rescued or changed by an operator); %s",
                job_id, run.task.name,
                "cancelling it" if run.task.is_async else "its result will be discarded",
            )  # fmt: skip
            if run.task.is_async and run.future is not None:
                run.future.cancel()

    # -- wake-ups ------------------------------------------------------------

    def _serves(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues

    # -- shutdown ------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        # A terminal's Ctrl-C or systemd signals every process of the group, and a
        # supervisor passes the signal on too: a repeat within a second is the same
        # request, not an impatient operator's second one.
        if self._signals and now - self._first_signal_at < DUPLICATE_SIGNAL_SECONDS:
            return
        self._signals += 1
        if self._signals == 1:
            self._first_signal_at = now
            log.info(
                "%s: stopping; waiting up to %gs for %d running jobs (signal again to exit now)",
                signal.Signals(signum).name, self.shutdown_grace_seconds, len(self._running),
            )  # fmt: skip
            self.request_stop()
        else:
            log.warning("second signal: exiting now; leases will return unfinished jobs")
            logging.shutdown()
            os._exit(1)

    async def _shutdown(
        self,
        flusher: asyncio.Task[None],
        listener: asyncio.Task[None] | None,
        heartbeat: Heartbeat,
        maintenance: Maintenance,
    ) -> None:
        # Claimed but not started (waiting for a thread): hand back at once.
        for run in list(self._running.values()):
            if not run.started:
                self._hand_back(run)
        waiting = [run.future for run in self._running.values() if run.future is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=self.shutdown_grace_seconds)
        leftovers = [run for run in self._running.values() if run.future is not None]
        if leftovers:
            log.warning(
                "grace period over: handing back %d running jobs to the queue", len(leftovers)
            )
            for run in leftovers:
                self._hand_back(run)
            await asyncio.wait(
                [run.future for run in leftovers if run.future is not None], timeout=5
            )
        try:
            assert self._writer is not None
            await self._writer.finish(flusher, FINAL_FLUSH_SECONDS)
        finally:
            # Whatever happened above, leave no thread or connection behind.
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            heartbeat.stop()
            maintenance.stop()
            self._runner.shutdown()
        log.info("worker %s stopped: %s", self.name, dict(self.stats.counts))

    def _hand_back(self, run: RunningJob) -> None:
        run.handing_back = True
        if run.future is not None:
            run.future.cancel()
