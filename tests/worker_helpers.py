"""Plain helpers for the worker tests: deadlines, the ledger table, `pgq work` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
LEDGER_APP = "tests.apps.ledger:app"

# The table tests.apps.ledger writes into (one row per handler start and finish).
LEDGER_DDL = """
CREATE TABLE ledger (
    job_id  bigint NOT NULL,
    attempt integer NOT NULL,
    pid     integer NOT NULL,
    event   text NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    message: str | Callable[[], str],
    *,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it holds; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s: {text}")
        time.sleep(interval)


def create_ledger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(LEDGER_DDL)


def scalar(dsn: str, statement: str, params: Sequence[Any] | None = None) -> Any:
    """The first column of the first row of ``statement``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


def status_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM pgq.jobs GROUP BY 1").fetchall()
    return {status: int(count) for status, count in rows}


def child_pids(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, read from /proc."""
    children: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z":
            children.add(int(entry.name))
    return children


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


class WorkerProcess:
    """One `pgq work` subprocess, in its own session (process group), logging to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, argv: list[str]) -> None:
        self.popen = popen
        self.log_path = log_path
        self.argv = argv

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself (not its group)."""
        self.popen.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the whole process group, as a terminal's Ctrl-C does."""
        os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (children of a supervisor included) and reap it."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class WorkerProcesses:
    """Starts `pgq work` subprocesses for one test and kills them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, dsn: str, *args: str, app: str = LEDGER_APP) -> WorkerProcess:
        """``python -m pgq work APP ARGS...`` with ``PGQ_DSN=dsn``, run from the repo root."""
        argv = [sys.executable, "-m", "pgq", "work", app, *args]
        log_path = self.log_dir / f"worker-{len(self.started) + 1}.log"
        env = {**os.environ, "PGQ_DSN": dsn, "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(popen, log_path, argv)
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(
            f"----- {' '.join(w.argv[3:])} (pid {w.pid}, exit {w.popen.returncode}) -----\n"
            f"{w.log()}"
            for w in self.started
        )

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()
