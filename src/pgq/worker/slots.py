"""Handler slots: at most ``concurrency`` handlers run at once, and the threads that run plain ones.

One lock guards the count of slots in use and the queue of plain (sync) jobs
waiting for one. The handler threads take their next job from that queue
themselves, so a job that follows another needs no trip through the event loop
to start; an async handler takes its slot on the loop (``take``). A sync
handler past its deadline keeps its slot until its thread really ends: the
thread is busy, and the count must say so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Startable(Protocol):
    """What the slots need of a job: whether and when its handler started."""

    started: bool
    started_at: float


Run = TypeVar("Run", bound=Startable)


class Slots(Generic[Run]):
    """Counts handlers running; runs sync jobs on up to ``concurrency`` threads."""

    def __init__(
        self,
        concurrency: int,
        run_sync: Callable[[Run], None],
        *,
        thread_name: str = "pgq-handler",
        on_freed: Callable[[], None] = lambda: None,
    ) -> None:
        self.concurrency = concurrency
        self._run_sync = run_sync  # on a handler thread: run the handler, report its end
        # On the handler thread, once its slot is free: an async job may be waiting for it.
        self._on_freed = on_freed
        self._thread_name = thread_name
        self._lock = threading.Condition()
        self._waiting: deque[Run] = deque()
        self._in_use = 0
        self._threads = 0
        self._idle = 0
        self._closed = False

    @property
    def in_use(self) -> int:
        return self._in_use

    # -- async handlers (event loop) ---------------------------------------------

    def take(self) -> bool:
        """Take a slot for an async handler; False if all are in use."""
        with self._lock:
            if self._in_use >= self.concurrency:
                return False
            self._in_use += 1
            return True

    def give_back(self) -> None:
        """An async handler ended: a waiting sync job may start."""
        with self._lock:
            self._in_use -= 1
            if self._waiting:
                self._lock.notify()

    # -- sync handlers -----------------------------------------------------------

    def submit(self, run: Run) -> None:
        """Queue a sync job; the first free handler thread runs it."""
        with self._lock:
            self._waiting.append(run)
            if self._idle == 0 and self._threads < self.concurrency:
                self._threads += 1
                thread = threading.Thread(
                    target=self._serve, name=f"{self._thread_name}-{self._threads}", daemon=True
                )
                thread.start()
            self._lock.notify()

    def withdraw(self, run: Run) -> bool:
        """Take back a sync job no thread has started; False if one has."""
        with self._lock:
            if run.started:
                return False
            self._waiting.remove(run)
            return True

    def close(self) -> None:
        """Idle threads exit; busy ones exit when their handler returns."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
            self._lock.notify_all()

    def _serve(self) -> None:
        # Daemon threads: a handler that never returns must not keep the process alive
        # after its job was failed or handed back.
        while True:
            with self._lock:
                self._idle += 1
                while not self._closed and not (self._waiting and self._in_use < self.concurrency):
                    self._lock.wait()
                self._idle -= 1
                if self._closed:
                    self._threads -= 1
                    return
                run = self._waiting.popleft()
                run.started = True
                run.started_at = time.monotonic()
                self._in_use += 1
            try:
                self._run_sync(run)
            finally:
                with self._lock:
                    self._in_use -= 1
                self._on_freed()
