"""The executor: runs each claimed job's handler and turns what happened into its outcome.

Async handlers run on the event loop, plain ones in a bounded thread pool. Per
task timeouts live here. An async handler is cancelled at its deadline. A
thread cannot be interrupted, so a sync handler's job is failed at its deadline
while the thread runs on; its thread stays counted as busy until it really
ends, and whatever it returns later is refused by the fence.

The executor never writes to the database: it hands each outcome to
``record`` (the outcome writer's queue), and each result the fence will refuse
(its lease was lost) to ``discard``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pgq.errors import GiveUp, Snooze
from pgq.job import ClaimedJob
from pgq.retry import DEFAULT_RETRY
from pgq.signature import CONTEXT_PARAMETER
from pgq.tasks import JobContext, Task
from pgq.worker import outcome as outcomes
from pgq.worker.lease import Lease, LeaseTable
from pgq.worker.outcome import Outcome

log = logging.getLogger("pgq.worker")


class HandlerTimeout(TimeoutError):
    """A handler ran past its task's timeout."""


@dataclass(eq=False, slots=True)
class RunningJob:
    """A claimed job from claim to outcome."""

    job: ClaimedJob
    task: Task
    future: asyncio.Task[None] | None = None
    thread_future: concurrent.futures.Future[Any] | None = None
    started: bool = False
    started_at: float = 0.0  # time.monotonic() when the handler began
    handing_back: bool = False
    lease_lost: bool = False


class Executor:
    """Runs claimed jobs; ``running`` holds each one until its outcome is decided."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        *,
        concurrency: int,
        worker_name: str,
        leases: LeaseTable,
        record: Callable[[Outcome], None],
        discard: Callable[[ClaimedJob], None],
        on_job_done: Callable[[], None],
        on_thread_freed: Callable[[], None],
    ) -> None:
        self.tasks = tasks
        self.worker_name = worker_name
        self.leases = leases
        self.record = record
        self.discard = discard
        self.on_job_done = on_job_done
        self.on_thread_freed = on_thread_freed
        # Both keyed by lease token, not job id (see LeaseTable).
        self.running: dict[uuid.UUID, RunningJob] = {}
        self.stuck_threads = 0
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="pgq-handler"
        )

    # -- capacity --------------------------------------------------------------

    def busy(self) -> int:
        """Slots in use: running jobs, and sync handlers still busy past their job's end."""
        return len(self.running) + self.stuck_threads

    def running_in(self, queue: str) -> int:
        return sum(1 for run in self.running.values() if run.job.queue == queue)

    # -- running ---------------------------------------------------------------

    def start(self, job: ClaimedJob) -> None:
        """Run ``job``'s handler in a task of its own; its lease is held until its outcome."""
        run = RunningJob(job=job, task=self.tasks[job.task])
        self.running[job.lease_token] = run
        self.leases.hold(job)
        run.future = asyncio.create_task(self._execute(run))

    def refuse(self, job: ClaimedJob, reason: str) -> None:
        """End a claimed job that cannot even start (its args cannot be decoded): dead now.

        Retrying cannot help, and the other jobs of its batch run as usual.
        """
        log.error("job %s (%s): cannot run it: %s", job.id, job.task, reason)
        self.leases.hold(job)
        self._record(RunningJob(job=job, task=self.tasks[job.task]), outcomes.refused(job, reason))

    async def _execute(self, run: RunningJob) -> None:
        job = run.job
        try:
            result = await self._run_and_decide(run)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # deciding the outcome itself failed: never strand the job
            log.exception("job %s (%s): could not decide its outcome", job.id, job.task)
            why = outcomes.describe_error(error)
            problem = RuntimeError(f"pgq could not decide this job's outcome: {why}")
            result = outcomes.failed(job, problem, DEFAULT_RETRY)
        finally:
            self.running.pop(job.lease_token, None)
            self.on_job_done()
        if result is None or run.lease_lost:
            self.leases.release([job.lease_token])
            self.discard(job)
            log.warning("job %s (%s): lease lost, outcome discarded", job.id, job.task)
            return
        self._record(run, result)

    async def _run_and_decide(self, run: RunningJob) -> Outcome | None:
        """Run the handler and turn what happened into the job's outcome (None: lease lost)."""
        job, task = run.job, run.task
        # Args that cannot bind will never work: dead now, no retry. The same rule
        # refused them at enqueue, unless the job came by name or by SQL.
        if (problem := task.signature.problem_with(job.args)) is not None:
            return outcomes.gave_up(job, f"args do not match {task.name}'s signature: {problem}")
        kwargs: dict[str, Any] = job.args
        if task.signature.takes_context:
            kwargs = {**job.args, CONTEXT_PARAMETER: self._context(job)}
        try:
            await self._call(run, kwargs)
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
        except (Exception, SystemExit) as error:
            return outcomes.failed(job, error, task.retry)

    def _record(self, run: RunningJob, result: Outcome) -> None:
        if run.started:
            result.duration_seconds = time.monotonic() - run.started_at
        try:
            self.record(result)
        except Exception:
            # Never leave the job running under a lease the heartbeat keeps extending:
            # let the lease lapse, and rescue returns the job.
            log.exception("job %s: could not queue its outcome; rescue will return it", run.job.id)
            self.leases.release([run.job.lease_token])

    def _context(self, job: ClaimedJob) -> JobContext:
        return JobContext(
            job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
            max_attempts=job.max_attempts, worker=self.worker_name, enqueued_at=job.created_at,
        )  # fmt: skip

    # -- calling handlers ------------------------------------------------------

    async def _call(self, run: RunningJob, kwargs: dict[str, Any]) -> None:
        """Run the handler to its end, raising what it raised (or HandlerTimeout)."""
        task = run.task
        if not task.is_async:
            await self._call_in_thread(run, kwargs)
            return
        run.started = True
        run.started_at = time.monotonic()
        if task.timeout_seconds is None:
            await task.handler(**kwargs)
            return
        try:
            async with asyncio.timeout(task.timeout_seconds):
                await task.handler(**kwargs)
        except TimeoutError as error:
            raise HandlerTimeout(
                f"task {task.name} exceeded its timeout of {task.timeout_seconds:g}s"
            ) from error

    async def _call_in_thread(self, run: RunningJob, kwargs: dict[str, Any]) -> None:
        task = run.task

        def call() -> Any:
            run.started = True
            run.started_at = time.monotonic()
            return task.handler(**kwargs)

        thread_future = self._threads.submit(call)
        run.thread_future = thread_future
        waiter = asyncio.wrap_future(thread_future)
        try:
            # asyncio.wait never cancels the thread's future: at the deadline the
            # job fails, and the fence discards whatever the thread returns later.
            done, _ = await asyncio.wait({waiter}, timeout=task.timeout_seconds)
        except asyncio.CancelledError:
            if not thread_future.cancel():  # already running: it cannot be stopped
                self._count_stuck(thread_future)
            raise
        if not done:
            self._count_stuck(thread_future)
            raise HandlerTimeout(
                f"task {task.name} exceeded its timeout of {task.timeout_seconds:g}s"
                " (the thread is still running; its result will be discarded)"
            )
        waiter.result()

    def _count_stuck(self, thread_future: concurrent.futures.Future[Any]) -> None:
        """Keep a sync handler's thread counted as busy until it really ends."""
        self.stuck_threads += 1
        loop = asyncio.get_running_loop()

        def release(_: concurrent.futures.Future[Any]) -> None:
            # The worker may be gone already (Python API, loop closed): nothing to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._thread_ended)

        thread_future.add_done_callback(release)

    def _thread_ended(self) -> None:
        self.stuck_threads -= 1
        self.on_thread_freed()

    # -- leases lost, hand back, stop ------------------------------------------

    def lease_lost(self, lost: list[Lease]) -> None:
        """The heartbeat found these leases gone: stop extending them, cancel what can be."""
        self.leases.release(token for _, token in lost)
        for job_id, token in lost:
            run = self.running.get(token)
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

    def hand_back(self, run: RunningJob) -> None:
        """Stop ``run`` and queue its job again at once (shutdown)."""
        run.handing_back = True
        if run.future is not None:
            run.future.cancel()

    def close(self) -> None:
        """Let go of the thread pool; threads still running are left to end by themselves."""
        self._threads.shutdown(wait=False, cancel_futures=True)
