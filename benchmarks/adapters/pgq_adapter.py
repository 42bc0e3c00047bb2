"""pgq under the benchmark harness; also the app that `pgq work pgq_adapter:app` runs.

Enqueue: ``pgq.enqueue`` + commit per job; bulk: ``pgq.enqueue_many`` fed by a
generator, with ``return_ids=False`` (variant "ids": returning every id). Workers:
the real CLI, ``pgq work --processes N --concurrency C`` (variant "sync": with
``--synchronous-commit``).
"""

from __future__ import annotations

import asyncio
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


@app.task
async def noop(seq: int) -> None:
    bench_common.record_start(seq)


class PgqAdapter:
    name = "pgq"
    needs_record = False
    packages = ("pgq-jobs", "psycopg", "psycopg-binary", "psycopg-pool")

    def __init__(self, synchronous_commit: bool = False, return_ids: bool = False) -> None:
        self.synchronous_commit = synchronous_commit
        self.return_ids = return_ids

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
        self, dsn: str, processes: int, concurrency: int
    ) -> list[tuple[list[str], Path]]:
        pgq_cli = shutil.which("pgq", path=str(Path(sys.executable).parent)) or "pgq"
        argv = [
            pgq_cli, "work", "pgq_adapter:app", "--dsn", dsn,
            "--processes", str(processes), "--concurrency", str(concurrency),
            "--log-level", "warning",
        ]  # fmt: skip
        if self.synchronous_commit:
            argv.append("--synchronous-commit")
        return [(argv, HERE)]

    def run_worker(self, dsn: str, concurrency: int) -> None:
        worker = pgq.Worker(
            app, dsn, concurrency=concurrency, synchronous_commit=self.synchronous_commit
        )
        asyncio.run(worker.run(handle_signals=True))


if __name__ == "__main__":

    def make(variant: str) -> PgqAdapter:
        return PgqAdapter(synchronous_commit=variant == "sync", return_ids=variant == "ids")

    bench_common.main(make)
