"""The executor: runs each claimed job's handler and turns what happened into its outcome.

A claimed job waits here until a handler slot is free (pgq.worker.slots): at
most ``concurrency`` handlers run at once, async ones as tasks on the event
loop, plain ones on handler threads that take their next job themselves and
report their ends in batches. Jobs waiting beyond the running ones are the
prefetch (pgq.worker.prefetch): leased like the rest, handed back at shutdown,
and handed back early when handlers turn slow. Per task timeouts live here. An
async handler is cancelled at its deadline. A thread cannot be interrupted, so a
sync handler's job is failed at its deadline while the thread runs on; its slot
stays in use until it really ends, and whatever it returns later is refused by
the fence.

A job cancelled while it runs (``cancel``: ``pgq cancel``'s NOTIFY, or the
heartbeat finding its lease gone) is the operator's now: an async handler is
cancelled, a sync one sees ``ctx.cancel_requested``, a job not started yet is
dropped, and nothing is written for it (the row is ``cancelled`` already).

The executor never writes to the database: it hands each outcome to
``record`` (the outcome writer's queue), each result the fence will refuse
(its lease was lost) to ``discard``, and progress reports to ``progress``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pgq import middleware
from pgq.errors import InvalidJobError
from pgq.job import ClaimedJob
from pgq.logs import plural
from pgq.middleware import Middleware
from pgq.retry import DEFAULT_RETRY
from pgq.signature import CONTEXT_PARAMETER
from pgq.tasks import JobContext, JobControl, Task
from pgq.worker import outcome as outcomes
from pgq.worker.lease import Lease, LeaseTable
from pgq.worker.outcome import RETURNED_NONE, Outcome, Returned, encode_result
from pgq.worker.prefetch import Prefetch
from pgq.worker.progress import ProgressBuffer
from pgq.worker.slots import Slots

log = logging.getLogger("pgq.worker")

#: A prefetched job that has waited this long while handlers turned slow goes back to the queue.
SHED_AFTER_SECONDS = 1.0
#: How often the longest running handler is looked for (it shrinks the prefetch).
REVIEW_SECONDS = 0.05


def job_context(job: ClaimedJob, worker: str, control: JobControl | None = None) -> JobContext:
    """The ``ctx`` of ``job``'s run: what its handler and its middleware see. ``control``
    carries the handler's progress reports and cancel."""
    return JobContext(
        job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
        max_attempts=job.max_attempts, worker=worker, enqueued_at=job.created_at,
        control=control or JobControl(),
        trace_context=None if job.trace_context is None else json.loads(job.trace_context),
    )  # fmt: skip


def handler_kwargs(
    job: ClaimedJob, task: Task, context: JobContext | None
) -> dict[str, Any] | Outcome:
    """The keyword arguments ``task``'s handler gets for ``job``, or the job's outcome if
    its args cannot bind (a failed attempt: the handler is not called)."""
    # The same rule refused such args at enqueue, unless the job came by name or by SQL.
    # Retried like any failure, not dead at once: in a rolling deploy the other version
    # of the task may take these args (a job for the new signature claimed by an old
    # worker, or the other way round).
    if (problem := task.signature.problem_with(job.args)) is not None:
        mismatch = InvalidJobError(f"args do not match {task.name}'s signature: {problem}")
        return outcomes.failed(job, mismatch, task.retry)
    if not task.signature.takes_context:
        return job.args
    assert context is not None, "a handler that takes ctx gets one"
    return {**job.args, CONTEXT_PARAMETER: context}


class HandlerTimeout(TimeoutError):
    """A handler ran past its task's timeout."""


@dataclass(eq=False, slots=True)
class RunningJob:
    """A claimed job from claim to outcome."""

    job: ClaimedJob
    task: Task
    kwargs: dict[str, Any]
    claimed_at: float  # time.monotonic() at claim
    future: asyncio.Task[None] | None = None  # an async handler's run
    entered: bool = False  # its task took its first step (see _cancel_task)
    started: bool = False
    started_at: float = 0.0  # time.monotonic() when the handler began
    decided: bool = False  # its outcome is decided; a thread may still run its handler
    deadline: asyncio.TimerHandle | None = None  # a sync handler's timeout
    handing_back: bool = False
    lease_lost: bool = False
    cancelled: bool = False  # by an operator: the row is cancelled already
    control: JobControl | None = None  # its ctx's, if its handler or middleware has one
    chain: tuple[Middleware, ...] = ()  # the middleware around its handler
    context: JobContext | None = None  # its ctx, if its handler or middleware takes one


class Executor:
    """Runs claimed jobs; ``running`` holds each one until its outcome is decided."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        *,
        chains: Mapping[str, tuple[Middleware, ...]],
        concurrency: int,
        worker_name: str,
        leases: LeaseTable,
        progress: ProgressBuffer,
        record: Callable[[Outcome], None],
        discard: Callable[[ClaimedJob], None],
        on_job_done: Callable[[], None],
        on_thread_freed: Callable[[], None],
    ) -> None:
        self.tasks = tasks
        self.chains = chains
        self.concurrency = concurrency
        self.worker_name = worker_name
        self.leases = leases
        self.progress = progress
        self.record = record
        self.discard = discard
        self.on_job_done = on_job_done
        self.on_thread_freed = on_thread_freed
        # Keyed by lease token, not job id (see LeaseTable); in claim order.
        self.running: dict[uuid.UUID, RunningJob] = {}
        self.stuck_threads = 0
        self.prefetch = Prefetch(concurrency)
        self._slots: Slots[RunningJob] = Slots(
            concurrency, self._run_in_thread, on_freed=self._slot_freed_by_thread
        )
        self._async_waiting: deque[RunningJob] = deque()
        self._thread_ends: list[tuple[RunningJob, BaseException | None, Returned]] = []
        self._thread_ends_lock = threading.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self._extra, self._reviewed_at = 0, 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- capacity --------------------------------------------------------------

    def busy(self) -> int:
        """Jobs in hand (running or waiting), and sync handlers still busy past their job's end."""
        return len(self.running) + self.stuck_threads

    def running_in(self, queue: str) -> int:
        return sum(1 for run in self.running.values() if run.job.queue == queue)

    def executing(self) -> int:
        """Handlers running now (a sync handler past its job's end included)."""
        return self._slots.in_use

    def extra(self) -> int:
        """How many jobs to hold beyond the running ones now (the prefetch)."""
        now = time.monotonic()
        if now - self._reviewed_at >= REVIEW_SECONDS:
            self._reviewed_at = now
            started = [run.started_at for run in self.running.values() if run.started]
            longest = now - min(started) if started else 0.0
            self._extra = self.prefetch.extra(longest)
        return self._extra

    # -- running ---------------------------------------------------------------

    def start(self, job: ClaimedJob) -> None:
        """Run ``job``'s handler when a slot is free; its lease is held until its outcome."""
        task = self.tasks[job.task]
        self.leases.hold(job)
        chain = self.chains.get(job.task, ())
        control = context = None
        if chain or task.signature.takes_context:
            control = JobControl(report=functools.partial(self.progress.record, job))
            context = job_context(job, self.worker_name, control)
        kwargs = handler_kwargs(job, task, context)
        if isinstance(kwargs, Outcome):
            self._record(RunningJob(job, task, job.args, time.monotonic(), decided=True), kwargs)
            return
        run = RunningJob(
            job, task, kwargs, time.monotonic(), control=control, chain=chain, context=context
        )
        self.running[job.lease_token] = run
        self._idle.clear()
        if task.is_async:
            self._async_waiting.append(run)
            self._start_async()
        else:
            self._loop = asyncio.get_running_loop()
            self._slots.submit(run)

    def refuse(self, job: ClaimedJob, reason: str) -> None:
        """End a claimed job that cannot even start (its args cannot be decoded): dead now.

        Retrying cannot help, and the other jobs of its batch run as usual.
        """
        log.error("job %s (%s): cannot run it: %s", job.id, job.task, reason)
        self.leases.hold(job)
        run = RunningJob(job, self.tasks[job.task], {}, time.monotonic(), decided=True)
        self._record(run, outcomes.refused(job, reason))

    def _finish(self, run: RunningJob, result: Outcome | None) -> None:
        """``run``'s outcome is decided: record it (None: its lease was lost, discard)."""
        run.decided = True
        if run.deadline is not None:
            run.deadline.cancel()
        job = run.job
        self.running.pop(job.lease_token, None)
        if not self.running:
            self._idle.set()
        if run.started:
            self.prefetch.observe(time.monotonic() - run.started_at)
        self.on_job_done()
        if result is None or run.lease_lost:
            self.leases.release([job.lease_token])
            self.discard(job)
            if run.cancelled:  # said when the cancel came; the row is cancelled already
                log.debug("job %s (%s): cancelled, nothing recorded", job.id, job.task)
            else:
                log.warning("job %s (%s): lease lost, outcome discarded", job.id, job.task)
            return
        self._record(run, result)

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

    def _decide(
        self, run: RunningJob, error: BaseException | None, returned: Returned = RETURNED_NONE
    ) -> Outcome:
        """The outcome of a handler that returned (``error`` None) or raised ``error``."""
        if returned[1] is not None:
            log.error("job %s (%s): %s", run.job.id, run.job.task, returned[1])
        return outcomes.decided(run.job, error, run.task.retry, returned)

    # -- async handlers --------------------------------------------------------

    def _start_async(self) -> None:
        while self._async_waiting and self._slots.take():
            run = self._async_waiting.popleft()
            run.started = True
            run.started_at = time.monotonic()
            run.future = asyncio.create_task(self._execute(run))

    async def _execute(self, run: RunningJob) -> None:
        run.entered = True
        if run.lease_lost or run.handing_back:  # stopped before this task took its first step
            self._slots.give_back()
            self._finish(run, outcomes.handed_back(run.job) if run.handing_back else None)
            self._start_async()
            return
        try:
            result = await self._run_async(run)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # deciding the outcome itself failed: never strand the job
            log.exception("job %s (%s): could not decide its outcome", run.job.id, run.task.name)
            why = outcomes.describe_error(error)
            problem = RuntimeError(f"pgq could not decide this job's outcome: {why}")
            result = outcomes.failed(run.job, problem, DEFAULT_RETRY)
        finally:
            self._slots.give_back()
        self._finish(run, result)
        self._start_async()

    async def _run_async(self, run: RunningJob) -> Outcome | None:
        """Run an async handler and decide its outcome (None: lease lost)."""
        job, task = run.job, run.task
        try:
            if task.timeout_seconds is None:
                call = task.handler(**run.kwargs)
            else:
                call = self._within_timeout(task, run.kwargs)
            value = await middleware.run_async(job, run.chain, run.context, call)
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
            self._finish(run, outcomes.handed_back(job))
            raise
        except (Exception, SystemExit) as error:
            return self._decide(run, error)
        return self._decide(run, None, encode_result(value))

    @staticmethod
    async def _within_timeout(task: Task, kwargs: dict[str, Any]) -> Any:
        """Await the handler, cancelled at its timeout (its middleware sees HandlerTimeout)."""
        try:
            async with asyncio.timeout(task.timeout_seconds):
                return await task.handler(**kwargs)
        except TimeoutError as error:
            raise HandlerTimeout(
                f"task {task.name} exceeded its timeout of {task.timeout_seconds:g}s"
            ) from error

    # -- sync handlers ---------------------------------------------------------

    def _run_in_thread(self, run: RunningJob) -> None:
        """On a handler thread: run the handler, then report its end to the loop."""
        loop = self._loop
        assert loop is not None
        if run.task.timeout_seconds is not None:
            self._call_from_thread(loop, self._arm_deadline, run)
        error: BaseException | None = None
        returned = RETURNED_NONE
        try:
            value = middleware.run_sync(
                run.job, run.chain, run.context, run.task.handler, run.kwargs
            )
            returned = encode_result(value)
        except BaseException as raised:  # the thread must live on; the outcome says why
            error = raised
        with self._thread_ends_lock:
            first = not self._thread_ends
            self._thread_ends.append((run, error, returned))
        if first:  # one wake-up of the loop per batch of ends, not per job
            self._call_from_thread(loop, self._thread_ends_reported)

    def _slot_freed_by_thread(self) -> None:
        """On a handler thread whose slot is free now: start a waiting async job, if any.

        Its end was reported before the slot was free, so the loop may have found no
        slot for the async jobs waiting then.
        """
        if self._async_waiting and self._loop is not None:
            self._call_from_thread(self._loop, self._start_async)

    @staticmethod
    def _call_from_thread(
        loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
    ) -> None:
        # The worker may be gone already (Python API, loop closed): nothing to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _thread_ends_reported(self) -> None:
        with self._thread_ends_lock:
            ends, self._thread_ends = self._thread_ends, []
        for run, error, returned in ends:
            if run.decided:  # failed at its deadline or handed back while its thread ran on
                self.stuck_threads -= 1
                self.on_thread_freed()
            else:
                self._finish(run, self._decide(run, error, returned))
        self._start_async()

    def _arm_deadline(self, run: RunningJob) -> None:
        timeout = run.task.timeout_seconds
        if run.decided or timeout is None:
            return
        left = run.started_at + timeout - time.monotonic()
        run.deadline = asyncio.get_running_loop().call_later(
            max(0.0, left), self._deadline_passed, run
        )

    def _deadline_passed(self, run: RunningJob) -> None:
        if run.decided:
            return
        self.stuck_threads += 1
        error = HandlerTimeout(
            f"task {run.task.name} exceeded its timeout of {run.task.timeout_seconds:g}s"
            " (the thread is still running; its result will be discarded)"
        )
        self._finish(run, self._decide(run, error))

    # -- cancels, leases lost, hand back, shed, stop ----------------------------

    def cancel(self, job_id: int, lease_token: uuid.UUID) -> None:
        """An operator cancelled this job (its NOTIFY): stop its handler, write nothing."""
        run = self.running.get(lease_token)
        if run is None or run.job.id != job_id or run.decided or run.handing_back or run.lease_lost:
            return  # not ours, finished or stopped meanwhile: its outcome write is fenced anyway
        run.cancelled = True
        log.info(
            "job %s (%s): cancelled by an operator; %s", job_id, run.task.name,
            "dropping it (not started)" if not run.started
            else "cancelling its handler" if run.task.is_async
            else "its handler sees ctx.cancel_requested",
        )  # fmt: skip
        self._stop(run)

    def lease_lost(self, lost: list[Lease]) -> None:
        """The heartbeat found these leases gone: stop extending them, cancel what can be.

        A job cancelled by an operator ends here too when its NOTIFY was missed
        (``--poll-only``): the heartbeat extends only running jobs' leases.
        """
        for job_id, token in lost:
            run = self.running.get(token)
            if run is None or run.decided or run.handing_back or run.lease_lost:
                continue  # finished meanwhile: its outcome write is fenced anyway
            if run.started:
                log.warning(
                    "job %s (%s): lease lost (rescued or changed by an operator); %s",
                    job_id, run.task.name,
                    "cancelling it" if run.task.is_async else "its result will be discarded",
                )  # fmt: skip
            self._stop(run)
        self.leases.release(token for _, token in lost)

    def _stop(self, run: RunningJob) -> None:
        """``run``'s job is no longer this worker's: drop it, or stop its handler."""
        run.lease_lost = True
        self.leases.release([run.job.lease_token])
        if run.control is not None:
            run.control.cancelled = True
        if self._withdraw(run):
            self._finish(run, None)
        elif run.future is not None:
            self._cancel_task(run)

    @staticmethod
    def _cancel_task(run: RunningJob) -> None:
        """Cancel an async handler's task, unless it has not taken its first step yet.

        A task cancelled before its first step never runs its coroutine's body: no
        ``finally`` frees its slot and nothing records its job (the job stayed in
        hand for good, its slot lost). Such a task finds the run's flags when it
        starts, and ends the job there.
        """
        assert run.future is not None
        if run.entered:
            run.future.cancel()

    def _withdraw(self, run: RunningJob) -> bool:
        """Take back a job whose handler has not started; False if it has."""
        if run.task.is_async:
            if run.started:
                return False
            self._async_waiting.remove(run)
            return True
        return self._slots.withdraw(run)

    def hand_back(self, run: RunningJob) -> None:
        """Stop ``run`` and queue its job again at once (shutdown, shed)."""
        if run.decided or run.handing_back:
            return
        run.handing_back = True
        if self._withdraw(run):
            self._finish(run, outcomes.handed_back(run.job))
        elif run.future is not None:
            self._cancel_task(run)  # its task records the hand back
        else:  # a thread runs its handler: the job goes back now, the thread runs on
            self.stuck_threads += 1
            self._finish(run, outcomes.handed_back(run.job))

    def hand_back_waiting(self) -> None:
        """Hand back every job whose handler has not started."""
        for run in list(self.running.values()):
            if not run.started:
                self.hand_back(run)

    def shed(self) -> None:
        """Hand back prefetched jobs past what the handlers' pace now warrants.

        Only once such a job has waited ``SHED_AFTER_SECONDS``: a prefetch that
        shrinks for a moment is not worth a round trip.
        """
        waiting = [run for run in self.running.values() if not run.started]
        free = max(0, self.concurrency - self.executing())
        excess = len(waiting) - self.extra() - free
        if excess <= 0 or time.monotonic() - waiting[0].claimed_at < SHED_AFTER_SECONDS:
            return
        log.info(
            "handlers turned slow: handing back %s prefetched for other workers",
            plural(excess, "job"),
        )
        for run in waiting[-excess:]:
            self.hand_back(run)

    async def wait_until_idle(self, timeout_seconds: float) -> None:
        """Wait until no job is in hand, or ``timeout_seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)

    def close(self) -> None:
        """Let go of the handler threads; those still running end by themselves."""
        self._slots.close()
