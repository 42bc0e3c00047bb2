"""Shutdown: what a signal means, and how running jobs end when the worker stops.

First SIGTERM or SIGINT: stop claiming, let running jobs finish within the
grace period, hand back the rest (queued again at once, the attempt given
back). A second signal: exit now; leases return the unfinished jobs later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from pgq.logs import plural
from pgq.worker.executor import Executor
from pgq.worker.outcome_writer import OutcomeWriter

log = logging.getLogger("pgq.worker")

DUPLICATE_SIGNAL_SECONDS = 1.0
#: After the grace period, how long handed-back jobs get to record their hand back.
HAND_BACK_SECONDS = 5.0
#: Then how long the outcome writer gets to write what is left.
FINAL_FLUSH_SECONDS = 15.0


class SignalHandler:
    """Turns SIGTERM/SIGINT into ``request_stop()``, and a second one into an exit."""

    def __init__(self, request_stop: Callable[[], None], describe: Callable[[], str]) -> None:
        self.request_stop = request_stop
        self.describe = describe  # what the worker is doing, for the log line
        self.signals = 0
        self._first_signal_at = 0.0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)

    def on_signal(self, signum: int) -> None:
        now = time.monotonic()
        # A terminal's Ctrl-C or systemd signals every process of the group, and a
        # supervisor passes the signal on too: a repeat within a second is the same
        # request, not an impatient operator's second one.
        if self.signals and now - self._first_signal_at < DUPLICATE_SIGNAL_SECONDS:
            return
        self.signals += 1
        if self.signals == 1:
            self._first_signal_at = now
            log.info("%s: stopping; %s (signal again to exit now)",
                     signal.Signals(signum).name, self.describe())  # fmt: skip
            self.request_stop()
        else:
            log.warning("second signal: exiting now; leases will return unfinished jobs")
            logging.shutdown()
            os._exit(1)


async def finish_running_jobs(executor: Executor, grace_seconds: float) -> None:
    """Let running jobs finish for ``grace_seconds``, then hand back those still running."""
    # Claimed but not started (prefetched, or waiting for a slot): hand back at once.
    executor.hand_back_waiting()
    await executor.wait_until_idle(grace_seconds)
    leftovers = [run for run in executor.running.values() if not run.decided]
    if leftovers:
        log.warning(
            "grace period over: handing back %s to the queue", plural(len(leftovers), "running job")
        )
        for run in leftovers:
            executor.hand_back(run)
        await executor.wait_until_idle(HAND_BACK_SECONDS)


async def stop_running(
    executor: Executor,
    writer: OutcomeWriter,
    grace_seconds: float,
    flusher: asyncio.Task[None],
    *others: asyncio.Task[None],
) -> None:
    """End running jobs, write their outcomes, and leave no task or thread pool behind.

    ``flusher`` is the writer's task; ``others`` (the LISTEN task) are cancelled.
    """
    try:
        await finish_running_jobs(executor, grace_seconds)
        await writer.finish(flusher, FINAL_FLUSH_SECONDS)
    finally:
        for task in others:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor.close()
