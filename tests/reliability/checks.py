"""The verdict after a fault run: what the ledger, the finishes table and pgq.jobs say.

A *problem* is a broken promise (a job lost, stuck, finished twice, never run, or
its attempts miscounted); *figures* are what the faults cost (re-runs, recovery
times). A run with problems fails, a run with costly figures only reports them.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .lab import Fault, Lab
from .producer import DOOMED_TASK, POISON_TASK

# Kinds whose damage is one worker's leases: recovery is when rescue returned them.
ONE_WORKER_FAULTS = ("sigkill", "sigstop")

# Log messages a worker writes when it drops an outcome it no longer owns.
FENCED = "result discarded"  # finish_jobs matched no row: the database refused it
LEASE_LOST = "outcome discarded"  # the heartbeat saw the lease gone first

JOBS_SQL = """
SELECT j.id, j.task, j.status::text, j.attempts, j.max_attempts,
       jsonb_array_length(j.errors),
       coalesce(l.starts, 0), coalesce(l.ends, 0), coalesce(f.finishes, 0)
FROM pgq.jobs AS j
LEFT JOIN (
    SELECT job_id,
           count(*) FILTER (WHERE event = 'start') AS starts,
           count(*) FILTER (WHERE event = 'end') AS ends
    FROM ledger GROUP BY job_id
) AS l ON l.job_id = j.id
LEFT JOIN (SELECT job_id, count(*) AS finishes FROM finishes GROUP BY job_id) AS f
    ON f.job_id = j.id
"""

STRAYS_SQL = """
SELECT (SELECT count(*) FROM finishes WHERE job_id NOT IN (SELECT id FROM pgq.jobs)),
       (SELECT count(*) FROM ledger WHERE job_id NOT IN (SELECT id FROM pgq.jobs))
"""


@dataclass
class Verdict:
    """Counts over every job of a run; ``problems`` lists each broken promise."""

    jobs: int = 0
    doomed_jobs: int = 0
    succeeded: int = 0
    dead: int = 0
    lost: int = 0
    unfinished: int = 0
    duplicate_finishes: int = 0
    missing_finishes: int = 0
    never_ran: int = 0
    reruns: int = 0
    interrupted_runs: int = 0
    extra_attempts: int = 0
    attempt_mismatches: int = 0
    rescued: int = 0
    fenced: int = 0
    lease_lost_discards: int = 0
    deadlocks: int = 0
    unexplained_rescues: int = 0
    max_batch: int = 0
    max_held: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def _sample(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in sorted(ids)[:10])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > 10 else "")


def judge(lab: Lab, enqueued_ids: list[int]) -> Verdict:
    """Check every job of the run against the promises (see the module docstring)."""
    verdict = Verdict()
    rows = lab.query(JOBS_SQL)
    present = {int(row[0]) for row in rows}
    missing_ids = [i for i in enqueued_ids if i not in present]
    lost: list[int] = list(missing_ids)
    stuck: list[int] = []
    doubled: list[int] = []
    unrecorded: list[int] = []
    never: list[int] = []
    miscounted: list[int] = []
    poison_ran: list[int] = []
    for job_id, task, status, attempts, max_attempts, errors, starts, ends, finishes in rows:
        poison = task == POISON_TASK
        doomed = task == DOOMED_TASK or poison
        verdict.jobs += 1
        verdict.doomed_jobs += doomed
        verdict.succeeded += status == "succeeded"
        verdict.dead += status == "dead"
        if status in ("queued", "running"):
            stuck.append(job_id)
        if status != ("dead" if doomed else "succeeded"):
            lost.append(job_id)
        if finishes > 1:
            doubled.append(job_id)
            verdict.duplicate_finishes += finishes - 1
        if status in ("succeeded", "dead") and finishes == 0:
            unrecorded.append(job_id)
        if status not in ("succeeded", "dead") and finishes > 0:
            doubled.append(job_id)  # finished, then moved on: a finish that did not hold
        # A normal job must have run to its end at least once; a doomed one must have started;
        # a poison one must never have started (dead on its claim).
        if poison and starts > 0:
            poison_ran.append(job_id)
        elif (doomed and not poison and starts == 0) or (not doomed and ends == 0):
            never.append(job_id)
        if not doomed:
            verdict.reruns += starts - 1 if starts else 0
            verdict.interrupted_runs += starts - ends
            verdict.extra_attempts += attempts - 1
        # Every attempt but a successful one leaves exactly one entry in errors.
        expected_errors = attempts - (1 if status == "succeeded" else 0)
        if status in ("succeeded", "dead") and errors != expected_errors:
            miscounted.append(job_id)
        if doomed and not poison and status == "dead" and attempts != max_attempts:
            miscounted.append(job_id)
        if poison and status == "dead" and attempts != 1:
            miscounted.append(job_id)
    verdict.lost = len(lost)
    verdict.unfinished = len(stuck)
    verdict.missing_finishes = len(unrecorded)
    verdict.never_ran = len(never)
    verdict.attempt_mismatches = len(miscounted)
    if missing_ids:
        verdict.problem(f"enqueued jobs missing from pgq.jobs: {_sample(missing_ids)}")
    if lost:
        verdict.problem(f"{len(lost)} jobs lost (not succeeded, or dead though not doomed): "
                        f"{_sample(lost)}")  # fmt: skip
    if stuck:
        verdict.problem(f"{len(stuck)} jobs stuck in queued/running: {_sample(stuck)}")
    if doubled:
        verdict.problem(f"{verdict.duplicate_finishes} duplicate finishes, on jobs "
                        f"{_sample(doubled)}")  # fmt: skip
    if unrecorded:
        verdict.problem(f"finished jobs with no finishes row: {_sample(unrecorded)}")
    if never:
        verdict.problem(f"{len(never)} jobs never ran to their end: {_sample(never)}")
    if poison_ran:
        verdict.problem(f"{len(poison_ran)} poison jobs ran a handler: {_sample(poison_ran)}")
    if miscounted:
        verdict.problem(f"{len(miscounted)} jobs whose attempts do not match their errors: "
                        f"{_sample(miscounted)}")  # fmt: skip
    stray_finishes, stray_ledger = lab.query(STRAYS_SQL)[0]
    if stray_finishes or stray_ledger:
        verdict.problem(f"rows for unknown jobs: {stray_finishes} finishes, {stray_ledger} ledger")
    verdict.rescued = int(lab.query("SELECT count(*) FROM rescues")[0][0])
    _read_logs(lab, verdict)
    verdict.deadlocks = server_log(lab).count("deadlock detected")
    batch = lab.query(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM finishes GROUP BY xact) AS b"
    )
    verdict.max_batch = int(batch[0][0])
    verdict.max_held = lab.max_held
    return verdict


def server_log(lab: Lab) -> str:
    try:
        return lab.cluster.log_file.read_text(errors="replace")
    except OSError:
        return ""


def _read_logs(lab: Lab, verdict: Verdict) -> None:
    """Count discarded outcomes; anything a worker printed outside its JSON log is a problem."""
    strays: Counter[str] = Counter()
    for _, entry, line in lab.worker_log_lines():
        if entry is None:
            if line.strip():
                strays[line.strip()[:200]] += 1
            continue
        message = str(entry.get("message", ""))
        died = re.search(r"\(pid (\d+)\) exited with code (-?\d+)", message)
        if died and int(died.group(1)) not in lab.killed:
            verdict.problem(f"a child of the supervisor died by itself: {message}")
        verdict.fenced += FENCED in message
        verdict.lease_lost_discards += LEASE_LOST in message
    if strays:
        shown = "\n".join(f"  {count}x {line}" for line, count in strays.most_common(10))
        verdict.problem(f"workers wrote lines outside their JSON log (a crash?):\n{shown}")
    for exit_note in lab.unexpected_exits:
        verdict.problem(exit_note)


def recovery_times(lab: Lab, faults: list[Fault]) -> None:
    """Fill in each fault's ``recovery_seconds`` and ``rescued`` from the database's tables.

    One-worker faults (sigkill, sigstop): from the fault to the last rescue of the jobs
    that worker held, i.e. until everything it held was back in the queue. Faults that
    hit every worker: from the end of the fault to the next finish in the database,
    i.e. until jobs were being finished again.
    """
    for index, fault in enumerate(faults):
        if fault.kind in ONE_WORKER_FAULTS:
            later = [f.at for f in faults[index + 1 :] if set(f.pids) & set(fault.pids)]
            until = min(later, default=fault.at + 600)
            patterns = [f"%:{pid}:%" for pid in fault.pids]
            row = lab.query(
                "SELECT count(*), extract(epoch FROM max(at))::float8 FROM rescues "
                "WHERE worker LIKE ANY(%s) AND at >= to_timestamp(%s) AND at < to_timestamp(%s)",
                [patterns, fault.at, until],
            )[0]
            fault.rescued = int(row[0])
            fault.recovery_seconds = None if row[1] is None else float(row[1]) - fault.at
        else:
            row = lab.query(
                "SELECT extract(epoch FROM min(at))::float8 FROM finishes "
                "WHERE at > to_timestamp(%s)",
                [fault.end],
            )[0]
            fault.recovery_seconds = None if row[0] is None else float(row[0]) - fault.end
        fault.throughput_seconds = throughput_back(lab, fault)


# A statement sent just before a SIGKILL or SIGSTOP still runs: the server may claim
# jobs for a worker a moment after it died (now() is when the server started it).
IN_FLIGHT_SECONDS = 1.0


def unexplained_rescues(lab: Lab, faults: list[Fault]) -> list[str]:
    """Rescues that no fault explains: a lease lapsed on a live worker with the database up.

    A rescue is explained by a SIGKILL or SIGSTOP of its worker after the claim (or up
    to a second before it: a claim sent just before the signal still runs), or by
    a fault that hit every worker (restart, terminate, connection limit) while the
    lease was held. Any other rescue means a healthy worker failed to extend a lease.
    """
    rows = lab.query(
        "SELECT job_id, worker, extract(epoch FROM claimed_at)::float8, "
        "extract(epoch FROM at)::float8 FROM rescues ORDER BY at"
    )
    found = []
    for job_id, worker, claimed_at, rescued_at in rows:
        pid = int(str(worker).split(":")[1]) if worker and str(worker).count(":") >= 2 else -1
        claimed = float(claimed_at) if claimed_at is not None else 0.0
        explained = any(
            (pid in f.pids and claimed <= f.end + IN_FLIGHT_SECONDS and f.at <= rescued_at)
            if f.kind in ONE_WORKER_FAULTS
            else (claimed <= f.end and rescued_at >= f.at)
            for f in faults
        )
        if not explained:
            found.append(
                f"job {job_id}: lease of {worker} claimed at {claimed:.3f}, rescued "
                f"{rescued_at - claimed:.2f}s later"
            )
    return found


THROUGHPUT_WINDOW_SECONDS = 1.0
THROUGHPUT_BASELINE_SECONDS = 5
THROUGHPUT_SHARE = 0.5


def throughput_back(lab: Lab, fault: Fault, horizon: float = 60.0) -> float | None:
    """Seconds from the end of ``fault`` until finishes run at half their usual rate again.

    The usual rate is the median of the finishes in each of the five seconds before
    the fault (a median, because outcomes are written in batches and a backlog flushed
    after an earlier fault is a burst). The answer is the start of the first one-second
    window, sliding by 0.1 s from the fault's end, with at least half that many
    finishes. None if nothing finished before the fault.
    """
    rows = lab.query(
        "SELECT extract(epoch FROM at)::float8 FROM finishes "
        "WHERE at >= to_timestamp(%s) AND at < to_timestamp(%s) ORDER BY at",
        [fault.at - THROUGHPUT_BASELINE_SECONDS, fault.end + horizon],
    )
    times = [float(row[0]) for row in rows]
    bins = [0] * THROUGHPUT_BASELINE_SECONDS
    for t in times:
        if t < fault.at:
            bins[min(int(fault.at - t), THROUGHPUT_BASELINE_SECONDS - 1)] += 1
    usual = statistics.median(bins)
    if usual <= 0:
        return None
    wanted = THROUGHPUT_SHARE * usual * THROUGHPUT_WINDOW_SECONDS
    after = [t for t in times if t >= fault.end]
    first = 0
    for step in range(int(horizon * 10)):
        window_start = fault.end + step / 10
        while first < len(after) and after[first] < window_start:
            first += 1
        last = first
        while last < len(after) and after[last] < window_start + THROUGHPUT_WINDOW_SECONDS:
            last += 1
        if last - first >= wanted:
            return step / 10
    return None


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and max of ``values`` (None when there are none)."""
    if not values:
        return {"p50": None, "max": None}
    return {"p50": statistics.median(values), "max": max(values)}


def summary(values: list[Any]) -> str:
    numbers = [float(v) for v in values if v is not None]
    stats = percentiles(numbers)
    if stats["p50"] is None or stats["max"] is None:
        return "n/a"
    return f"{stats['p50']:.2f}s / {stats['max']:.2f}s"
