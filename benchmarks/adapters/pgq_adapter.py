"""pgq under the benchmark harness; also the apps that `pgq work` runs.

Enqueue: ``pgq.enqueue`` + commit per job; bulk: ``pgq.enqueue_many`` fed by a
generator, with ``return_ids=False`` (variant "ids": returning every id). Workers:
the real CLI, ``pgq work pgq_adapter:app --processes N`` with every other option at
its default and a plain ``def`` handler: what a user gets. Variant "async" runs
``pgq_adapter:async_app`` (an ``async def`` handler) at every default; "tuned" the
same with ``--concurrency 100 --log-level warning``; "sync" is "tuned" plus
``--synchronous-commit``; "hosts" is the defaults as N separate ``pgq work``
processes (as on N machines) rather than one supervisor's N children.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import bench_common
import psycopg

import pgq
from pgq.migrate import migrate

HERE = Path(__file__).resolve().parent

app = pgq.App()
async_app = pgq.App()


@app.task(name="noop")
def noop(seq: int) -> None:
    bench_common.record_start(seq)


# The same task as an async handler (the async and tuned variants).
@async_app.task(name="noop")
async def noop_async(seq: int) -> None:
    bench_common.record_start(seq)


TUNED_OPTIONS = ("--concurrency", "100", "--log-level", "warning")


class PgqAdapter:
    name = "pgq"
    needs_record = False
    packages = ("pgq-jobs", "psycopg", "psycopg-binary", "psycopg-pool")

    def __init__(self, variant: str = "") -> None:
        self.tuned = variant in ("tuned", "sync")
        self.async_handler = self.tuned or variant == "async"
        self.synchronous_commit = variant == "sync"
        self.return_ids = variant == "ids"
        self.separate_processes = variant == "hosts"

    def install(self, dsn: str) -> None:
        migrate(dsn)

    def enqueue_each(self, dsn: str, seqs: Iterable[int], committed: Callable[[int], None]) -> None:
        with psycopg.connect(dsn) as conn:
            for seq in seqs:
                pgq.enqueue(conn, "noop", {"seq": seq})
                conn.commit()
                committed(seq)

    def enqueue_bulk(self, dsn: str, count: int) -> None:
        with psycopg.connect(dsn) as conn:
            specs = (pgq.JobSpec("noop", {"seq": n}) for n in range(count))
            pgq.enqueue_many(conn, specs, return_ids=self.return_ids)
            conn.commit()

    def monitor(self, dsn: str, record: Path | None, expected: int) -> bench_common.Monitor:
        return bench_common.SqlMonitor(dsn, "pgq.jobs", ["queued", "running"])

    def insert_history(self, conn: psycopg.Connection[Any], rows: int) -> None:
        # Finished within the last hour: the worker's default retention (1 day)
        # prunes none of them during the run.
        conn.execute(
            """
            INSERT INTO pgq.jobs (task, args, status, attempts, run_at, created_at,
                                  started_at, finished_at)
            SELECT 'noop', jsonb_build_object('seq', -g), 'succeeded', 1,
                   now() - interval '1 hour', now() - interval '1 hour',
                   now() - (g %% 3600) * interval '1 second',
                   now() - (g %% 3600) * interval '1 second'
            FROM generate_series(1, %s) AS g
            """,
            [rows],
        )

    def worker_commands(
        self, dsn: str, processes: int, concurrency: int | None
    ) -> list[tuple[list[str], Path]]:
        pgq_cli = shutil.which("pgq", path=str(Path(sys.executable).parent)) or "pgq"
        target = "pgq_adapter:async_app" if self.async_handler else "pgq_adapter:app"
        argv = [pgq_cli, "work", target, "--dsn", dsn]
        if not self.separate_processes:
            argv += ["--processes", str(processes)]
        if self.tuned:
            argv += TUNED_OPTIONS
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        if self.synchronous_commit:
            argv.append("--synchronous-commit")
        return [(argv, HERE)] * (processes if self.separate_processes else 1)

    def run_worker(self, dsn: str, concurrency: int | None) -> None:
        # Unused: pgq's workers are always the real CLI (worker_commands).
        raise NotImplementedError("pgq's workers run through `pgq work`")


if __name__ == "__main__":

    def make(variant: str) -> PgqAdapter:
        if variant not in ("", "async", "tuned", "sync", "ids", "hosts"):
            raise SystemExit(f"unknown pgq variant {variant!r}")
        return PgqAdapter(variant)

    bench_common.main(make)
