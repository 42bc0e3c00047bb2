"""The lab one fault run happens in: a cluster of its own, pgq's schema, the ledger, the
workers and a producer.

Each scenario gets a fresh throwaway cluster (tests/pgcluster.py), so it may stop,
crash or fill it at will. Workers connect as ``reliability_worker``, a login role
with only pgq's least-privilege ``pgq_worker`` grants (plus INSERT on the ledger):
that is how a deployment runs them, it lets a fault pick out the workers' backends
by user, and it lets the connection-limit fault lock them out while the harness,
a superuser, keeps the reserved slots.

The producer (producer.py) keeps a backlog of due jobs, and a run ends when both
its faults are injected and its minimum number of jobs is enqueued.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

import pgq
import pgq.migrate
import pgq.roles
from pgcluster import ThrowawayCluster
from worker_helpers import WorkerProcess, WorkerProcesses, child_pids

from .producer import Producer

APP = "tests.reliability.app:app"
DBNAME = "pgq_reliability"
WORKER_ROLE = "reliability_worker"
FILLER_ROLE = "reliability_filler"

# ALTER SYSTEM settings, applied with one restart before the run. More reserved
# slots: the connection-limit fault fills every other slot, and the harness (a
# superuser) must still get in. The log prefix names the user of each refusal.
CLUSTER_SETTINGS = {
    "superuser_reserved_connections": "10",
    "log_line_prefix": "%m [%p] %u@%d ",
}

# The role names are WORKER_ROLE and FILLER_ROLE.
SETUP_SQL = """
CREATE ROLE reliability_worker LOGIN;
GRANT pgq_worker TO reliability_worker;
CREATE ROLE reliability_filler LOGIN;

-- One row per handler start and end (tests/reliability/app.py writes it).
CREATE TABLE ledger (
    job_id  bigint NOT NULL,
    attempt integer NOT NULL,
    pid     integer NOT NULL,
    event   text NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
GRANT INSERT ON ledger TO reliability_worker;

-- One row per real finalization in the database (a job set to succeeded or dead),
-- whoever wrote it: exactly one per job, or a fence failed.
CREATE TABLE finishes (
    job_id      bigint NOT NULL,
    status      text NOT NULL,
    lease_token uuid,
    attempts    integer NOT NULL,
    worker      text,
    claimed_at  timestamptz,
    -- The writing transaction: rows per transaction are the outcome batch sizes.
    xact        bigint NOT NULL DEFAULT txid_current(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per rescue (a running job whose lease expired, sent back to queued or dead).
CREATE TABLE rescues (
    job_id      bigint NOT NULL,
    status      text NOT NULL,
    lease_token uuid,
    attempts    integer NOT NULL,
    worker      text,
    claimed_at  timestamptz,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- SECURITY DEFINER: the workers' role cannot write these tables itself.
CREATE FUNCTION reliability_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.status::text IN ('succeeded', 'dead') THEN
        INSERT INTO public.finishes (job_id, status, lease_token, attempts, worker, claimed_at)
        VALUES (NEW.id, NEW.status::text, NEW.lease_token, NEW.attempts, OLD.locked_by,
                OLD.started_at);
    END IF;
    -- rescue_jobs is the only writer that appends a 'worker lost' error.
    IF OLD.status::text = 'running'
       AND jsonb_array_length(NEW.errors) > jsonb_array_length(OLD.errors)
       AND NEW.errors -> -1 ->> 'error' LIKE 'worker lost:%' THEN
        INSERT INTO public.rescues (job_id, status, lease_token, attempts, worker, claimed_at)
        VALUES (NEW.id, NEW.status::text, OLD.lease_token, NEW.attempts, OLD.locked_by,
                OLD.started_at);
    END IF;
    RETURN NULL;
END
$$;

-- UPDATE OF status fires whenever a statement sets status, even to the same value:
-- a second write of 'succeeded' over 'succeeded' would be counted too.
CREATE TRIGGER reliability_record
AFTER UPDATE OF status ON pgq.jobs
FOR EACH ROW EXECUTE FUNCTION reliability_record();
"""


@dataclass(frozen=True)
class FleetOptions:
    """How the `pgq work` processes run (one process per slot, each respawned when killed)."""

    workers: int = 3
    concurrency: int = 4
    lease_seconds: float = 2.0
    poll_seconds: float = 0.5
    shutdown_grace_seconds: float = 5.0
    #: One `pgq work --processes N` (its supervisor restarts killed children) instead of N.
    supervised: bool = False
    extra_args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return [
            *self.extra_args,
            "--concurrency", str(self.concurrency),
            "--lease-seconds", str(self.lease_seconds),
            "--poll-seconds", str(self.poll_seconds),
            "--shutdown-grace-seconds", str(self.shutdown_grace_seconds),
            # Keep every finished job for the checks.
            "--keep-succeeded", "forever", "--keep-dead", "forever",
            "--log-level", "warning", "--log-format", "json",
        ]  # fmt: skip


@dataclass
class Fault:
    """One injected fault: what, when (wall clock, seconds), and which worker processes."""

    kind: str
    at: float
    end: float
    pids: list[int] = field(default_factory=list)
    detail: str = ""
    #: Filled in by checks.recovery_times(): see docs/reliability.md for each kind.
    recovery_seconds: float | None = None
    #: Filled in by checks.throughput_back(): until finishes ran at half their rate again.
    throughput_seconds: float | None = None
    #: Jobs the fault cost their lease (rescued from the affected workers).
    rescued: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "duration_seconds": round(self.end - self.at, 3),
            "pids": self.pids,
            "detail": self.detail,
            "recovery_seconds": (
                None if self.recovery_seconds is None else round(self.recovery_seconds, 3)
            ),
            "throughput_seconds": (
                None if self.throughput_seconds is None else round(self.throughput_seconds, 3)
            ),
            "rescued": self.rescued,
        }


class Lab:
    """A cluster, a migrated database and a fleet of `pgq work` processes, for one fault run.

    Example::

        with Lab(FleetOptions()) as lab:
            lab.start_fleet()
            lab.start_producer(backlog=2_000, doomed=5)
            lab.kill_worker(lab.worker_pids()[0])
            ...
    """

    def __init__(self, options: FleetOptions, *, log_dir: Path | None = None, seed: int = 0):
        self.options = options
        self.seed = seed
        self.random = random.Random(seed)
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pgq-reliability-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = ThrowawayCluster()
        self.admin_dsn = self.cluster.dsn(DBNAME)
        self.worker_dsn = make_conninfo(self.admin_dsn, user=WORKER_ROLE)
        self.filler_dsn = make_conninfo(self.admin_dsn, user=FILLER_ROLE)
        self.processes = WorkerProcesses(self.log_dir)
        self.slots: list[WorkerProcess] = []
        self.killed: set[int] = set()
        self.unexpected_exits: list[str] = []
        self.producer: Producer | None = None
        self.started_at = time.time()
        self.max_held = 0  # most running jobs (leases) one worker held at a sample
        self._sampled_at = 0.0
        self._monitor: psycopg.Connection[tuple[Any, ...]] | None = None

    # -- set-up and tear-down -------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _set_up(self) -> None:
        self.cluster.start()
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            for name, value in CLUSTER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute(f"CREATE DATABASE {DBNAME}")
        self.cluster.restart("fast")
        pgq.migrate.migrate(self.admin_dsn)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            pgq.roles.grant_roles(conn)
            conn.execute(SETUP_SQL)
        self.started_at = time.time()

    def close(self) -> None:
        """Kill every process the lab started and remove the cluster (logs stay in log_dir)."""
        try:
            if self.producer is not None:
                self.producer.stop()
            self.processes.kill_all()
            if self._monitor is not None:
                self._monitor.close()
            if self.cluster.running:
                self._dump_tables()
        finally:
            # Keep the server log next to the workers' logs: it names deadlocks and refusals.
            with suppress(OSError):
                shutil.copyfile(self.cluster.log_file, self.log_dir / "postgresql.log")
            self.cluster.cleanup()

    def _dump_tables(self) -> None:
        """Save what a post-mortem needs (rescues, jobs that took more than one attempt)."""
        dumps = {
            "rescues.csv": "SELECT * FROM rescues ORDER BY at",
            "retried_jobs.csv": "SELECT id, task, status, attempts, last_error, errors "
            "FROM pgq.jobs WHERE attempts > 1 OR status <> 'succeeded' ORDER BY id",
        }
        with suppress(psycopg.Error), psycopg.connect(self.admin_dsn, connect_timeout=5) as conn:
            for name, statement in dumps.items():
                with (self.log_dir / name).open("wb") as out, conn.cursor() as cursor:
                    with cursor.copy(f"COPY ({statement}) TO STDOUT WITH CSV HEADER") as copy:
                        for chunk in copy:
                            out.write(chunk)

    # -- the database, as the harness sees it ---------------------------------------------

    def query(
        self, statement: str, params: Sequence[Any] | None = None, *, retry_seconds: float = 60
    ) -> list[tuple[Any, ...]]:
        """Run ``statement`` on the harness's connection, retrying while the server is away."""
        deadline = time.monotonic() + retry_seconds
        while True:
            try:
                if self._monitor is None or self._monitor.closed or self._monitor.broken:
                    self._monitor = psycopg.connect(
                        self.admin_dsn, autocommit=True, connect_timeout=5
                    )
                return self._monitor.execute(statement, params).fetchall()
            except psycopg.OperationalError:
                if self._monitor is not None:
                    self._monitor.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def status_counts(self) -> dict[str, int]:
        rows = self.query("SELECT status::text, count(*) FROM pgq.jobs GROUP BY 1")
        return {str(status): int(count) for status, count in rows}

    def unfinished(self) -> int:
        counts = self.status_counts()
        return counts.get("queued", 0) + counts.get("running", 0)

    def worker_backends(self) -> int:
        rows = self.query("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [WORKER_ROLE])
        return int(rows[0][0])

    def listeners(self) -> int:
        rows = self.query(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND query ILIKE 'LISTEN %%'",
            [WORKER_ROLE],
        )
        return int(rows[0][0])

    def running_by_pid(self, *, retry_seconds: float = 60) -> dict[int, int]:
        """Running jobs per worker pid (``locked_by`` is ``host:pid:random``)."""
        rows = self.query(
            "SELECT split_part(locked_by, ':', 2)::int, count(*) FROM pgq.jobs "
            "WHERE status = 'running' GROUP BY 1",
            retry_seconds=retry_seconds,
        )
        return {int(pid): int(count) for pid, count in rows}

    def terminate_workers(self) -> int:
        """pg_terminate_backend every backend of the workers' role; how many were ended."""
        rows = self.query(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = %s",
            [WORKER_ROLE],
        )
        return int(rows[0][0])

    # -- the workers ----------------------------------------------------------------------

    def _spawn(self) -> WorkerProcess:
        argv = self.options.argv()
        if self.options.supervised:
            argv += ["--processes", str(self.options.workers)]
        return self.processes.start(self.worker_dsn, *argv, app=APP)

    def start_fleet(self, timeout: float = 60) -> None:
        """Start the workers; return once all of them are listening.

        One `pgq work` per slot, or with ``supervised`` one `pgq work --processes N`
        whose supervisor starts (and restarts) the N worker processes.
        """
        count = 1 if self.options.supervised else self.options.workers
        self.slots = [self._spawn() for _ in range(count)]
        self.wait(
            lambda: self.listeners() >= self.options.workers, timeout, "every worker listening"
        )

    def add_worker(self) -> WorkerProcess:
        """One more `pgq work` process (a worker that joins the fleet mid-run)."""
        worker = self._spawn()
        self.slots.append(worker)
        return worker

    def worker_pids(self) -> list[int]:
        """The processes that run jobs: the slots, or the supervisor's children."""
        if self.options.supervised:
            return sorted(pid for sup in self.slots for pid in child_pids(sup.pid))
        return [worker.pid for worker in self.slots]

    def kill_worker(self, pid: int) -> None:
        """SIGKILL a worker process; a replacement starts at once (or as the supervisor decides)."""
        self.killed.add(pid)
        if self.options.supervised:
            with suppress(ProcessLookupError):  # it may have died meanwhile
                os.kill(pid, signal.SIGKILL)
            return
        slot = next(n for n, worker in enumerate(self.slots) if worker.pid == pid)
        self.slots[slot].kill()
        self.slots[slot] = self._spawn()

    def signal_worker(self, pid: int, signum: int) -> None:
        os.kill(pid, signum)

    def reap(self) -> None:
        """Replace any worker that exited without being killed on purpose, and note it."""
        for slot, worker in enumerate(self.slots):
            if worker.running() or worker.pid in self.killed:
                continue
            tail = "\n".join(worker.log().splitlines()[-20:])
            self.unexpected_exits.append(
                f"worker pid {worker.pid} exited by itself with code {worker.popen.returncode}:"
                f"\n{tail}"
            )
            self.slots[slot] = self._spawn()

    def stop_fleet(self) -> list[int | None]:
        """SIGTERM every worker and wait for it; their exit codes (None: had to be killed)."""
        codes: list[int | None] = []
        for worker in self.slots:
            if worker.running():
                worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.shutdown_grace_seconds + 30
        for worker in self.slots:
            try:
                codes.append(worker.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(None)
        return codes

    def worker_log_lines(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        """(pid, parsed JSON or None, raw line) for every line every worker logged.

        The pid is the one in the JSON line when there is one: a supervisor's log
        holds its children's lines too.
        """
        for worker in self.processes.started:
            for line in worker.log().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if not isinstance(entry, dict):
                    yield worker.pid, None, line
                    continue
                yield int(entry.get("pid", worker.pid)), entry, line

    # -- the producer ---------------------------------------------------------------------

    def start_producer(self, *, backlog: int, doomed: int) -> Producer:
        self.producer = Producer(self.admin_dsn, backlog=backlog, doomed=doomed, seed=self.seed)
        self.producer.start()
        return self.producer

    def stop_producer(self) -> None:
        if self.producer is not None:
            self.producer.stop()

    # -- time -----------------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Sleep, replacing workers that died by themselves meanwhile (and sampling leases)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            self.reap()
            self._sample_leases()

    def _sample_leases(self) -> None:
        """Track the most leases one worker held at once (at most every half second)."""
        now = time.monotonic()
        if now - self._sampled_at < 0.5 or not self.cluster.running:
            return
        self._sampled_at = now
        with suppress(psycopg.Error):
            held = self.running_by_pid(retry_seconds=0)
            self.max_held = max([self.max_held, *held.values()])

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            self.sleep(0.1)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until no job is queued or running; False on timeout."""
        try:
            self.wait(lambda: self.unfinished() == 0, timeout, "the queue to drain")
        except TimeoutError:
            return False
        return True


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP process ``pid`` for the duration of the block, SIGCONT after (even on error)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
