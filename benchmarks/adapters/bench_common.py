"""The harness every adapter shares: arguments, scenario drivers, measurements.

An adapter file (``<system>_adapter.py``) runs under its own system's virtual
environment. It describes *how* its system enqueues, runs a worker and counts
unfinished jobs (the ``Adapter`` protocol below); this module drives the *same*
scenarios for every system and prints one JSON line with the measurements.

Only the standard library and psycopg are used here: every system's venv pins
the same psycopg, which the harness needs to poll tables and to write history.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import psycopg
from bench_resources import ResourceSampler

# Jobs carry {"seq": n}; warm-up jobs use negative seqs so they never collide.
WARMUP_JOBS = 3
# Latency probes use seqs from here on, apart from the jobs a scenario drained before.
LATENCY_SEQ_BASE = 1_000_000_000
POLL_SECONDS = 0.02
STOP_GRACE_SECONDS = 15.0
RECORD_ENV = "BENCH_RECORD"


# -- what an adapter provides --------------------------------------------------


class Monitor(Protocol):
    """Counts a system's unfinished jobs (queued or running) from the outside."""

    def any_unfinished(self) -> bool: ...

    def unfinished(self) -> int: ...

    def close(self) -> None: ...


class Adapter(Protocol):
    """One system under test. Every method works on the database named by ``dsn``."""

    @property
    def name(self) -> str:
        """The row name in the results: "pgq", "raw", "pgqueuer-asyncpg", ..."""

    @property
    def packages(self) -> Sequence[str]:
        """Distributions whose versions are reported."""

    @property
    def needs_record(self) -> bool:
        """True when the monitor counts handler records instead of querying tables (awa)."""

    def install(self, dsn: str) -> None:
        """Create the system's schema in an empty database."""

    def enqueue_each(self, dsn: str, seqs: Iterable[int], committed: Callable[[int], None]) -> None:
        """One job per seq, each in its own committed transaction; ``committed(seq)`` after each."""

    def enqueue_bulk(self, dsn: str, count: int) -> None:
        """``count`` jobs (seq 0..count-1) through the system's bulk API, streamed or chunked."""

    def monitor(self, dsn: str, record: Path | None, expected: int) -> Monitor:
        """An observer of unfinished jobs (``expected`` were enqueued; ``record`` as above)."""

    def insert_history(self, conn: psycopg.Connection[Any], rows: int) -> None:
        """``rows`` finished jobs, written straight into the system's table(s) with SQL."""

    def worker_commands(
        self, dsn: str, processes: int, concurrency: int | None
    ) -> list[tuple[list[str], Path]]:
        """(argv, cwd) per process to start; one command may start a whole fleet (pgq's CLI).

        ``concurrency`` None: the system's own default, which is what a user gets.
        """

    def run_worker(self, dsn: str, concurrency: int | None) -> None:
        """Run the system's worker in this process until SIGTERM (the ``--role worker`` entry)."""


class SqlMonitor:
    """A Monitor for systems whose unfinished jobs are rows with given statuses.

    One query per status, never ``status IN (...)``: the planner does not split
    an IN list over partial indexes, and a sequential scan of a 5M-row history
    every 20 ms (with parallel workers) would slow the very drain it times.
    Statuses without an index of their own are checked only once the indexed
    ones are empty (in practice, at the end of a drain).
    """

    def __init__(
        self, dsn: str, table: str, indexed: Sequence[str], unindexed: Sequence[str] = ()
    ) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        # A monitor must stay light: no parallel workers, no JIT compilation.
        self.conn.execute("SET max_parallel_workers_per_gather = 0")
        self.conn.execute("SET jit = off")
        self.indexed = list(indexed)
        self.unindexed = list(unindexed)
        # table is a constant of the adapters, never input.
        self.exists_sql = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE status = %s)"  # noqa: S608
        self.count_sql = f"SELECT count(*) FROM {table} WHERE status = %s"  # noqa: S608

    def _exists(self, status: str) -> bool:
        row = self.conn.execute(self.exists_sql, [status], prepare=True).fetchone()
        return bool(row and row[0])

    def any_unfinished(self) -> bool:
        return any(self._exists(s) for s in self.indexed) or any(
            self._exists(s) for s in self.unindexed
        )

    def unfinished(self) -> int:
        total = 0
        for status in self.indexed + self.unindexed:
            row = self.conn.execute(self.count_sql, [status], prepare=True).fetchone()
            total += int(row[0]) if row else 0
        return total

    def close(self) -> None:
        self.conn.close()


class RecordMonitor:
    """A Monitor that counts finished jobs from the handlers' start records.

    For a system whose finished jobs no cheap query counts (awa keeps completion
    receipts in rotating ring partitions). A no-op handler finishes right after
    it starts, so this undercounts the elapsed time by one acknowledgement at most.
    """

    def __init__(self, record: Path | None, expected: int) -> None:
        if record is None:
            raise ScenarioError("this system's monitor needs a record file")
        self.record = record
        self.expected = expected
        self.seen: set[int] = set()
        self.offset = 0
        self.partial = b""

    def _read(self) -> None:
        try:
            with self.record.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            seq = int(line.split(b" ", 1)[0])
            if 0 <= seq < LATENCY_SEQ_BASE:
                self.seen.add(seq)

    def any_unfinished(self) -> bool:
        self._read()
        return len(self.seen) < self.expected

    def unfinished(self) -> int:
        self._read()
        return max(0, self.expected - len(self.seen))

    def close(self) -> None:
        pass


# -- handler side --------------------------------------------------------------

_record_fd: int | None = None


def record_start(seq: int) -> None:
    """Called first thing in every handler: note when job ``seq`` started (if recording)."""
    global _record_fd
    now = time.time()
    if _record_fd is None:
        path = os.environ.get(RECORD_ENV)
        if not path:
            return
        _record_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    # One write per line on an O_APPEND file: lines from two processes never interleave.
    os.write(_record_fd, f"{seq} {now:.6f}\n".encode())


def read_records(path: Path) -> dict[int, float]:
    starts: dict[int, float] = {}
    if not path.exists():
        return starts
    for line in path.read_text().splitlines():
        seq, _, at = line.partition(" ")
        if at:
            starts.setdefault(int(seq), float(at))  # first start wins (a retry would be later)
    return starts


# -- measurements ----------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """VmRSS of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def versions(packages: Sequence[str]) -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# -- workers ----------------------------------------------------------------------


@dataclass
class Fleet:
    """The worker processes of one scenario."""

    processes: list[subprocess.Popen[bytes]]
    started: float
    log: Path

    def pid(self) -> int:
        return self.processes[0].pid

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except FileNotFoundError:
            return ""


def start_fleet(
    adapter: Adapter, dsn: str, processes: int, concurrency: int | None, record: Path | None
) -> Fleet:
    env = dict(os.environ)
    if record is not None:
        env[RECORD_ENV] = str(record)
    else:
        env.pop(RECORD_ENV, None)
    log = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1])
    handle = log.open("ab")
    started = time.monotonic()
    popen = [
        subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        for argv, cwd in adapter.worker_commands(dsn, processes, concurrency)
    ]
    handle.close()
    return Fleet(popen, started, log)


class ScenarioError(RuntimeError):
    """The scenario could not produce a measurement."""


def wait_drained(monitor: Monitor, fleet: Fleet, deadline: float) -> float:
    """Poll until no job is unfinished; return when that was seen (monotonic), or the deadline."""
    while time.monotonic() < deadline:
        if not monitor.any_unfinished():
            return time.monotonic()
        if not fleet.alive():
            raise ScenarioError(f"a worker process exited early:\n{fleet.tail()}")
        time.sleep(POLL_SECONDS)
    return time.monotonic()


# -- scenarios ------------------------------------------------------------------------


def paced(count: int, rate: float, first: int = 0) -> Iterator[int]:
    """Seqs first..first+count-1, each yielded at its slot on a steady ``rate`` per second."""
    start = time.monotonic()
    for index in range(count):
        slot = start + index / rate
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield first + index


def scenario_enqueue_single(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    adapter.install(args.dsn)
    started = time.perf_counter()
    adapter.enqueue_each(args.dsn, range(args.jobs), lambda _seq: None)
    elapsed = time.perf_counter() - started
    check_count(adapter, args.dsn, args.jobs)
    return {"jobs_per_s": args.jobs / elapsed, "seconds": elapsed, "jobs": args.jobs}


def scenario_enqueue_bulk(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    adapter.install(args.dsn)
    started = time.perf_counter()
    adapter.enqueue_bulk(args.dsn, args.jobs)
    elapsed = time.perf_counter() - started
    check_count(adapter, args.dsn, args.jobs)
    return {"jobs_per_s": args.jobs / elapsed, "seconds": elapsed, "jobs": args.jobs}


def check_count(adapter: Adapter, dsn: str, expected: int) -> None:
    monitor = adapter.monitor(dsn, None, expected)
    try:
        found = monitor.unfinished()
    finally:
        monitor.close()
    if found != expected:
        raise ScenarioError(f"expected {expected} queued jobs after enqueue, found {found}")


def drain(adapter: Adapter, args: argparse.Namespace, jobs: int, processes: int) -> dict[str, Any]:
    """Time ``processes`` workers from spawn until ``jobs`` pre-loaded jobs are all finished."""
    record = new_record() if adapter.needs_record else None
    monitor = adapter.monitor(args.dsn, record, jobs)
    sampler = ResourceSampler(args.dsn)
    try:
        sampler.start()
        fleet = start_fleet(adapter, args.dsn, processes, args.concurrency, record)
        try:
            finished_at = wait_drained(monitor, fleet, fleet.started + args.time_limit)
            elapsed = finished_at - fleet.started
            # While the workers live: a supervisor's children count with it.
            resources = sampler.stop(elapsed, [p.pid for p in fleet.processes])
            left = monitor.unfinished()
        finally:
            fleet.stop()
    finally:
        monitor.close()
        if record is not None:
            record.unlink(missing_ok=True)
    done = jobs - left
    return {
        "jobs_per_s": done / elapsed,
        "seconds": elapsed,
        "jobs": jobs,
        "jobs_done": done,
        "complete": left == 0,
        **resources,
    }


def analyze(dsn: str) -> None:
    """Settle the freshly loaded table(s) as autovacuum would within a minute of a bulk load.

    Without it a drain starts on statistics that say the queue is empty, and
    the peers' claim queries are planned for that: PgQueuer drained 50,000
    jobs at a third of the rate it reaches once the table is analyzed, and
    procrastinate slower still. Every system gets the same ANALYZE.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")


def new_record() -> Path:
    return Path(tempfile.mkstemp(prefix="bench-record-")[1])


def scenario_drain(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    adapter.install(args.dsn)
    adapter.enqueue_bulk(args.dsn, args.jobs)
    analyze(args.dsn)
    return drain(adapter, args, args.jobs, args.processes)


def pickup_latencies(
    adapter: Adapter, args: argparse.Namespace, fleet: Fleet, record: Path, count: int, rate: float
) -> dict[str, Any]:
    """Enqueue ``count`` jobs at ``rate``/s to an idle worker; latency = handler start - commit."""
    committed: dict[int, float] = {}

    def note(seq: int) -> None:
        committed[seq] = time.time()

    # Warm-up: the worker is listening and idle once these few have started.
    adapter.enqueue_each(args.dsn, range(-WARMUP_JOBS, 0), lambda _seq: None)
    wait_for_records(record, WARMUP_JOBS, fleet, time.monotonic() + 60)
    time.sleep(0.5)
    base = len(read_records(record))
    adapter.enqueue_each(args.dsn, paced(count, rate, LATENCY_SEQ_BASE), note)
    wait_for_records(record, base + count, fleet, time.monotonic() + args.time_limit)
    starts = read_records(record)
    latencies = [(starts[s] - t) * 1000 for s, t in committed.items() if s in starts]
    if len(latencies) < count:
        raise ScenarioError(f"only {len(latencies)} of {count} jobs started in time")
    return {
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
        "jobs": count,
        "rate_per_s": rate,
    }


def wait_for_records(record: Path, count: int, fleet: Fleet, deadline: float) -> None:
    while time.monotonic() < deadline:
        if len(read_records(record)) >= count:
            return
        if not fleet.alive():
            raise ScenarioError(f"the worker exited early:\n{fleet.tail()}")
        time.sleep(0.05)
    raise ScenarioError(f"timed out waiting for {count} jobs to start")


def scenario_latency(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    adapter.install(args.dsn)
    record = new_record()
    fleet = start_fleet(adapter, args.dsn, 1, args.concurrency, record)
    try:
        return pickup_latencies(adapter, args, fleet, record, args.jobs, args.rate)
    finally:
        fleet.stop()
        record.unlink(missing_ok=True)


def scenario_prepare_history(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Install, then write ``history_rows`` finished jobs (run.py keeps it as a template)."""
    adapter.install(args.dsn)
    started = time.perf_counter()
    with psycopg.connect(args.dsn) as conn:
        adapter.insert_history(conn, args.history_rows)
        conn.commit()
        # A settled history, as autovacuum would leave it: visibility map and statistics.
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE)")
    return {"history_rows": args.history_rows, "seconds": time.perf_counter() - started}


def scenario_history(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Drain rate and claim (pickup) latency with finished history already in the table."""
    if not args.prepared:
        scenario_prepare_history(adapter, args)
    adapter.enqueue_bulk(args.dsn, args.jobs)
    record = new_record()
    monitor = adapter.monitor(args.dsn, record, args.jobs)
    fleet = start_fleet(adapter, args.dsn, 1, args.concurrency, record)
    try:
        finished_at = wait_drained(monitor, fleet, fleet.started + args.time_limit)
        left = monitor.unfinished()
        if left:
            raise ScenarioError(f"{left} of {args.jobs} jobs unfinished after {args.time_limit}s")
        drained = args.jobs / (finished_at - fleet.started)
        latency = pickup_latencies(adapter, args, fleet, record, args.claim_jobs, args.claim_rate)
    finally:
        fleet.stop()
        monitor.close()
        record.unlink(missing_ok=True)
    return {
        "drain_jobs_per_s": drained,
        "claim_p50_ms": latency["p50_ms"],
        "claim_p95_ms": latency["p95_ms"],
        "history_rows": args.history_rows,
        "jobs": args.jobs,
    }


def scenario_memory_worker(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Worker RSS at start, after the first 10k jobs (or 1%), and after draining them all."""
    adapter.install(args.dsn)
    adapter.enqueue_bulk(args.dsn, args.jobs)
    analyze(args.dsn)
    checkpoint = min(10_000, max(1, args.jobs // 100))
    # Counted from the handlers' records for every system: counting a million
    # rows every second would load the machine the worker shares.
    record = new_record()
    monitor = RecordMonitor(record, args.jobs)
    fleet = start_fleet(adapter, args.dsn, 1, args.concurrency, record)
    samples: list[tuple[float, int, float]] = []  # (seconds, jobs done, RSS MiB)
    rss_start = rss_checkpoint = None
    try:
        deadline = fleet.started + args.time_limit
        while time.monotonic() < deadline:
            if not fleet.alive():
                raise ScenarioError(f"the worker exited early:\n{fleet.tail()}")
            done = args.jobs - monitor.unfinished()
            rss = rss_mb(fleet.pid())
            if rss is not None:
                samples.append((time.monotonic() - fleet.started, done, rss))
                if rss_start is None and done > 0:
                    rss_start = rss
                if rss_checkpoint is None and done >= checkpoint:
                    rss_checkpoint = rss
            if done >= args.jobs:
                break
            time.sleep(1.0 if args.jobs > 100_000 else 0.2)
        elapsed = time.monotonic() - fleet.started
        rss_end = rss_mb(fleet.pid())
        done = args.jobs - monitor.unfinished()
    finally:
        fleet.stop()
        monitor.close()
        record.unlink(missing_ok=True)
    if rss_start is None or rss_end is None:
        raise ScenarioError(f"no RSS sample after the first jobs (samples: {samples[:5]})")
    growth: dict[str, float] = {}
    if rss_checkpoint is not None:
        growth = {
            "rss_checkpoint_mb": rss_checkpoint,
            "growth_pct": (rss_end - rss_checkpoint) / rss_checkpoint * 100,
        }
    return {
        "rss_start_mb": rss_start,
        **growth,
        "rss_end_mb": rss_end,
        "checkpoint_jobs": checkpoint,
        "jobs": args.jobs,
        "jobs_done": done,
        "jobs_per_s": done / elapsed,
        "complete": done >= args.jobs,
        "samples": [
            [round(s, 1), d, round(r, 1)] for s, d, r in samples[:: max(1, len(samples) // 40)]
        ],
    }


def scenario_memory_enqueue(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """The producer's peak RSS while it streams ``jobs`` through the bulk API."""
    adapter.install(args.dsn)
    adapter.enqueue_bulk(args.dsn, 10)  # connect and import whatever the bulk path needs
    baseline = peak_rss_mb()
    started = time.perf_counter()
    adapter.enqueue_bulk(args.dsn, args.jobs)
    elapsed = time.perf_counter() - started
    peak = peak_rss_mb()
    return {
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "growth_mb": peak - baseline,
        "jobs_per_s": args.jobs / elapsed,
        "jobs": args.jobs,
    }


SCENARIOS: dict[str, Callable[[Adapter, argparse.Namespace], dict[str, Any]]] = {
    "enqueue_single": scenario_enqueue_single,
    "enqueue_bulk": scenario_enqueue_bulk,
    "drain": scenario_drain,
    "latency": scenario_latency,
    "prepare_history": scenario_prepare_history,
    "history": scenario_history,
    "memory_worker": scenario_memory_worker,
    "memory_enqueue": scenario_memory_enqueue,
}


# -- entry point ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one benchmark scenario for one system.")
    parser.add_argument("--role", choices=["bench", "worker"], default="bench")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="enqueue_single")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument(
        "--concurrency", type=int, help="jobs at once per process (default: the system's own)"
    )
    parser.add_argument("--setting", default="", help="a swept setting of the raw ceiling")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="latency: jobs per second")
    parser.add_argument("--history-rows", type=int, default=10_000)
    parser.add_argument("--prepared", action="store_true", help="history already written")
    parser.add_argument("--claim-jobs", type=int, default=100)
    parser.add_argument("--claim-rate", type=float, default=50.0)
    parser.add_argument("--time-limit", type=float, default=60.0, help="cap on waiting, seconds")
    parser.add_argument("--variant", default="", help="a system's second row (pgqueuer: asyncpg)")
    return parser.parse_args(argv)


Scenario = Callable[[Any, argparse.Namespace], dict[str, Any]]


def main(
    make_adapter: Callable[[str], Adapter],
    overrides: dict[str, Scenario] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Run one scenario (or, with ``--role worker``, a worker) and print one JSON line.

    ``overrides`` replaces scenarios by name for one adapter (raw's sweeps).
    """
    args = parse_args(argv)
    scenarios = {**SCENARIOS, **(overrides or {})}
    adapter = make_adapter(args.variant)
    if args.role == "worker":
        adapter.run_worker(args.dsn, args.concurrency)
        return
    result: dict[str, Any] = {
        "system": adapter.name,
        "scenario": args.scenario,
        "versions": versions(adapter.packages),
    }
    try:
        result["metrics"] = scenarios[args.scenario](adapter, args)
        result["ok"] = True
    except Exception as error:
        result["ok"] = False
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-3000:]
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Peers' native threads (awa's runtime) may keep the interpreter alive.
    os._exit(0 if result["ok"] else 1)
