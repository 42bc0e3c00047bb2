"""`pgq work --processes N`: N worker processes under one parent that restarts any that die.

Python handlers are often CPU-bound, and one process per core is how a Python
fleet uses a machine. The supervisor holds no jobs and no database connection:
it only keeps N children alive and passes signals on. Jobs of a child that dies
come back through rescue when their lease expires.

Each child gets its settings in its environment (``child_env``), not on its
command line: options are not spelt out twice, and the DSN's password does not
show up in ``ps``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from types import FrameType

from pgq.connection import Backoff
from pgq.logs import plural

log = logging.getLogger("pgq.supervisor")

POLL_SECONDS = 0.2
# A child that lived this long before dying is restarted at once; one that
# keeps dying young waits longer each time, up to MAX_RESTART_DELAY_SECONDS.
HEALTHY_LIFETIME_SECONDS = 30.0
MAX_RESTART_DELAY_SECONDS = 30.0


class Supervisor:
    def __init__(
        self, child_argv: Sequence[str], child_env: Callable[[int], dict[str, str]],
        processes: int, *, grace_seconds: float = 30.0,
    ) -> None:  # fmt: skip
        self.child_argv = list(child_argv)
        self.child_env = child_env  # slot -> the environment of that slot's child
        self.processes = processes
        self.grace_seconds = grace_seconds
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: dict[int, float] = {}
        self.restart_backoffs: dict[int, Backoff] = {}  # by slot: its children dying young
        self.restart_at: dict[int, float] = {}
        self.signals = 0
        self.alive_at_stop: set[int] = set()

    def _spawn(self, slot: int) -> None:
        child = subprocess.Popen(self.child_argv, env=self.child_env(slot))
        self.children[slot] = child
        self.started_at[slot] = time.monotonic()
        log.info("worker process %d started (pid %d)", slot, child.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            self.alive_at_stop = {s for s, c in self.children.items() if c.poll() is None}
        # The first signal asks children for a graceful stop; a second one is
        # passed on too, and children exit at once on their second.
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        if self.signals == 1:
            log.info(
                "%s: stopping %s",
                signal.Signals(signum).name,
                plural(len(self.children), "worker process", "worker processes"),
            )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self.processes):
            self._spawn(slot)
        while not self.signals:
            time.sleep(POLL_SECONDS)
            for slot, child in list(self.children.items()):
                if child.poll() is None or self.signals:
                    continue
                self._schedule_restart(slot, child.returncode)
            now = time.monotonic()
            for slot, when in list(self.restart_at.items()):
                if now >= when and not self.signals:
                    del self.restart_at[slot]
                    self._spawn(slot)
        return self._wait_for_children()

    def _schedule_restart(self, slot: int, returncode: int) -> None:
        if slot in self.restart_at:
            return
        lived = time.monotonic() - self.started_at[slot]
        backoff = self.restart_backoffs.setdefault(slot, Backoff(0.5, MAX_RESTART_DELAY_SECONDS))
        if lived > HEALTHY_LIFETIME_SECONDS:
            backoff.succeeded()
            delay = 0.0
        else:
            delay = backoff.failed()
        alone = not any(c.poll() is None for s, c in self.children.items() if s != slot)
        if returncode < 0 and alone:
            # Killed from outside (an OOM killer, an operator) and no other child is
            # running: restart at once, or nothing would run or rescue jobs at all.
            # A child that fails by itself (code > 0, e.g. a broken import) still backs off.
            delay = 0.0
        log.warning(
            "worker process %d (pid %d) exited with code %s; restarting in %.1fs",
            slot, self.children[slot].pid, returncode, delay,
        )  # fmt: skip
        self.restart_at[slot] = time.monotonic() + delay

    def _wait_for_children(self) -> int:
        """Wait for the children that were running at the stop; 1 if one of them failed.

        A child that had died before the stop (awaiting its restart) was already
        reported when it died: it does not make a clean shutdown a failure.
        """
        stopping = [c for slot, c in self.children.items() if slot in self.alive_at_stop]
        deadline = time.monotonic() + self.grace_seconds + 20
        for child in stopping:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", child.pid)
                child.kill()
                child.wait()
        # Killed by our own SIGTERM before it could install its handler (it was just
        # starting): that is a stop, not a failure.
        failed = [c.returncode for c in stopping if c.returncode not in (0, -signal.SIGTERM)]
        if failed:
            log.warning("worker processes exited with codes %s", failed)
            return 1
        return 0
