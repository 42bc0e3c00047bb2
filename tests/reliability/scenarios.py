"""The five fault runs, each in a short form (the test suite) and a long form (the script).

Every run: a fresh cluster, three `pgq work` processes, a producer keeping a
backlog of jobs that sleep 1-5 ms (a fifth of them async) plus a few designed to
fail, the faults, then a drain, a SIGTERM to every worker, and the checks of
checks.judge(). The result carries the figures for the report.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import faults as inject
from .checks import (
    FENCED,
    LEASE_LOST,
    Verdict,
    judge,
    percentiles,
    recovery_times,
    unexplained_rescues,
)
from .lab import WORKER_ROLE, Fault, FleetOptions, Lab


@dataclass(frozen=True)
class Size:
    """How much of a scenario to run."""

    faults: int
    spacing_seconds: float  # between faults, jittered by +-50%
    min_jobs: int  # the producer runs at least until this many jobs are enqueued
    backlog: int = 2_000
    doomed: int = 5
    hold_seconds: float = 0.0  # sigstop and connection-limit: how long the fault lasts


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    short: Size
    long: Size
    inject: Callable[[Lab, Size], list[Fault]]
    options: FleetOptions = field(default_factory=FleetOptions)


@dataclass
class ScenarioResult:
    name: str
    title: str
    form: str
    faults: list[Fault]
    verdict: Verdict
    seconds: float
    exit_codes: list[int | None]
    log_dir: Path
    notes: list[str]
    origin: float  # wall clock when the lab was ready: fault times are relative to it

    @property
    def problems(self) -> list[str]:
        return self.verdict.problems

    @property
    def recovery(self) -> dict[str, float | None]:
        times = [f.recovery_seconds for f in self.faults if f.recovery_seconds is not None]
        return percentiles(times)

    @property
    def throughput_back(self) -> dict[str, float | None]:
        times = [f.throughput_seconds for f in self.faults if f.throughput_seconds is not None]
        return percentiles(times)

    def to_json(self) -> dict[str, Any]:
        v = self.verdict

        def rounded(stats: dict[str, float | None]) -> dict[str, float | None]:
            return {k: None if x is None else round(x, 3) for k, x in stats.items()}

        return {
            "scenario": self.name, "title": self.title, "form": self.form,
            "seconds": round(self.seconds, 1), "jobs": v.jobs, "doomed_jobs": v.doomed_jobs,
            "faults": len(self.faults), "lost": v.lost, "duplicate_finishes": v.duplicate_finishes,
            "reruns": v.reruns, "interrupted_runs": v.interrupted_runs,
            "extra_attempts": v.extra_attempts, "rescued": v.rescued, "fenced": v.fenced,
            "lease_lost_discards": v.lease_lost_discards, "deadlocks": v.deadlocks,
            "unexplained_rescues": v.unexplained_rescues, "max_outcome_batch": v.max_batch,
            "max_leases_one_worker": v.max_held,
            "recovery_seconds": rounded(self.recovery),
            "throughput_back_seconds": rounded(self.throughput_back),
            "exit_codes": self.exit_codes,
            "problems": self.problems, "notes": self.notes, "log_dir": str(self.log_dir),
            "fault_log": [
                {**f.to_json(), "seconds_into_run": round(f.at - self.origin, 3)}
                for f in self.faults
            ],
        }  # fmt: skip


# -- the scenarios ------------------------------------------------------------------------------


def _sigkill(lab: Lab, size: Size) -> list[Fault]:
    return inject.sigkill_workers(lab, size.faults, size.spacing_seconds)


def _sigstop(lab: Lab, size: Size) -> list[Fault]:
    return inject.sigstop_workers(lab, size.faults, size.spacing_seconds, size.hold_seconds)


def _restart(lab: Lab, size: Size) -> list[Fault]:
    modes = [RESTART_MODES[n % len(RESTART_MODES)] for n in range(size.faults)]
    return inject.restart_postgres(lab, modes, size.spacing_seconds, size.hold_seconds)


def _terminate(lab: Lab, size: Size) -> list[Fault]:
    return inject.terminate_backends(lab, size.faults, size.spacing_seconds)


def _connection_limit(lab: Lab, size: Size) -> list[Fault]:
    return inject.fill_connection_slots(lab, size.faults, size.spacing_seconds, size.hold_seconds)


STOP_LEASE_SECONDS = 1.5
RESTART_MODES = ("fast", "immediate", "outage")

SCENARIOS = {
    s.name: s
    for s in [
        Scenario(
            "sigkill", "SIGKILL a busy worker, respawn it at once",
            short=Size(faults=6, spacing_seconds=1.5, min_jobs=10_000),
            long=Size(faults=40, spacing_seconds=2.0, min_jobs=60_000, doomed=20),
            inject=_sigkill,
        ),
        Scenario(
            "sigkill-supervised", "SIGKILL a busy child of `pgq work --processes 3`",
            short=Size(faults=4, spacing_seconds=2.0, min_jobs=5_000),
            long=Size(faults=20, spacing_seconds=3.0, min_jobs=30_000, doomed=20),
            inject=_sigkill,
            options=FleetOptions(supervised=True),
        ),
        Scenario(
            "sigstop", "SIGSTOP a busy worker past its lease, then SIGCONT",
            # Stopped for lease + rescue interval + 2.5 s: the fleet has rescued its jobs.
            short=Size(faults=2, spacing_seconds=1.0, min_jobs=5_000, hold_seconds=5.0),
            long=Size(faults=10, spacing_seconds=2.0, min_jobs=30_000, doomed=20,
                      hold_seconds=5.0),
            inject=_sigstop,
            options=FleetOptions(lease_seconds=STOP_LEASE_SECONDS),
        ),
        Scenario(
            "restart", "restart PostgreSQL: fast, immediate (crash), crash + 5 s down",
            short=Size(faults=3, spacing_seconds=3.0, min_jobs=5_000, hold_seconds=5.0),
            long=Size(faults=12, spacing_seconds=4.0, min_jobs=30_000, doomed=20,
                      hold_seconds=5.0),
            inject=_restart,
        ),
        Scenario(
            "terminate", "pg_terminate_backend every worker backend",
            short=Size(faults=4, spacing_seconds=2.0, min_jobs=5_000),
            long=Size(faults=25, spacing_seconds=2.5, min_jobs=30_000, doomed=20),
            inject=_terminate,
        ),
        Scenario(
            "connection-limit", "all connection slots taken, workers' backends ended",
            short=Size(faults=1, spacing_seconds=2.0, min_jobs=5_000, hold_seconds=4.0),
            long=Size(faults=5, spacing_seconds=4.0, min_jobs=30_000, doomed=20,
                      hold_seconds=8.0),
            inject=_connection_limit,
        ),
    ]
}  # fmt: skip

DRAIN_TIMEOUT_SECONDS = 120.0


def run_scenario(
    name: str, *, long: bool = False, log_dir: Path | None = None, seed: int = 0
) -> ScenarioResult:
    """Run one scenario on a cluster of its own and judge it."""
    scenario = SCENARIOS[name]
    size = scenario.long if long else scenario.short
    started = time.monotonic()
    with Lab(scenario.options, log_dir=log_dir, seed=seed) as lab:
        lab.start_fleet()
        producer = lab.start_producer(backlog=size.backlog, doomed=size.doomed)
        lab.sleep(1.0)  # the run is under way before the first fault
        faults = scenario.inject(lab, size)
        lab.wait(
            lambda: producer.enqueued >= size.min_jobs,
            600, f"the producer to enqueue {size.min_jobs} jobs",
        )  # fmt: skip
        lab.stop_producer()
        drained = lab.wait_drained(DRAIN_TIMEOUT_SECONDS)
        exit_codes = lab.stop_fleet()
        verdict = judge(lab, producer.ids)
        recovery_times(lab, faults)
        unexplained = unexplained_rescues(lab, faults)
        verdict.unexplained_rescues = len(unexplained)
        notes = _scenario_checks(lab, scenario, size, faults, verdict)
        notes.extend(f"unexplained rescue: {text}" for text in unexplained[:10])
        if not drained:
            verdict.problem(
                f"the queue did not drain within {DRAIN_TIMEOUT_SECONDS:g}s: {lab.status_counts()}"
            )
        if any(code != 0 for code in exit_codes):
            verdict.problem(f"workers did not exit cleanly on SIGTERM: exit codes {exit_codes}")
        return ScenarioResult(
            name, scenario.title, "long" if long else "short", faults, verdict,
            time.monotonic() - started, exit_codes, lab.log_dir, notes, lab.started_at,
        )  # fmt: skip


def _scenario_checks(
    lab: Lab, scenario: Scenario, size: Size, faults: list[Fault], verdict: Verdict
) -> list[str]:
    """Checks that the faults did what they claim; returns notes for the report."""
    notes: list[str] = []
    if len(faults) != size.faults:
        verdict.problem(f"only {len(faults)} of {size.faults} faults were injected")
    for fault in faults:
        if fault.kind not in ("sigkill", "sigstop") and fault.recovery_seconds is None:
            verdict.problem(f"no job finished after the {fault.kind} fault at {fault.at:.3f}")
    if scenario.name.startswith("sigkill") and verdict.interrupted_runs == 0:
        verdict.problem("no kill interrupted a running handler: the scenario tested nothing")
    if scenario.options.supervised:
        delays = _restart_delays(lab)
        notes.append(
            f"the supervisor restarted {len(delays)} children, after "
            f"{', '.join(f'{d:g}s' for d in delays)}"
        )
        if len(delays) != len(faults):
            verdict.problem(f"{len(faults)} children killed, {len(delays)} restarted")
    if scenario.name == "sigstop":
        _check_stopped_workers(lab, faults, verdict, notes)
    if scenario.name == "connection-limit":
        refused = _refusals(lab)
        notes.append(f"worker connection attempts refused by the server: {refused}")
        if refused == 0:
            verdict.problem("the server never refused a worker: the slots were not full")
    return notes


def _check_stopped_workers(
    lab: Lab, faults: list[Fault], verdict: Verdict, notes: list[str]
) -> None:
    """Every job rescued from a stopped worker must be dropped by it once it resumes.

    Either the heartbeat sees the lease gone first ("outcome discarded"), or the
    fenced finish_jobs matches no row ("result discarded"): one line per such job.
    """
    discards: dict[int, int] = {}
    for pid, entry, _ in lab.worker_log_lines():
        message = str((entry or {}).get("message", ""))
        if FENCED in message or LEASE_LOST in message:
            discards[pid] = discards.get(pid, 0) + 1
    rescued: dict[int, int] = {}
    for fault in faults:
        if fault.rescued == 0:
            verdict.problem(f"worker {fault.pids} was stopped but none of its jobs was rescued")
        for pid in fault.pids:
            rescued[pid] = rescued.get(pid, 0) + fault.rescued
    for pid, count in rescued.items():
        notes.append(f"pid {pid}: {count} jobs rescued while stopped, "
                     f"{discards.get(pid, 0)} outcomes discarded after SIGCONT")  # fmt: skip
        if discards.get(pid, 0) != count:
            verdict.problem(
                f"pid {pid}: {count} of its jobs were rescued while it was stopped, but it "
                f"discarded {discards.get(pid, 0)} outcomes after SIGCONT"
            )


def _refusals(lab: Lab) -> int:
    """Connections of the workers' role that the server refused (from its log)."""
    try:
        text = lab.cluster.log_file.read_text(errors="replace")
    except OSError:
        return 0
    return sum(
        1
        for line in text.splitlines()
        if f"{WORKER_ROLE}@" in line
        and "FATAL" in line
        and ("remaining connection slots" in line or "too many clients" in line)
    )


def _restart_delays(lab: Lab) -> list[float]:
    """The delays the supervisor announced before restarting a dead child, in order."""
    delays = []
    for _, entry, _ in lab.worker_log_lines():
        match = re.search(
            r"exited with code .*; restarting in ([0-9.]+)s", str((entry or {}).get("message", ""))
        )
        if match:
            delays.append(float(match.group(1)))
    return delays
