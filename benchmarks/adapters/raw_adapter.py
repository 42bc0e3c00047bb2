"""The raw-SQL ceiling: a minimal jobs table and the fewest statements a queue needs.

No framework, no retries, no leases: a claim is one batch
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``,
completion one ``UPDATE ... WHERE id = ANY(...)``. enqueue_single is a bare INSERT
and commit; bulk is COPY. Only the latency scenario adds a NOTIFY to each
insert, since an idle worker must be woken.

A ceiling must be the best this loop reaches, not one arbitrary setting of it:
drain and enqueue_bulk first probe each setting of their sweep on a short run,
then measure the full run at the fastest one, and report which setting won.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import bench_common
import psycopg

HERE = Path(__file__).resolve().parent
CHANNEL = "raw_jobs"

SCHEMA = """
CREATE TABLE jobs (
    id     bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued',
    run_at timestamptz NOT NULL DEFAULT now(),
    args   jsonb NOT NULL
);
CREATE INDEX jobs_queued_idx ON jobs (run_at, id) WHERE status = 'queued';
"""

CLAIM = """
UPDATE jobs SET status = 'running'
WHERE id IN (
    SELECT id FROM jobs
    WHERE status = 'queued' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, args
"""

INSERT = "INSERT INTO jobs (args) VALUES (%s)"
COMPLETE = "UPDATE jobs SET status = 'done' WHERE id = ANY(%s)"


@dataclass(frozen=True)
class DrainSetting:
    """Jobs per claim, and claim loops (threads, each on its own connection) per process."""

    batch: int
    threads: int

    def __str__(self) -> str:
        return f"batch {self.batch} × {self.threads} thread{'s' if self.threads > 1 else ''}"

    def option(self) -> str:
        return f"{self.batch}x{self.threads}"

    @classmethod
    def parse(cls, text: str) -> DrainSetting:
        batch, _, threads = text.partition("x")
        return cls(int(batch), int(threads))


@dataclass(frozen=True)
class BulkSetting:
    """Rows per write to the COPY stream: 1 is psycopg's write_row; more are pre-joined text."""

    rows_per_write: int

    def __str__(self) -> str:
        return "write_row" if self.rows_per_write == 1 else f"{self.rows_per_write:,}-row blocks"


DRAIN_SWEEP = tuple(DrainSetting(b, t) for b in (10, 50, 100, 500) for t in (1, 2, 4))
BULK_SWEEP = (BulkSetting(1), BulkSetting(1_000), BulkSetting(10_000))
# Where no sweep runs (latency, history, memory): near the top of every drain sweep here.
DEFAULT_DRAIN = DrainSetting(100, 2)
# Short enough that a sweep costs seconds; long enough that start-up does not decide it.
DRAIN_PROBE_JOBS = 10_000
BULK_PROBE_JOBS = 20_000


def noop(seq: int) -> None:
    bench_common.record_start(seq)


class RawAdapter:
    name = "raw"
    needs_record = False
    packages = ("psycopg", "psycopg-binary")

    def __init__(self, drain: DrainSetting = DEFAULT_DRAIN, notify: bool = False) -> None:
        self.drain = drain
        self.bulk = BulkSetting(1)
        #: Set by the latency scenarios: enqueue_each then also wakes the worker.
        self.notify = notify

    def install(self, dsn: str) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(SCHEMA)

    def enqueue_each(self, dsn: str, seqs: Iterable[int], committed: Callable[[int], None]) -> None:
        with psycopg.connect(dsn) as conn:
            for seq in seqs:
                conn.execute(INSERT, [json.dumps({"seq": seq})], prepare=True)
                if self.notify:
                    conn.execute(f"NOTIFY {CHANNEL}")
                conn.commit()
                committed(seq)

    def enqueue_bulk(self, dsn: str, count: int) -> None:
        block = self.bulk.rows_per_write
        with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
            with cursor.copy("COPY jobs (args) FROM STDIN") as copy:
                if block == 1:
                    for seq in range(count):
                        copy.write_row([f'{{"seq":{seq}}}'])
                else:
                    for start in range(0, count, block):
                        end = min(count, start + block)
                        copy.write("".join(f'{{"seq":{n}}}\n' for n in range(start, end)))
            conn.execute(f"NOTIFY {CHANNEL}")

    def monitor(self, dsn: str, record: Path | None, expected: int) -> bench_common.Monitor:
        return bench_common.SqlMonitor(dsn, "jobs", ["queued"], ["running"])

    def insert_history(self, conn: psycopg.Connection[Any], rows: int) -> None:
        conn.execute(
            """
            INSERT INTO jobs (status, run_at, args)
            SELECT 'done', now() - interval '1 hour', jsonb_build_object('seq', -g)
            FROM generate_series(1, %s) AS g
            """,
            [rows],
        )

    def worker_commands(
        self, dsn: str, processes: int, concurrency: int | None
    ) -> list[tuple[list[str], Path]]:
        argv = [sys.executable, str(HERE / "raw_adapter.py"), "--role", "worker", "--dsn", dsn,
                "--setting", self.drain.option()]  # fmt: skip
        return [(argv, HERE) for _ in range(processes)]

    def run_worker(self, dsn: str, concurrency: int | None) -> None:
        stopping = threading.Event()

        def stop(_signum: int, _frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # Daemon threads: a loop idle in its LISTEN wait must not hold up the exit
        # (every probe of a sweep stops a worker, and the harness waits for it).
        loops = [
            threading.Thread(target=claim_loop, args=(dsn, self.drain.batch, stopping), daemon=True)
            for _ in range(self.drain.threads)
        ]
        for loop in loops:
            loop.start()
        # Signals reach only the main thread: it waits here, waking to let them in.
        while not stopping.wait(0.1):
            if not all(loop.is_alive() for loop in loops):
                raise SystemExit("a claim loop died")


def claim_loop(dsn: str, batch: int, stopping: threading.Event) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as listener,
    ):
        listener.execute(f"LISTEN {CHANNEL}")
        while not stopping.is_set():
            rows = conn.execute(CLAIM, [batch], prepare=True).fetchall()
            if rows:
                for _id, args in rows:
                    noop(**args)
                conn.execute(COMPLETE, [[row[0] for row in rows]], prepare=True)
                continue
            # Idle: sleep until a NOTIFY (or poll every second, as the queues do).
            for _ in listener.notifies(timeout=1.0, stop_after=1):
                pass


def reset(dsn: str) -> None:
    """Drop the jobs table: each probe and the measured run start from an empty one."""
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS jobs")


def sweep(
    adapter: RawAdapter,
    args: argparse.Namespace,
    knob: str,
    settings: Sequence[DrainSetting | BulkSetting],
    probe_jobs: int,
    scenario: Callable[[Any, argparse.Namespace], dict[str, Any]],
) -> dict[str, Any]:
    """Probe each setting of ``knob`` on a short run, then measure the full run at the fastest."""
    probe_args = argparse.Namespace(**{**vars(args), "jobs": min(args.jobs, probe_jobs)})
    probes: dict[str, float] = {}
    winner = settings[0]
    for setting in settings:
        setattr(adapter, knob, setting)
        reset(args.dsn)
        probes[str(setting)] = scenario(adapter, probe_args)["jobs_per_s"]
        if probes[str(setting)] >= max(probes.values()):
            winner = setting
    setattr(adapter, knob, winner)
    reset(args.dsn)
    return {**scenario(adapter, args), **sweep_extras(winner, probes)}


def sweep_drain(adapter: RawAdapter, args: argparse.Namespace) -> dict[str, Any]:
    return sweep(adapter, args, "drain", DRAIN_SWEEP, DRAIN_PROBE_JOBS, bench_common.scenario_drain)


def sweep_bulk(adapter: RawAdapter, args: argparse.Namespace) -> dict[str, Any]:
    return sweep(
        adapter, args, "bulk", BULK_SWEEP, BULK_PROBE_JOBS, bench_common.scenario_enqueue_bulk
    )


def sweep_extras(winner: DrainSetting | BulkSetting, probes: dict[str, float]) -> dict[str, Any]:
    """The winning setting and every probe's jobs/s (strings and a dict: kept as extras)."""
    return {"setting": str(winner), "probes": {k: round(v) for k, v in probes.items()}}


if __name__ == "__main__":

    def make(_variant: str) -> RawAdapter:
        options = bench_common.parse_args(sys.argv[1:])
        drain = DrainSetting.parse(options.setting) if options.setting else DEFAULT_DRAIN
        return RawAdapter(drain, notify=options.scenario in ("latency", "history"))

    bench_common.main(make, {"drain": sweep_drain, "enqueue_bulk": sweep_bulk})
