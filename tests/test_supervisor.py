"""The supervisor of `pgq work --processes N` (pgq.worker.supervisor): N worker processes
under one parent that restarts any that die and passes a stop on to all of them.

The first test runs ``Supervisor`` in this process over small stand-in children. The
others run real `pgq work --processes 2` commands (test_worker_processes.py's helpers);
they are slow. Jobs of a child that dies come back through rescue: test_rescue.py.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

import pgq
from pgq.worker.supervisor import Supervisor
from worker_helpers import (
    EXIT_SECONDS,
    WorkerProcesses,
    all_succeeded,
    child_pids,
    create_ledger,
    enqueue_jobs,
    ledger_rows,
    listeners,
    pid_alive,
    status_counts,
    stop,
    wait_until,
)

# A stand-in child: says it is ready (once its SIGTERM handler is in place), then waits
# for the stop and exits with the code its environment asks for.
CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(os.environ["EXIT_ON_SIGTERM"])))
open(os.environ["READY_FILE"], "w").close()
time.sleep(60)
"""


@pytest.mark.parametrize(("second_child_exit", "supervisor_exit"), [(0, 0), (3, 1)])
def test_a_stop_reaches_every_child_and_fails_the_supervisor_if_a_child_did_not_stop_cleanly(
    tmp_path: Path, second_child_exit: int, supervisor_exit: int
) -> None:
    exits = {0: 0, 1: second_child_exit}

    def child_env(slot: int) -> dict[str, str]:
        ready = str(tmp_path / f"ready-{slot}")
        return {**os.environ, "READY_FILE": ready, "EXIT_ON_SIGTERM": str(exits[slot])}

    supervisor = Supervisor([sys.executable, "-c", CHILD], child_env, 2, grace_seconds=5)

    def stop_once_ready() -> None:
        try:
            wait_until(
                lambda: all((tmp_path / f"ready-{slot}").exists() for slot in exits), 20,
                "both children started",
            )  # fmt: skip
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill <supervisor pid>` would

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    stopper = threading.Thread(target=stop_once_ready)
    stopper.start()
    try:
        code = supervisor.run()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        stopper.join()

    assert {slot: child.returncode for slot, child in supervisor.children.items()} == exits
    assert code == supervisor_exit


@pytest.mark.slow
def test_supervisor_restarts_a_killed_child_and_stops_all_children_on_sigterm(
    dsn: str, workers: WorkerProcesses
) -> None:
    create_ledger(dsn)
    supervisor = workers.start(
        dsn, "--processes", "2", "--concurrency", "4", "--lease-seconds", "2",
        "--poll-seconds", "0.2",
    )  # fmt: skip
    wait_until(lambda: len(child_pids(supervisor.pid)) == 2, 20, "two children")
    wait_until(lambda: listeners(dsn) == 2, 30, "both children listening")
    first_children = child_pids(supervisor.pid)
    victim = min(first_children)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = child_pids(supervisor.pid)
        return len(now) == 2 and victim not in now

    wait_until(replaced, 20, lambda: f"a new child; children now {child_pids(supervisor.pid)}")
    (newcomer,) = child_pids(supervisor.pid) - first_children
    wait_until(lambda: listeners(dsn) == 2, 30, "the new child listening")

    ids = enqueue_jobs(dsn, [pgq.JobSpec("record_after", {"seconds": 0.5}) for _ in range(16)])
    wait_until(all_succeeded(dsn, len(ids)), 30, lambda: f"jobs flow: {status_counts(dsn)}")
    assert newcomer in {pid for _, _, pid in ledger_rows(dsn, "done")}, "the new child works"

    children = child_pids(supervisor.pid)
    assert stop(supervisor) == 0
    assert not any(pid_alive(pid) for pid in children), "every child stopped"
    assert "exited with code -9; restarting" in supervisor.log()


@pytest.mark.slow
def test_ctrl_c_to_the_supervisors_process_group_still_shuts_down_gracefully(
    dsn: str, workers: WorkerProcesses
) -> None:
    """A terminal's Ctrl-C (or systemd's control-group SIGTERM) signals every process."""
    create_ledger(dsn)
    supervisor = workers.start(
        dsn, "--processes", "2", "--concurrency", "2", "--shutdown-grace-seconds", "10",
        "--lease-seconds", "30",
    )  # fmt: skip
    wait_until(lambda: listeners(dsn) == 2, 30, "both children listening")
    ids = enqueue_jobs(dsn, [pgq.JobSpec("record_after", {"seconds": 2.0}) for _ in range(2)])
    wait_until(lambda: len(ledger_rows(dsn, "start")) == 2, 20, "both jobs started")

    supervisor.signal_group(signal.SIGINT)
    assert supervisor.wait(EXIT_SECONDS) == 0
    # Shorter than the grace: they finish instead of being cut off.
    assert status_counts(dsn) == {"succeeded": 2}, supervisor.log()
    assert sorted(job_id for job_id, _, _ in ledger_rows(dsn, "done")) == sorted(ids)
