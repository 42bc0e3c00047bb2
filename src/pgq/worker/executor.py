"""Calling handlers: async ones on the event loop, plain ones in a bounded thread pool.

Per-task timeouts live here. An async handler is cancelled at its deadline. A
thread cannot be interrupted, so a sync handler's job is failed at its deadline
while the thread runs on; its thread stays counted as busy until it really ends,
and whatever it returns later is refused by the fence.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgq.job import ClaimedJob
from pgq.tasks import Task


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


class HandlerRunner:
    """Runs handlers; ``stuck_threads`` counts sync handlers still busy past their end."""

    def __init__(self, concurrency: int, on_thread_freed: Callable[[], None]) -> None:
        self.stuck_threads = 0
        self._on_thread_freed = on_thread_freed
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="pgq-handler"
        )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, run: RunningJob, kwargs: dict[str, Any]) -> None:
        """Run the handler to its end, raising what it raised (or HandlerTimeout)."""
        if run.task.is_async:
            run.started = True
            run.started_at = time.monotonic()
            await self._call_async(run.task, kwargs)
        else:
            await self._call_in_thread(run, kwargs)

    @staticmethod
    async def _call_async(task: Task, kwargs: dict[str, Any]) -> None:
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

        thread_future = self._executor.submit(call)
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
        self._on_thread_freed()


def args_mismatch(task: Task, kwargs: dict[str, Any]) -> bool:
    """True when ``kwargs`` cannot bind to the handler's signature (a TypeError's likely cause)."""
    try:
        inspect.signature(task.handler).bind(**kwargs)
    except TypeError:
        return True
    return False
