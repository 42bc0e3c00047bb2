"""docs/benchmarks.md and docs/benchmarks.png from the last full run in results/latest.jsonl.

The markdown is written here (standard library only); the chart by chart.py,
run by the runner venv's python (matplotlib lives there, not in pgq's venv).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
MARKDOWN = DOCS / "benchmarks.md"
CHART = DOCS / "benchmarks.png"
PEERS = ("procrastinate", "pgqueuer", "pgqueuer-asyncpg", "awa")
ORDER = ("pgq", "pgq-async", "pgq-tuned", "pgq-sync", "pgq-hosts", "pgq-ids", "raw", *PEERS)
#: The rows quoted against the raw ceiling and the best peer, in the ratio columns.
OURS = ("pgq", "pgq-async", "pgq-tuned")
#: The rows of the scaling table: one process, then two.
SCALED = ("pgq", "pgq-async", "pgq-tuned", "raw", "pgqueuer-asyncpg")
#: The raw ceiling's swept scenarios: each run reports the setting that won.
SWEPT = ("drain_1p", "drain_2p", "enqueue_bulk")


def last_full_run(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    full = [r for r in rows if r.get("mode") == "full"]
    if not full:
        return []
    run_id = full[-1]["run_id"]
    return [r for r in full if r["run_id"] == run_id]


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "jobs/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


class Table:
    """Medians, mins and maxes by (system, scenario, metric)."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.stats = {(r["system"], r["scenario"], r["metric"]): r for r in summary["stats"]}
        self.incomplete = {tuple(k) for k in summary["incomplete"]}
        self.failures = {(f["system"], f["scenario"]): f["errors"] for f in summary["failures"]}

    def median(self, system: str, scenario: str, metric: str) -> float | None:
        row = self.stats.get((system, scenario, metric))
        return None if row is None else float(row["median"])

    def cell(self, system: str, scenario: str, metric: str, unit: str) -> str:
        row = self.stats.get((system, scenario, metric))
        if row is None:
            return "failed" if (system, scenario) in self.failures else "–"
        text = fmt(row["median"], unit)
        if row["n"] > 1:
            text += f" ({fmt(row['min'], unit)}–{fmt(row['max'], unit)})"
        if (system, scenario) in self.incomplete:
            text += " †"
        return text

    def best_peer(self, scenario: str, metric: str, higher: bool) -> tuple[str, float] | None:
        found = [(p, v) for p in PEERS if (v := self.median(p, scenario, metric)) is not None]
        if not found:
            return None
        return max(found, key=lambda x: x[1]) if higher else min(found, key=lambda x: x[1])


def ratio(ours: float | None, other: float | None) -> str:
    if ours is None or other is None or other == 0:
        return "–"
    return f"{ours / other:.2f}×"


def targets(table: Table) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) for each target pgq is held to."""
    m = table.median
    out: list[tuple[str, str, bool | None]] = []

    def check(name: str, measured: str, met: bool | None) -> None:
        out.append((name, measured, met))

    raw_drain = m("raw", "drain_1p", "jobs_per_s")
    # The yardstick: PgQueuer with asyncpg, at its defaults (else the best peer).
    asyncpg_drain = m("pgqueuer-asyncpg", "drain_1p", "jobs_per_s")
    peer = (
        ("pgqueuer-asyncpg", asyncpg_drain)
        if asyncpg_drain
        else table.best_peer("drain_1p", "jobs_per_s", True)
    )
    for row, times, handler in (("pgq", 2, "a plain def"), ("pgq-async", 3, "an async def")):
        drain = m(row, "drain_1p", "jobs_per_s")
        if drain and peer:
            check(f"{row}: drain at every default, {handler} handler, ≥ {times}× {peer[0]}",
                  f"{fmt(drain)} vs {fmt(peer[1])} = {drain / peer[1]:.2f}×",
                  drain >= times * peer[1])  # fmt: skip
    tuned = m("pgq-tuned", "drain_1p", "jobs_per_s")
    if tuned and raw_drain:
        check("pgq-tuned: drain ≥ 70 % of the raw ceiling",
              f"{fmt(tuned)} vs {fmt(raw_drain)} = {tuned / raw_drain:.0%} of raw",
              tuned >= 0.7 * raw_drain)  # fmt: skip
    drain_sync = m("pgq-sync", "drain_1p", "jobs_per_s")
    if drain_sync and raw_drain:
        check("(pgq-tuned with `--synchronous-commit`, flushing each commit as raw does)",
              f"{drain_sync / raw_drain:.0%} of raw", drain_sync >= 0.7 * raw_drain)  # fmt: skip
    single, raw_single = (
        m("pgq", "enqueue_single", "jobs_per_s"),
        m("raw", "enqueue_single", "jobs_per_s"),
    )
    if single and raw_single:
        check("enqueue_single ≥ 95 % of raw INSERT+commit", f"{single / raw_single:.0%} of raw",
              single >= 0.95 * raw_single)  # fmt: skip
    single_peer = m("pgqueuer-asyncpg", "enqueue_single", "jobs_per_s")
    if single and single_peer:
        check("enqueue_single ≥ pgqueuer-asyncpg", f"{fmt(single)} vs {fmt(single_peer)}",
              single >= single_peer)  # fmt: skip
    bulk = m("pgq", "enqueue_bulk", "jobs_per_s")
    bulk_peer = table.best_peer("enqueue_bulk", "jobs_per_s", True)
    if bulk:
        check("enqueue_bulk ≥ 100,000 jobs/s", f"{fmt(bulk)} jobs/s", bulk >= 100_000)
    if bulk and bulk_peer:
        check("enqueue_bulk ≥ fastest peer", f"{fmt(bulk)} vs {bulk_peer[0]} {fmt(bulk_peer[1])}",
              bulk >= bulk_peer[1])  # fmt: skip
    p95 = m("pgq", "latency_20", "p95_ms")
    if p95 is not None:
        check("latency at 20/s: p95 ≤ 2 ms", f"p95 {fmt(p95)} ms", p95 <= 2)
    small, large = (
        m("pgq", "history_small", "drain_jobs_per_s"),
        m("pgq", "history_large", "drain_jobs_per_s"),
    )
    if small and large:
        check("history: large-history drain rate within 1.5× of small",
              f"{fmt(large)} vs {fmt(small)} jobs/s (large / small = {large / small:.2f}×)",
              small <= 1.5 * large)  # fmt: skip
    c_small, c_large = (
        m("pgq", "history_small", "claim_p50_ms"),
        m("pgq", "history_large", "claim_p50_ms"),
    )
    if c_small and c_large:
        check("history: large-history claim latency (p50) within 1.5× of small",
              f"{fmt(c_large)} vs {fmt(c_small)} ms", c_large <= 1.5 * c_small)  # fmt: skip
    checkpoint, end = (
        m("pgq", "memory_worker", "rss_checkpoint_mb"),
        m("pgq", "memory_worker", "rss_end_mb"),
    )
    done = m("pgq", "memory_worker", "jobs_done")
    if checkpoint and end:
        check("memory: worker RSS after all jobs within 20 % of RSS after the first 10k",
              f"{fmt(checkpoint)} → {fmt(end)} MiB after {fmt(done)} jobs",
              end <= 1.2 * checkpoint)  # fmt: skip
    return out


def render(rows: list[dict[str, Any]], chart_note: str) -> str:
    import run  # the scenario and system tables; run imports this module at its top

    summary = run.summarise(rows)
    table = Table(summary)
    versions: dict[str, dict[str, str]] = summary["versions"]
    sizes = rows[0].get("sizes", {})
    postgres = rows[0].get("postgres", "?")
    when = rows[0]["at"][:16].replace("T", " ")
    runs = max(int(r["run"]) for r in rows)
    systems = [s for s in ORDER if any(r["system"] == s for r in rows)]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python3 benchmarks/run.py` (a full run); do not edit by hand. -->",
        "",
        "pgq against Python peers and a raw-SQL ceiling, on the same PostgreSQL in the same run.",
        "**Absolute numbers depend on the machine** (and on what else it was doing): "
        "the ratios between systems measured side by side are the point.",
        "",
        f"Run `{rows[0]['run_id']}`, {when} UTC: PostgreSQL {postgres}; each scenario run "
        f"{runs} time(s), the heavy ones (history_*, memory_*) once; median with (min–max).",
        "",
        "**Machine:** 2 cores, 24 GiB, shared with other work (noisy); PostgreSQL on the same "
        "machine (127.0.0.1), default settings (`synchronous_commit=on`, `fsync=on`, "
        "`shared_buffers=128MB`). Workers, producers and the server compete for the same 2 cores.",
        "",
        "![throughput and latency per system](benchmarks.png)",
        "",
    ]
    if chart_note:
        lines += [chart_note, ""]
    lines += [
        "## Results",
        "",
        "† capped by the time limit: jobs/s over the jobs that finished.",
        "",
    ]
    ours = [s for s in OURS if s in systems]
    header = [
        "scenario",
        "metric",
        *systems,
        *(f"{s} / {o}" for o in ("raw", "best peer") for s in ours),
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scenario in run.SCENARIOS.items():
        for metric, unit, higher in scenario.metrics:
            if not any(table.stats.get((s, name, metric)) for s in systems):
                continue
            best = table.best_peer(name, metric, higher)
            cells = [table.cell(s, name, metric, unit) for s in systems]
            raw = table.median("raw", name, metric)
            cells += [ratio(table.median(s, name, metric), raw) for s in ours]
            for s in ours:
                mine = table.median(s, name, metric)
                cells.append(f"{ratio(mine, best[1])} ({best[0]})" if best and mine else "–")
            arrow = "↑" if higher else "↓"
            lines.append(f"| {name} | {metric} ({unit}) {arrow} | " + " | ".join(cells) + " |")
    lines += ["", "↑ higher is better, ↓ lower is better. Ratios are of medians.", ""]
    lines += rows_explained()
    lines += scaling(table, rows)
    lines += ceiling(rows)
    if table.failures:
        lines += ["### Failures", ""]
        for (system, scenario), errors in sorted(table.failures.items()):
            lines.append(f"- **{system}**, {scenario}: {errors[0][:400]}")
        lines.append("")
    lines += ["## Targets for pgq", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets(table):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    lines += ["", *hot_path()]
    lines += web_load(HERE / "results" / "web_load.json")
    lines += ["## Versions", "", "| system | packages |", "|---|---|"]
    for system in systems:
        found = versions.get(system, {})
        lines.append(f"| {system} | " + ", ".join(f"{k} {v}" for k, v in found.items()) + " |")
    lines += [f"| PostgreSQL | {postgres} |", ""]
    lines += method(sizes)
    return "\n".join(lines) + "\n"


def rows_explained() -> list[str]:
    """What each row runs: the defaults a user gets, unless the row's name says otherwise."""
    return [
        "## What each row runs",
        "",
        "- **pgq** is what a user gets: a plain `def` handler and `pgq work` with every option "
        "at its default (`--concurrency 10`, `--log-level info`). Sync handlers run on the "
        "worker's handler threads; the worker prefetches while handlers are quick.",
        "- **pgq-async** is the same with an `async def` handler (the drain scenarios).",
        "- **pgq-hosts** is pgq at its defaults as two separate `pgq work` processes rather "
        "than one `--processes 2` (drain_2p only; see the scaling table).",
        "- **pgq-tuned** is the same worker tuned for throughput: an `async def` handler, "
        "`--concurrency 100` and `--log-level warning`. It runs the worker scenarios only; "
        "enqueueing is the same code as the pgq row's.",
        "- **pgq-sync** is pgq-tuned with `--synchronous-commit`; **pgq-ids** is "
        "`enqueue_many` returning every id (see the method below).",
        "- **Peers run at their own defaults**, as a user who installs them gets them: "
        "procrastinate's worker runs one job at a time (`concurrency=1`), PgQueuer's "
        "`QueueManager.run()` fetches batches of 10. awa has no default worker count, so it "
        "gets pgq's default, 10. Each peer's drain can be re-checked against a standalone "
        "script that uses the peer alone: `benchmarks/plain/`.",
        "- **raw** is the ceiling: the best the same machine reaches with plain psycopg and "
        "the fewest statements a queue needs. Every ratio to raw is a ratio to that ceiling.",
        "",
    ]


def scaling(table: Table, rows: list[dict[str, Any]]) -> list[str]:
    """One worker process against two, and what the machine spent on each drain."""
    m = table.median
    lines = [
        "## Scaling: one worker process, then two",
        "",
        "drain_2p runs two worker processes: pgq's rows as `pgq work --processes 2` (one "
        "supervisor, two children), **pgq-hosts** as two separate `pgq work` processes at "
        "their defaults (what two machines would run), peers and raw as two processes each. "
        "Alongside each drain: the CPU the PostgreSQL processes and the worker processes used "
        "(in cores, over the drain, worker start-up included), the WAL written, and what the "
        "benchmark database's active backends were doing, sampled every 100 ms from "
        "`pg_stat_activity` (share of samples waiting on a heavyweight `Lock`, an internal "
        "`LWLock` such as WAL insertion, or `IO`; the rest ran on CPU or waited for their "
        "client). The machine has 2 cores for the server and the workers together.",
        "",
        "| system | processes | jobs/s | × one process | server cores | worker cores "
        "| WAL MB/s | Lock | LWLock | IO | top waits |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    one_process = {s: m(s, "drain_1p", "jobs_per_s") for s in SCALED}
    cases = [(s, "drain_1p", "1") for s in SCALED] + [(s, "drain_2p", "2") for s in SCALED]
    cases.insert(len(SCALED) + 1, ("pgq-hosts", "drain_2p", "2 separate"))
    for system, scenario, processes in cases:
        rate = m(system, scenario, "jobs_per_s")
        if rate is None:
            continue
        base = one_process["pgq" if system == "pgq-hosts" else system]
        key = (system, scenario, "jobs_per_s")
        waits = [
            r["extra"].get("top_waits")
            for r in rows
            if (r["system"], r["scenario"], r["metric"]) == key
        ]
        shares = [m(system, scenario, f"{kind}_wait_share") for kind in ("lock", "lwlock", "io")]
        lock, lwlock, io = ("–" if v is None else f"{v:.0%}" for v in shares)
        lines.append(
            f"| {system} | {processes} | {fmt(rate)} | {ratio(rate, base)} | "
            f"{fmt(m(system, scenario, 'server_cpu_cores'))} | "
            f"{fmt(m(system, scenario, 'worker_cpu_cores'))} | "
            f"{fmt(m(system, scenario, 'wal_mb_per_s'))} | {lock} | {lwlock} | {io} | "
            f"{next((w for w in reversed(waits) if w), '–')} |"
        )
    return [*lines, ""]


def ceiling(rows: list[dict[str, Any]]) -> list[str]:
    """The raw ceiling's sweep: the setting that won in each run, and every probe's rate."""
    found = [
        r for r in rows
        if r["system"] == "raw" and r["scenario"] in SWEPT and r.get("ok")
        and r["metric"] == "jobs_per_s" and r.get("extra", {}).get("setting")
    ]  # fmt: skip
    lines = [
        "## The raw ceiling",
        "",
        "A ceiling measured at one arbitrary setting is not a ceiling. For drain_1p, "
        "drain_2p and enqueue_bulk, the raw adapter first probes every setting of a sweep "
        "on a short run (10,000 jobs for a drain, 20,000 for a bulk enqueue) and then "
        "measures the full run at the fastest one. A drain sweeps the claim batch "
        "(`LIMIT` 10, 50, 100 or 500) and the claim loops per process (1, 2 or 4 threads, "
        "each on its own connection); a bulk enqueue sweeps how rows reach `COPY` "
        "(psycopg's `write_row`, or pre-joined blocks of 1,000 or 10,000 rows). "
        "enqueue_single has no knob: one bare `INSERT` and one `COMMIT` per job, on one "
        "connection, as pgq's row does it with `pgq.enqueue`. The latency, history and "
        "memory scenarios run raw at batch 100 × 2 threads.",
        "",
    ]
    if not found:
        return lines
    lines += [
        "| scenario | run | winning setting | jobs/s | probes (jobs/s) |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(found, key=lambda r: (SWEPT.index(r["scenario"]), r["run"])):
        probes = row["extra"].get("probes", {})
        shown = "; ".join(f"{k}: {fmt(v)}" for k, v in probes.items())
        lines.append(f"| {row['scenario']} | {row['run']} | {row['extra']['setting']} | "
                     f"{fmt(row['value'])} | {shown} |")  # fmt: skip
    return [*lines, ""]


def hot_path() -> list[str]:
    """How pgq's hot path is built: each choice and what it measured when it was made."""
    return [
        "## How pgq's hot path is built",
        "",
        "Each choice below was made from a profile (cProfile of the worker, `EXPLAIN "
        "(ANALYZE, WAL)`, and client and server CPU per job read from `/proc`), on this "
        "machine, on 2026-11-25 and 26; the comment at each place in the code says the same.",
        "",
        "- **Claims** are one statement per round, sized to the free slots (`LIMIT`), with "
        "`FOR UPDATE SKIP LOCKED` along the partial index `jobs_claim_idx`. The due ids are "
        "gathered once (an InitPlan) and updated through the primary key. That shape keeps a "
        "good generic plan, so the prepared statement is not planned again at each claim. "
        "Joined to a CTE instead, the generic plan hash-joined a sequential scan, so "
        "PostgreSQL re-planned every claim; the worker drained 2,800–3,100 jobs/s in process, "
        "against 4,000–4,700 after the change.",
        "- **Claim connections run with `enable_bitmapscan = off`.** Before the table's first "
        "`ANALYZE`, the planner sorted every queued job at each claim: 53 ms a claim over "
        "50,000 jobs, against 0.6 ms along the index. That cost the first second of every "
        "drain here, and it would cost a burst into a table analyzed while empty.",
        "- **Outcomes** are written by one task that batches every finished job into one "
        "statement, fenced by lease token; the batch grows with the load, with no timer. A "
        "batch of successes takes a two-parameter statement. Ids and lease tokens go to the "
        "server as one array literal: psycopg dumps a list parameter element by element in "
        "Python, and that was the worker's largest cost after waiting for the server. "
        "Statements are rendered to SQL text once (a `Composed` is rendered again at every "
        "execute) and prepared after five uses.",
        "- **Commits.** The worker's claims and outcome writes do not wait for the WAL flush "
        "(`synchronous_commit = off`): a write lost in a database crash only re-runs a job "
        "(docs/concepts/delivery.md). That made the drain 60 % faster. The **pgq-sync** row "
        "is the pgq-tuned worker with `--synchronous-commit`, which flushes every commit as "
        "raw does.",
        "- **Args** come back from a claim as JSON text and are decoded with `json.loads`, 7 µs "
        "a job cheaper than psycopg's `jsonb` loader.",
        "- **Heartbeats** extend every lease the worker holds in one statement, from their own "
        "thread and connection.",
        "- **Wake-ups**: one `NOTIFY` per queue per transaction; PostgreSQL folds identical "
        "notifications of one transaction into one.",
        "- **Enqueue.** A job without a dedupe key is a plain `INSERT ... RETURNING` that also "
        "calls `pg_notify`. The plpgsql function, whose `ON CONFLICT` makes every insert a "
        "speculative one, is kept for dedupe keys. In a loop alternating the statements, the "
        "plain insert reached 85–92 % of raw's bare `INSERT` and the function 76–77 %. Bulk "
        "enqueue streams through `COPY`. With `return_ids=False` plain chunks go straight "
        "into `jobs`, so the server stores a chunk while Python encodes the next: 64k against "
        "43k jobs/s for the id-returning call (the **pgq-ids** row).",
        "- **Start-up.** `pgq work` checks the schema revision without importing Alembic and "
        "SQLAlchemy, which had taken 0.4 s of a 1.3 s start. The drain timings include "
        "start-up.",
        "- **Tried and dropped.** Writing outcomes and the next claim in one transaction "
        "through psycopg's pipeline mode saved a commit but cost more client CPU than it "
        "saved. A staged bulk insert without `ON CONFLICT` made no measurable difference.",
        "",
        "**Where pgq falls short, and why.** *enqueue_single*: pgq's insert costs about what "
        "a bare `INSERT` plus the `NOTIFY` that wakes idle workers costs. The raw row sends no "
        "`NOTIFY`, and in the same alternating loop raw with a `NOTIFY` reached 83–86 % of raw. "
        "The rest is the wider row and the per-queue claim index. *enqueue_bulk*: the 100,000 "
        "jobs/s target is absolute. Python's validation and JSON encoding cost 7–10 µs a job "
        "on this machine, and that bounds the rate; raw's `COPY` sends pre-formatted text "
        "with no checks.",
        "",
    ]


def method(sizes: dict[str, Any]) -> list[str]:
    def n(key: str) -> str:
        value = sizes.get(key)
        return f"{value:,}" if isinstance(value, int) else str(value)

    return [
        "## Method",
        "",
        "One command: `python3 benchmarks/run.py` (see `--help`; `--smoke` is the CI check). "
        "Each system has its own virtual environment under `benchmarks/.venvs/`, built from "
        "`benchmarks/requirements/<system>.txt` with pinned versions; its adapter "
        "(`benchmarks/adapters/<system>_adapter.py`) runs as a subprocess of that venv's "
        "python and prints one JSON line. Every run of every scenario gets a fresh database "
        "(`CREATE DATABASE`, then `DROP DATABASE ... WITH (FORCE)`) and a timeout; a timeout "
        "or an error is recorded as a failure row. Systems are interleaved within each run, "
        "so drift on the shared machine hits all of them alike. Raw rows: "
        "`benchmarks/results/latest.jsonl`.",
        "",
        f"- **enqueue_single**: {n('single')} jobs, each its own committed transaction "
        "(pgq: `pgq.enqueue` + `commit`; procrastinate: `task.defer`; pgqueuer: "
        "`Queries.enqueue`; awa: `Client.insert`; raw: a bare `INSERT` + `commit`).",
        f"- **enqueue_bulk**: {n('bulk')} jobs through the bulk API: pgq `enqueue_many` fed "
        "by a generator (one transaction, COPY) with `return_ids=False`, which COPYs "
        "straight into the jobs table and returns a count; **pgq-ids** is the default call, "
        "which returns every id and so goes through a staging table (it runs enqueue_bulk "
        "and memory_enqueue only); raw `COPY`; peers' bulk calls take "
        "materialised lists, so they get chunks of 10,000 (procrastinate `batch_defer`, "
        "pgqueuer `enqueue` with lists, awa `enqueue_many_copy`).",
        f"- **drain_1p / drain_2p**: {n('drain')} no-op jobs pre-loaded through the bulk API, "
        "then `ANALYZE`, then the workers started; timed from process start until a poll of "
        "the table (every 20 ms) finds no unfinished job, so worker start-up is included. The "
        "`ANALYZE` leaves the table as autovacuum would within a minute of a bulk load. "
        "Without it, a drain starts on statistics that say the queue is empty: an earlier "
        "version of this harness skipped it, and PgQueuer then drained 50,000 jobs at a "
        "third of its rate and procrastinate at a sixth (122 against 731 jobs/s over 20,000 "
        "jobs). pgq runs its CLI (`pgq work --processes 1|2`); peers run one worker per "
        "process (procrastinate `run_worker_async()`, PgQueuer `QueueManager.run()`, awa "
        "`start([(queue, 10)])`), raw its sweep (above). Every system runs at its own "
        "defaults, LISTEN/NOTIFY on. Capped at "
        f"{n('drain_seconds')} s (†): jobs/s over the jobs that finished. pgq's worker "
        "commits its claims and outcomes with `synchronous_commit=off` by default (a write "
        "lost in a database crash only re-runs a job: docs/concepts/delivery.md); raw and "
        "the peers commit synchronously. **pgq-sync** is pgq-tuned with "
        "`--synchronous-commit`, flushing every commit as raw does; it runs the drain "
        "scenarios only.",
        "- **latency_20 / latency_200**: an idle, listening worker; "
        f"{n('latency')} jobs enqueued one by one at a steady 20 or 200 per second. Each job's "
        "commit time is `time.time()` right after its commit (producer side), the handler "
        "notes `time.time()` first thing; latency = start − commit (same machine clock). "
        "Raw adds a `NOTIFY` to each insert here, since an idle worker must be woken.",
        f"- **history_small / history_large**: {n('history_small')} or "
        f"{n('history_large')} finished jobs written straight into each system's table "
        "(`INSERT ... SELECT generate_series`, finished within the last hour so no retention "
        "prunes them during the run), then `VACUUM (ANALYZE)`: a settled history. This is "
        "written once per system into a template database that each run clones "
        f"(`CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`). Then {n('history_drain')} "
        "jobs are drained by one worker (drain rate), and 100 jobs at 50/s measure claim "
        "latency (pickup, as above). pgqueuer keeps finished jobs in `pgqueuer_log` (already "
        "aggregated), awa in `awa.done_entries`. Slow systems drain "
        f"{sizes.get('slow_factor', 0.1):.0%} as many jobs.",
        f"- **memory_worker**: {n('memory')} jobs pre-loaded; the worker process's VmRSS "
        "(`/proc/<pid>/status`) sampled as it drains: at its first finished job, after the "
        f"first 10,000 (the checkpoint) and at the end. pgq's rows get all of them (cap "
        f"{n('memory_seconds')} s); raw and the peers get "
        f"{sizes.get('peer_memory_factor', 0.3):.0%} (slow ones "
        f"{sizes.get('slow_factor', 0.1):.0%}) of the jobs and "
        f"{n('peer_memory_seconds')} s, and are compared at the point reached (`jobs_done`).",
        f"- **memory_enqueue**: {n('memory')} jobs through the bulk API in a fresh producer "
        "process; `peak_rss_mb` is its `ru_maxrss`, `growth_mb` the growth over the same "
        "process after a 10-job warm-up bulk call.",
        "",
        "Finished means: pgq not `queued`/`running`; procrastinate not `todo`/`doing`; "
        "pgqueuer no row left in its queue table; raw `done`. The harness polls one "
        "`EXISTS (... WHERE status = s)` per status, on a connection without parallel workers "
        "or JIT: an `IN (...)` list is not matched to partial indexes, and a sequential scan "
        "of a 5M-row history every 20 ms would slow the drain it times (a first version of "
        "this harness did exactly that). Statuses with no index of their own (raw `running`, "
        "procrastinate `doing`) are checked once the indexed ones are empty. awa: its handler "
        "has run (awa keeps completion receipts in rotating ring partitions that no cheap "
        "query counts, and its `queue_stats()` took minutes with history present). "
        "memory_worker counts handler records for every system, so counting a million rows "
        "every second does not load the machine the worker shares.",
        "",
    ]


def web_load(path: Path) -> list[str]:
    """The section on `pgq web` under load, from benchmarks/web_load.py's last result."""
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    when = result["at"][:16].replace("T", " ")
    lines = [
        "## pgq web under load",
        "",
        f"`benchmarks/web_load.py`, {when} UTC: `POST /api/jobs` over HTTP/1.1 keep-alive to "
        "`pgq web` (one uvicorn process, with a token) on loopback, open-loop at fixed rates for "
        f"{result['post_jobs'][0]['seconds']:g} s each, the load generator on the same 2 cores. "
        "Latency counts from each request's due time. A rate is sustained when 99 % of its "
        "requests got a 201, the server kept up, and p95 stayed under 100 ms (the bar the "
        "reference service met at 100/s).",
        "",
        "| rate (/s) | achieved (/s) | p50 (ms) | p95 (ms) | p99 (ms) | load average | sustained |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in result["post_jobs"]:
        lines.append(
            f"| {rate['target_per_second']:g} | {rate['achieved_per_second']:g} "
            f"| {rate['p50_ms']:g} | {rate['p95_ms']:g} | {rate['p99_ms']:g} "
            f"| {rate['load_average']:g} | {'yes' if rate['sustained'] else 'no'} |"
        )
    lines += ["", f"Highest rate sustained: **{result['max_sustained_per_second']:g}/s**.", ""]
    if "pages" in result:
        lines += [
            f"Pages with {result['pages_finished_jobs']:,} finished jobs in the table (a day of "
            "history, 100 dead) and what the load left queued, each fetched 20 times:",
            "",
            "| page | median (ms) | max (ms) |",
            "|---|---|---|",
            *(f"| `{page}` | {t['median_ms']:g} | {t['max_ms']:g} |"
              for page, t in result["pages"].items()),
            "",
        ]  # fmt: skip
    return lines


def write_docs(results: Path, ensure_runner: Callable[[], Path]) -> int:
    rows = last_full_run(results) if results.exists() else []
    if not rows:
        print(f"no full run in {results}: run `python3 benchmarks/run.py` first", file=sys.stderr)
        return 1
    import run

    chart_note = ""
    try:
        python = ensure_runner()
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(run.summarise(rows), handle)
        done = subprocess.run(
            [str(python), str(HERE / "chart.py"), handle.name, str(CHART)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        Path(handle.name).unlink(missing_ok=True)
        if done.returncode != 0:
            chart_note = f"(The chart could not be drawn: {done.stderr.strip()[-300:]})"
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        chart_note = f"(The chart could not be drawn: {error})"
    MARKDOWN.write_text(render(rows, chart_note))
    print(f"wrote {MARKDOWN} and {CHART}", file=sys.stderr)
    return 0
