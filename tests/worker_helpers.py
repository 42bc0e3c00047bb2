"""Helpers for the worker tests: deadlines, the ledger table, `pgq work` subprocesses, and
workers run in-process (``make_worker``, ``running``, ``eventually``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

import pgq

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


# -- `pgq work` subprocesses and what they did ---------------------------------------------


EXIT_SECONDS = 30.0


def enqueue_jobs(dsn: str, specs: list[pgq.JobSpec]) -> list[int]:
    with psycopg.connect(dsn) as conn:  # commits at exit
        return pgq.enqueue_many(conn, specs)


def jobs_by_id(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT *, status::text AS status FROM pgq.jobs").fetchall()
    return {row["id"]: row for row in rows}


def ledger_rows(dsn: str, event: str) -> list[tuple[int, int, int]]:
    """(job id, attempt, pid) of every ledger row for ``event``, oldest first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT job_id, attempt, pid FROM ledger WHERE event = %s ORDER BY at", [event]
        ).fetchall()
    return [(int(a), int(b), int(c)) for a, b, c in rows]


def count_where(dsn: str, condition: str, params: list[Any] | None = None) -> int:
    return int(scalar(dsn, f"SELECT count(*) FROM pgq.jobs WHERE {condition}", params))  # noqa: S608


def listeners(dsn: str) -> int:
    return int(
        scalar(
            dsn,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN %%'",
        )
    )


def all_succeeded(dsn: str, total: int) -> Callable[[], bool]:
    def check() -> bool:
        return status_counts(dsn).get("succeeded", 0) == total

    return check


def stop(worker: WorkerProcess, signum: int = signal.SIGTERM) -> int:
    worker.signal(signum)
    return worker.wait(EXIT_SECONDS)


def worker_pid_pattern(worker: WorkerProcess | int) -> str:
    """A LIKE pattern for ``locked_by`` (``host:pid:random``) of this worker process."""
    pid = worker if isinstance(worker, int) else worker.pid
    return f"%:{pid}:%"


# -- workers in-process ----------------------------------------------------------------------

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


# Small timings keep the tests fast; deadlines stay generous for a busy 2-core machine.
FAST_POLL_SECONDS = 0.1


SHORT_LEASE_SECONDS = 2.0


DEADLINE_SECONDS = 15.0


STOP_TIMEOUT_SECONDS = 30.0


# A far-away retry, so that a failed job waits in `queued` until the test moves it.
SLOW_RETRY = pgq.Retry(base_seconds=20.0, cap_seconds=30.0)


QUICK_RETRY = pgq.Retry(base_seconds=0.05, cap_seconds=0.05)


def make_worker(app: pgq.App, dsn: str, **options: Any) -> pgq.Worker:
    settings: dict[str, Any] = {
        "poll_seconds": FAST_POLL_SECONDS,
        "lease_seconds": SHORT_LEASE_SECONDS,
        "concurrency": 4,
        "shutdown_grace_seconds": 5.0,
        **options,
    }
    return pgq.Worker(app, dsn, **settings)


@contextlib.asynccontextmanager
async def running(worker: pgq.Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker`` in the background; stop it gracefully (and surface its errors) at exit."""
    task = asyncio.create_task(worker.run(), name="worker under test")
    try:
        yield task
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool],
    message: str | Callable[[], str],
    *,
    timeout: float = DEADLINE_SECONDS,
    worker_task: asyncio.Task[None] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout``, or at once if the worker died."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if worker_task is not None and worker_task.done():
            worker_task.result()  # raises what the worker died of
            raise AssertionError("the worker stopped on its own")
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s: {text}")
        await asyncio.sleep(interval)


async def connect(dsn: str) -> AsyncConn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def enqueue(db: AsyncConn, task: str, args: dict[str, Any] | None = None, **kw: Any) -> int:
    result = await pgq.enqueue_async(db, task, args, **kw)
    return result.id


async def fetch_job(db: AsyncConn, job_id: int) -> dict[str, Any]:
    async with db.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT *, status::text AS status, now() AS db_now FROM pgq.jobs WHERE id = %s",
            [job_id],
        )
        row = await cursor.fetchone()
    assert row is not None, f"job {job_id} not found"
    return row


async def value(db: AsyncConn, statement: str, params: list[Any] | None = None) -> Any:
    cursor = await db.execute(statement, params)
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


def has_status(db: AsyncConn, job_id: int, status: str, **columns: Any) -> Callable[[], Any]:
    async def check() -> bool:
        job = await fetch_job(db, job_id)
        return job["status"] == status and all(job[k] == v for k, v in columns.items())

    return check


def describe(dsn: str, job_id: int) -> Callable[[], str]:
    """A failure message that shows the job's row as it stands (fetched synchronously)."""

    def text() -> str:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            row = conn.execute(
                "SELECT id, task, status::text, attempts, run_at, locked_by, last_error "
                "FROM pgq.jobs WHERE id = %s",
                [job_id],
            ).fetchone()
        return f"job {job_id} is {row}"

    return text
