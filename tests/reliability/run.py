"""Run the fault scenarios and report: ``python -m tests.reliability.run [--long]``.

Prints a line per scenario as it ends, then a Markdown table (the one in
docs/reliability.md), and writes every figure as JSON (by default
tests/reliability/last_run.json for the long form, last_short_run.json for the
short one). Exits 1 if any scenario broke a promise (a job lost, finished
twice, stuck, or miscounted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .checks import summary
from .scenarios import SCENARIOS, ScenarioResult, run_scenario

HERE = Path(__file__).resolve().parent
COLUMNS = (
    "scenario", "jobs", "faults", "lost", "duplicate finishes", "re-runs", "rescued",
    "recovery p50 / max", "throughput back p50 / max", "unexplained rescues", "deadlocks",
)  # fmt: skip


def table_row(result: ScenarioResult) -> list[str]:
    v = result.verdict
    return [
        result.name, f"{v.jobs:,}", str(len(result.faults)), str(v.lost),
        str(v.duplicate_finishes), f"{v.reruns:,}", f"{v.rescued:,}",
        summary([f.recovery_seconds for f in result.faults]),
        summary([f.throughput_seconds for f in result.faults]),
        str(v.unexplained_rescues), str(v.deadlocks),
    ]  # fmt: skip


def markdown_table(results: list[ScenarioResult]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in results]
    return "\n".join(lines)


def describe(result: ScenarioResult) -> str:
    """A few lines on one scenario: the verdict and what it cost."""
    v = result.verdict
    state = "ok" if not result.problems else f"{len(result.problems)} PROBLEMS"
    lines = [
        f"{result.name} ({result.form}, {result.seconds:.0f}s): {state}",
        f"  {v.jobs:,} jobs ({v.doomed_jobs} designed to fail), {len(result.faults)} faults: "
        f"{v.lost} lost, {v.duplicate_finishes} duplicate finishes, {v.unfinished} stuck",
        f"  cost: {v.reruns} re-runs ({v.interrupted_runs} runs cut short), "
        f"{v.extra_attempts} extra attempts, {v.rescued} rescued; outcomes refused by the "
        f"fence {v.fenced}, dropped on a lost lease {v.lease_lost_discards}",
        f"  recovery p50/max {summary([f.recovery_seconds for f in result.faults])}; "
        f"throughput back p50/max {summary([f.throughput_seconds for f in result.faults])}",
        f"  unexplained rescues {v.unexplained_rescues}, deadlocks {v.deadlocks}, "
        f"largest outcome batch {v.max_batch}, most leases one worker held {v.max_held}",
    ]
    lines += [f"  note: {note}" for note in result.notes]
    lines += [f"  PROBLEM: {problem}" for problem in result.problems]
    lines.append(f"  logs: {result.log_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="the long form (about 10 minutes)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario"
    )
    parser.add_argument("--json", type=Path, help="where to write the figures")
    parser.add_argument("--log-dir", type=Path, help="where to keep the logs (default: /tmp)")
    parser.add_argument("--seed", type=int, default=0, help="seed for fault timing and jobs")
    args = parser.parse_args(argv)

    form = "long" if args.long else "short"
    names = args.only or list(SCENARIOS)
    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix=f"pgq-reliability-{form}-"))
    json_path = args.json or HERE / ("last_run.json" if args.long else "last_short_run.json")
    started_wall, started = time.time(), time.monotonic()
    results: list[ScenarioResult] = []
    for name in names:
        print(f"== {name}: {SCENARIOS[name].title} ({form})", flush=True)
        result = run_scenario(name, long=args.long, log_dir=log_root / name, seed=args.seed)
        results.append(result)
        print(describe(result), flush=True)

    report: dict[str, Any] = {
        "form": form,
        "command": "bash scripts/reliability.sh"
        if args.long
        else "python -m tests.reliability.run",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall)),
        "seconds": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "ok": all(not r.problems for r in results),
        "scenarios": [r.to_json() for r in results],
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{markdown_table(results)}\n")
    print(f"{form} form: {report['seconds']:.0f}s; figures in {json_path}; logs in {log_root}")
    if not report["ok"]:
        print("FAILED: some scenario broke a promise (see PROBLEM lines above)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
