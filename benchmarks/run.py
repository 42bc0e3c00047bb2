"""Benchmark pgq against Python peers and a raw-SQL ceiling on the same PostgreSQL.

    python3 benchmarks/run.py                 # the full suite (~1 hour)
    python3 benchmarks/run.py --smoke         # pgq and raw, tiny sizes (CI)
    python3 benchmarks/run.py --systems pgq,raw --scenarios drain_1p,latency_20 --runs 5
    python3 benchmarks/run.py --report-only   # rewrite docs/benchmarks.md from the results

Each system gets its own virtual environment under benchmarks/.venvs/, built from
benchmarks/requirements/<system>.txt (pinned), so no peer's dependency touches
pgq's. Each scenario runs as a subprocess of that venv's python
(benchmarks/adapters/<system>_adapter.py) in a fresh database that is dropped
afterwards, under a timeout. Results are appended to
benchmarks/results/latest.jsonl; a full run also rewrites docs/benchmarks.md and
docs/benchmarks.png. This script needs only the standard library and ``psql``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venvs"
REQUIREMENTS = HERE / "requirements"
ADAPTERS = HERE / "adapters"
RESULTS = HERE / "results" / "latest.jsonl"
DEFAULT_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DB_PREFIX = "pgqbench_"


@dataclass(frozen=True)
class System:
    """One row of the results: which venv, which adapter, which variant of it."""

    name: str
    venv: str
    adapter: str
    variant: str = ""
    #: Drains under ~1,000 jobs/s: history and memory runs use fewer jobs (the
    #: time caps would cut them off anyway); documented in docs/benchmarks.md.
    slow: bool = False
    #: Only these scenarios (None: all): a variant that differs only in its worker.
    scenarios: tuple[str, ...] | None = None


WORKER_SCENARIOS = (
    "drain_1p", "drain_2p", "latency_20", "latency_200", "history_small", "history_large",
    "memory_worker",
)  # fmt: skip
SYSTEMS = {
    s.name: s
    for s in (
        # What a user gets: a plain `def` handler, every `pgq work` option at its default.
        System("pgq", "pgq", "pgq_adapter.py"),
        # The same defaults with an `async def` handler.
        System("pgq-async", "pgq", "pgq_adapter.py", "async", scenarios=WORKER_SCENARIOS[:2]),
        # pgq's defaults as two separate `pgq work` processes, as on two machines.
        System("pgq-hosts", "pgq", "pgq_adapter.py", "hosts", scenarios=("drain_2p",)),
        # An async handler, --concurrency 100, --log-level warning: the worker's
        # scenarios only (enqueueing is the same code as pgq's row).
        System("pgq-tuned", "pgq", "pgq_adapter.py", "tuned", scenarios=WORKER_SCENARIOS),
        # pgq-tuned with --synchronous-commit: its claims and outcomes wait for the
        # WAL flush, as raw's do.
        System("pgq-sync", "pgq", "pgq_adapter.py", "sync", scenarios=("drain_1p", "drain_2p")),
        # pgq's enqueue_many returning every id (the default), where pgq's row uses
        # return_ids=False, which streams straight into the table.
        System(
            "pgq-ids", "pgq", "pgq_adapter.py", "ids", scenarios=("enqueue_bulk", "memory_enqueue")
        ),
        System("raw", "raw", "raw_adapter.py"),
        System("procrastinate", "procrastinate", "procrastinate_adapter.py", slow=True),
        System("pgqueuer", "pgqueuer", "pgqueuer_adapter.py", "psycopg"),
        System("pgqueuer-asyncpg", "pgqueuer", "pgqueuer_adapter.py", "asyncpg"),
        System("awa", "awa", "awa_adapter.py", slow=True),
    )
}
PEERS = ("procrastinate", "pgqueuer", "pgqueuer-asyncpg", "awa")


@dataclass(frozen=True)
class Sizes:
    single: int = 2_000
    bulk: int = 100_000
    drain: int = 50_000
    latency: int = 500
    history_small: int = 10_000
    history_large: int = 5_000_000
    history_drain: int = 20_000
    memory: int = 1_000_000
    drain_seconds: float = 25.0  # cap: slow peers report jobs/s over what finished
    memory_seconds: float = 300.0  # pgq's rows: all of them at >= 3.4k jobs/s (pgq-tuned)
    peer_memory_seconds: float = 60.0  # peers and raw: RSS compared at the point reached
    slow_factor: float = 0.1  # slow systems' history and memory job counts
    peer_memory_factor: float = 0.3  # other peers' memory_worker job count


FULL = Sizes()
SMOKE = Sizes(
    single=100, bulk=500, drain=300, latency=30, history_small=1_000, history_large=20_000,
    history_drain=300, memory=2_000, drain_seconds=30.0, memory_seconds=30.0,
    peer_memory_seconds=30.0,
)  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    #: Metrics shown in the summary table, first one primary: (metric, unit, higher is better).
    metrics: tuple[tuple[str, str, bool], ...]
    description: str
    #: Runs at most once per suite (long, and not what noise affects most).
    heavy: bool = False


THROUGHPUT = (("jobs_per_s", "jobs/s", True),)
LATENCY = (("p50_ms", "ms", False), ("p95_ms", "ms", False), ("p99_ms", "ms", False))
HISTORY = (
    ("drain_jobs_per_s", "jobs/s", True),
    ("claim_p50_ms", "ms", False),
    ("claim_p95_ms", "ms", False),
)
SCENARIOS = {
    s.name: s
    for s in (
        Scenario("enqueue_single", THROUGHPUT, "jobs enqueued one per committed transaction"),
        Scenario("enqueue_bulk", THROUGHPUT, "jobs through the bulk API"),
        Scenario("drain_1p", THROUGHPUT, "pre-loaded no-op jobs drained by one worker process"),
        Scenario("drain_2p", THROUGHPUT, "the same, by two worker processes"),
        Scenario("latency_20", LATENCY, "pickup latency at 20 jobs/s to an idle worker"),
        Scenario("latency_200", LATENCY, "pickup latency at 200 jobs/s"),
        Scenario("history_small", HISTORY, "drain and claim latency, small history", heavy=True),
        Scenario("history_large", HISTORY, "drain and claim latency, large history", heavy=True),
        Scenario(
            "memory_worker",
            (
                ("rss_checkpoint_mb", "MiB", False),
                ("rss_end_mb", "MiB", False),
                ("growth_pct", "%", False),
                ("jobs_done", "jobs", True),
            ),
            "worker RSS after the first 10k jobs and after draining them all",
            heavy=True,
        ),
        Scenario(
            "memory_enqueue",
            (
                ("peak_rss_mb", "MiB", False),
                ("growth_mb", "MiB", False),
                ("jobs_per_s", "jobs/s", True),
            ),
            "producer peak RSS (ru_maxrss) while streaming jobs through the bulk API",
            heavy=True,
        ),
    )
}


def adapter_args(scenario: str, system: System, sizes: Sizes) -> tuple[list[str], float]:
    """(adapter arguments, seconds the run may take before it is killed).

    No --concurrency: every worker runs at its system's own default, as a user's would.
    """
    factor = sizes.slow_factor if system.slow else 1.0
    if scenario == "enqueue_single":
        return ["--scenario", "enqueue_single", "--jobs", str(sizes.single)], 180
    if scenario == "enqueue_bulk":
        return ["--scenario", "enqueue_bulk", "--jobs", str(sizes.bulk)], 180
    if scenario in ("drain_1p", "drain_2p"):
        processes = "1" if scenario == "drain_1p" else "2"
        limit = sizes.drain_seconds
        return [
            "--scenario", "drain", "--jobs", str(sizes.drain), "--processes", processes,
            "--time-limit", str(limit),
        ], limit + 240  # raw probes 12 settings before its measured run  # fmt: skip
    if scenario in ("latency_20", "latency_200"):
        rate = scenario.removeprefix("latency_")
        jobs = sizes.latency
        return [
            "--scenario", "latency", "--jobs", str(jobs), "--rate", rate, "--time-limit", "60",
        ], jobs / float(rate) + 120  # fmt: skip
    if scenario in ("history_small", "history_large"):
        rows = sizes.history_small if scenario == "history_small" else sizes.history_large
        jobs = max(100, int(sizes.history_drain * factor))
        return [
            "--scenario", "history", "--prepared", "--history-rows", str(rows),
            "--jobs", str(jobs), "--time-limit", "120",
        ], 300  # fmt: skip
    if scenario == "memory_worker":
        ours = system.venv == "pgq"
        share = 1.0 if ours else factor if system.slow else sizes.peer_memory_factor
        jobs = max(1_000, int(sizes.memory * share))
        limit = sizes.memory_seconds if ours else sizes.peer_memory_seconds
        return [
            "--scenario", "memory_worker", "--jobs", str(jobs),
            "--time-limit", str(limit),
        ], limit + 300  # fmt: skip
    if scenario == "memory_enqueue":
        return ["--scenario", "memory_enqueue", "--jobs", str(sizes.memory)], 600
    raise ValueError(scenario)


# -- PostgreSQL through psql --------------------------------------------------------


def psql(dsn: str, statement: str) -> str:
    psql_bin = shutil.which("psql")
    if psql_bin is None:
        raise SystemExit("psql not found: install postgresql-client")
    done = subprocess.run(
        [psql_bin, dsn, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {statement[:80]}: {done.stderr.strip()}")
    return done.stdout.strip()


def with_dbname(dsn: str, name: str) -> str:
    parts = [p for p in dsn.split() if not p.startswith("dbname=")]
    return " ".join([*parts, f"dbname={name}"])


def create_database(admin: str, name: str, template: str | None = None) -> None:
    if template:
        # FILE_COPY: copy the files (a 5M-row template in about a second) instead
        # of writing every page to WAL.
        psql(admin, f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    else:
        psql(admin, f'CREATE DATABASE "{name}"')


def drop_database(admin: str, name: str) -> None:
    try:
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except RuntimeError as error:
        print(f"warning: {error}", file=sys.stderr)


# -- virtual environments -----------------------------------------------------------


def ensure_venv(venv: str, log: list[str]) -> Path:
    """benchmarks/.venvs/<venv>, (re)built when its requirements file changed; its python."""
    requirements = REQUIREMENTS / f"{venv}.txt"
    target = VENVS / venv
    python = target / "bin" / "python"
    stamp = hashlib.sha256(
        requirements.read_bytes() + sys.version.encode() + str(REPO).encode()
    ).hexdigest()
    stamp_file = target / ".requirements-sha256"
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return python
    started = time.monotonic()
    shutil.rmtree(target, ignore_errors=True)
    # No pip inside: the orchestrator's pip installs into it (--python), which is
    # several seconds faster per venv than ensurepip.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--disable-pip-version-check", "-r", requirements.name],
        cwd=REQUIREMENTS, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "is ignored" not in line]
        shutil.rmtree(target, ignore_errors=True)
        raise RuntimeError(f"pip install -r {requirements.name} failed: " + " ".join(errors[-6:]))
    stamp_file.write_text(stamp)
    log.append(f"venv {venv}: built in {time.monotonic() - started:.1f}s")
    return python


# -- running adapters -----------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


def run_adapter(python: Path, system: System, args: list[str], timeout: float) -> Outcome:
    argv = [str(python), str(ADAPTERS / system.adapter), *args]
    if system.variant:
        argv += ["--variant", system.variant]
    started = time.monotonic()
    # A session of its own: on timeout the whole group (adapter and its workers) dies.
    process = subprocess.Popen(
        argv, cwd=ADAPTERS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return Outcome(False, error=f"timeout after {timeout:.0f}s", seconds=timeout)
    finally:
        # Workers the adapter started and did not stop (it crashed): end them too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elapsed = time.monotonic() - started
    for line in reversed(stdout.strip().splitlines()):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        return Outcome(
            bool(result.get("ok")), result.get("metrics", {}), result.get("versions", {}),
            result.get("error", ""), elapsed,
        )  # fmt: skip
    tail = (stderr or stdout).strip().splitlines()[-5:]
    return Outcome(False, error=f"exit {process.returncode}, no result: {' | '.join(tail)}")


# -- the suite -------------------------------------------------------------------------


@dataclass
class Suite:
    admin: str
    sizes: Sizes
    systems: list[str]
    scenarios: list[str]
    runs: int
    heavy_runs: int
    mode: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    rows: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    pythons: dict[str, Path] = field(default_factory=dict)
    venv_errors: dict[str, str] = field(default_factory=dict)
    templates: dict[tuple[str, str], str] = field(default_factory=dict)
    postgres: str = ""

    def record(self, system: str, scenario: str, run: int, outcome: Outcome) -> None:
        base = {
            "run_id": self.run_id, "mode": self.mode, "at": datetime.now(UTC).isoformat(),
            "system": system, "scenario": scenario, "run": run, "postgres": self.postgres,
            "versions": outcome.versions, "seconds": round(outcome.seconds, 2),
        }  # fmt: skip
        if not outcome.ok:
            self.rows.append({**base, "ok": False, "error": outcome.error, "metric": None,
                              "value": None, "unit": None})  # fmt: skip
            return
        units = {m: u for m, u, _ in SCENARIOS[scenario].metrics}
        extras = {k: v for k, v in outcome.metrics.items() if not isinstance(v, int | float)}
        for metric, value in outcome.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self.rows.append({**base, "ok": True, "metric": metric, "value": value,
                              "unit": units.get(metric, unit_of(metric)),
                              "complete": outcome.metrics.get("complete", True),
                              "extra": extras})  # fmt: skip

    def python_for(self, system: System) -> Path | None:
        if system.venv in self.venv_errors:
            return None
        if system.venv not in self.pythons:
            try:
                self.pythons[system.venv] = ensure_venv(system.venv, self.log)
            except (RuntimeError, subprocess.CalledProcessError) as error:
                self.venv_errors[system.venv] = str(error)
                return None
        return self.pythons[system.venv]

    def template(self, system: System, python: Path, scenario: str, args: list[str]) -> str:
        """A database with the history written once; each run clones it (a fresh database)."""
        # By venv: a system's variants (pgq, pgq-tuned) write the same history.
        key = (system.venv, scenario)
        if key not in self.templates:
            name = f"{DB_PREFIX}tpl_{system.venv}_{scenario}_{self.run_id}"
            create_database(self.admin, name)
            rows = args[args.index("--history-rows") + 1]
            outcome = run_adapter(
                python, system,
                ["--scenario", "prepare_history", "--history-rows", rows,
                 "--dsn", with_dbname(self.admin, name)],
                timeout=900,
            )  # fmt: skip
            if not outcome.ok:
                drop_database(self.admin, name)
                raise RuntimeError(f"writing {rows} history rows failed: {outcome.error}")
            self.log.append(f"{system.name}: {rows} history rows written in {outcome.seconds:.0f}s")
            self.templates[key] = name
        return self.templates[key]

    def run_one(self, system: System, scenario: str, run: int) -> None:
        python = self.python_for(system)
        if python is None:
            self.record(system.name, scenario, run,
                        Outcome(False, error=self.venv_errors[system.venv]))  # fmt: skip
            return
        args, timeout = adapter_args(scenario, system, self.sizes)
        name = f"{DB_PREFIX}{system.name.replace('-', '_')}_{scenario}_{run}_{self.run_id}"
        try:
            if "--prepared" in args:
                create_database(self.admin, name, self.template(system, python, scenario, args))
            else:
                create_database(self.admin, name)
        except RuntimeError as error:
            self.record(system.name, scenario, run, Outcome(False, error=str(error)))
            return
        try:
            outcome = run_adapter(
                python, system, [*args, "--dsn", with_dbname(self.admin, name)], timeout
            )
        finally:
            drop_database(self.admin, name)
        self.record(system.name, scenario, run, outcome)
        shown = "ok" if outcome.ok else f"FAILED: {outcome.error[:200]}"
        print(f"  {system.name:<17} {scenario:<15} run {run}  {outcome.seconds:6.1f}s  {shown}",
              file=sys.stderr, flush=True)  # fmt: skip

    def run(self) -> None:
        self.postgres = psql(self.admin, "SHOW server_version")
        try:
            for run in range(1, self.runs + 1):
                for scenario in self.scenarios:
                    if SCENARIOS[scenario].heavy and run > self.heavy_runs:
                        continue
                    # Systems interleaved within each run: drift on a shared
                    # machine then hits every system alike.
                    for system in self.systems:
                        only = SYSTEMS[system].scenarios
                        if only is None or scenario in only:
                            self.run_one(SYSTEMS[system], scenario, run)
        finally:
            for template in self.templates.values():
                drop_database(self.admin, template)


def unit_of(metric: str) -> str:
    if metric.endswith("_ms"):
        return "ms"
    if metric.endswith("_mb"):
        return "MiB"
    if metric.endswith("per_s"):
        return "jobs/s"
    if metric.endswith("_pct"):
        return "%"
    if metric.endswith("seconds"):
        return "s"
    return ""


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max per (system, scenario, metric), plus failures."""
    values: dict[tuple[str, str, str], list[float]] = {}
    incomplete: set[tuple[str, str]] = set()
    failures: dict[tuple[str, str], list[str]] = {}
    versions: dict[str, dict[str, str]] = {}
    for row in rows:
        key = (row["system"], row["scenario"])
        if row.get("versions"):
            versions.setdefault(row["system"], row["versions"])
        if not row["ok"]:
            failures.setdefault(key, []).append(row["error"])
            continue
        values.setdefault((*key, row["metric"]), []).append(float(row["value"]))
        if not row.get("complete", True):
            incomplete.add(key)
    stats = [
        {"system": s, "scenario": sc, "metric": m, "median": statistics.median(v),
         "min": min(v), "max": max(v), "n": len(v)}
        for (s, sc, m), v in values.items()
    ]  # fmt: skip
    return {
        "stats": stats,
        "incomplete": sorted([list(k) for k in incomplete]),
        "failures": [{"system": s, "scenario": sc, "errors": e} for (s, sc), e in failures.items()],
        "versions": versions,
    }


def print_table(summary: dict[str, Any], scenarios: list[str], systems: list[str]) -> None:
    stats = {(r["system"], r["scenario"], r["metric"]): r for r in summary["stats"]}
    incomplete = {tuple(k) for k in summary["incomplete"]}
    print(f"\n{'scenario':<15} {'metric':<18} {'system':<17} {'median':>12} {'min':>12} "
          f"{'max':>12}  n")  # fmt: skip
    for scenario in scenarios:
        for metric, unit, _ in SCENARIOS[scenario].metrics:
            for system in systems:
                row = stats.get((system, scenario, metric))
                if row is None:
                    continue
                flag = " (capped)" if (system, scenario) in incomplete else ""
                print(f"{scenario:<15} {metric + ' ' + unit:<18} {system:<17} "
                      f"{row['median']:>12,.2f} {row['min']:>12,.2f} {row['max']:>12,.2f}  "
                      f"{row['n']}{flag}")  # fmt: skip
    for failure in summary["failures"]:
        print(f"FAILED {failure['system']} {failure['scenario']}: {failure['errors'][0][:300]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios: " + ", ".join(SCENARIOS) + "\nsystems: " + ", ".join(SYSTEMS),
    )
    parser.add_argument("--smoke", action="store_true", help="pgq and raw, tiny sizes, one run")
    parser.add_argument("--systems", help="comma-separated (default: all; smoke: pgq,raw)")
    parser.add_argument("--scenarios", help="comma-separated (default: all)")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3; smoke 1)")
    parser.add_argument(
        "--heavy-runs", type=int, default=1,
        help="runs of history_*, memory_worker and memory_enqueue (default 1)",
    )  # fmt: skip
    parser.add_argument("--history-rows", type=int, help="large history size (default 5,000,000)")
    parser.add_argument("--memory-jobs", type=int, help="memory scenarios' jobs (default 1M)")
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_DSN", DEFAULT_DSN),
        help="an admin DSN: databases are created and dropped through it",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines appended here")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.*")
    parser.add_argument(
        "--report-only", action="store_true",
        help="rewrite docs/benchmarks.md and .png from the last full run in --results",
    )  # fmt: skip
    return parser.parse_args(argv)


def pick(value: str | None, default: Sequence[str], known: dict[str, Any], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()] if value else list(default)
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report.write_docs(args.results, ensure_runner=lambda: ensure_venv("runner", []))
    sizes = SMOKE if args.smoke else FULL
    if args.history_rows:
        sizes = Sizes(**{**sizes.__dict__, "history_large": args.history_rows})
    if args.memory_jobs:
        sizes = Sizes(**{**sizes.__dict__, "memory": args.memory_jobs})
    systems = pick(args.systems, ["pgq", "raw"] if args.smoke else list(SYSTEMS), SYSTEMS,
                   "systems")  # fmt: skip
    scenarios = pick(args.scenarios, list(SCENARIOS), SCENARIOS, "scenarios")
    runs = args.runs or (1 if args.smoke else 3)
    full = not args.smoke and set(systems) == set(SYSTEMS) and set(scenarios) == set(SCENARIOS)
    suite = Suite(
        admin=args.dsn, sizes=sizes, systems=systems, scenarios=scenarios, runs=runs,
        heavy_runs=min(runs, args.heavy_runs), mode="smoke" if args.smoke else
        ("full" if full else "partial"),
    )  # fmt: skip
    started = time.monotonic()
    print(f"benchmarks ({suite.mode}, run {suite.run_id}): {', '.join(systems)}; "
          f"{', '.join(scenarios)}; {runs} runs", file=sys.stderr, flush=True)  # fmt: skip
    try:
        suite.run()
    finally:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as out:
            for row in suite.rows:
                out.write(json.dumps({**row, "sizes": sizes.__dict__}) + "\n")
    for line in suite.log:
        print(line, file=sys.stderr)
    summary = summarise(suite.rows)
    print_table(summary, scenarios, systems)
    print(f"\n{len(suite.rows)} result rows appended to {args.results} "
          f"({time.monotonic() - started:.0f}s)")  # fmt: skip
    if full and not args.no_docs:
        report.write_docs(args.results, ensure_runner=lambda: ensure_venv("runner", suite.log))
    failed = len(summary["failures"])
    if args.smoke:
        # In smoke sizes every drain finishes in seconds: one that hit its cap is broken.
        failed += len(summary["incomplete"])
    if failed:
        print(f"{failed} scenario(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
