"""Draw docs/benchmarks.png from a run summary: throughput and latency per system.

    .venvs/runner/bin/python chart.py SUMMARY.json OUT.png

Run by report.py with the runner venv (matplotlib); matplotlib is imported
inside main() and typed Any, since pgq's venv (where mypy runs) does not have it.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

ORDER = (
    "pgq", "pgq-sync", "pgq-ids", "raw", "procrastinate", "pgqueuer", "pgqueuer-asyncpg", "awa",
)  # fmt: skip
COLORS = {
    "pgq": "#1f77b4",
    "pgq-sync": "#6baed6",
    "pgq-ids": "#9ecae1",
    "raw": "#7f7f7f",
    "procrastinate": "#ff7f0e",
    "pgqueuer": "#2ca02c",
    "pgqueuer-asyncpg": "#98df8a",
    "awa": "#d62728",
}
THROUGHPUT = ("enqueue_single", "enqueue_bulk", "drain_1p", "drain_2p")
LATENCY = (("latency_20", "p50_ms"), ("latency_20", "p95_ms"), ("latency_200", "p50_ms"),
           ("latency_200", "p95_ms"))  # fmt: skip


def main(summary_path: str, out_path: str) -> None:
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    summary = json.loads(Path(summary_path).read_text())
    stats = {(r["system"], r["scenario"], r["metric"]): r for r in summary["stats"]}
    systems = [s for s in ORDER if any(k[0] == s for k in stats)]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(1, len(systems))

    def bars(axis: Any, groups: list[tuple[str, str]]) -> None:
        for index, system in enumerate(systems):
            xs, ys, lows, highs = [], [], [], []
            for position, (scenario, metric) in enumerate(groups):
                row = stats.get((system, scenario, metric))
                if row is None:
                    continue
                xs.append(position + index * width - 0.4 + width / 2)
                ys.append(row["median"])
                lows.append(row["median"] - row["min"])
                highs.append(row["max"] - row["median"])
            axis.bar(xs, ys, width, yerr=[lows, highs], label=system,
                     color=COLORS.get(system), capsize=2)  # fmt: skip

    bars(left, [(s, "jobs_per_s") for s in THROUGHPUT])
    left.set_xticks(range(len(THROUGHPUT)), THROUGHPUT)
    left.set_yscale("log")
    left.set_ylabel("jobs/s (log scale, higher is better)")
    left.set_title("Throughput (median, min–max)")
    left.legend(fontsize=8)
    bars(right, list(LATENCY))
    right.set_xticks(range(len(LATENCY)), [f"{s}\n{m}" for s, m in LATENCY])
    right.set_yscale("log")
    right.set_ylabel("ms (log scale, lower is better)")
    right.set_title("Pickup latency: handler start − enqueue commit")
    figure.suptitle("pgq benchmarks: absolute numbers depend on the machine; compare ratios")
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
