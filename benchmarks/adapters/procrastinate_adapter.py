"""procrastinate under the benchmark harness.

Enqueue: ``task.defer()`` on a sync connector (one transaction per job); bulk:
``task.batch_defer()`` in chunks of 10,000 (it takes a materialised argument
list). Workers: ``app.run_worker_async()``, one per process, every setting at
its default (``concurrency=1``, LISTEN/NOTIFY on).

procrastinate is imported inside functions and typed Any: it is installed only
in this adapter's venv, not in pgq's (where mypy checks this file).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import bench_common
import psycopg

HERE = Path(__file__).resolve().parent
QUEUE = "bench"
CHUNK = 10_000


async def noop(seq: int) -> None:
    bench_common.record_start(seq)


def make_app(dsn: str, *, sync: bool) -> tuple[Any, Any]:
    """A procrastinate App on ``dsn`` with the no-op task registered: (app, task)."""
    procrastinate: Any = importlib.import_module("procrastinate")
    connector = (
        procrastinate.SyncPsycopgConnector(conninfo=dsn)
        if sync
        else procrastinate.PsycopgConnector(conninfo=dsn)
    )
    app = procrastinate.App(connector=connector)
    task = app.task(name="noop", queue=QUEUE)(noop)
    return app, task


class ProcrastinateAdapter:
    name = "procrastinate"
    needs_record = False
    packages = ("procrastinate", "psycopg", "psycopg-binary", "psycopg-pool")

    def install(self, dsn: str) -> None:
        app, _ = make_app(dsn, sync=True)
        with app.open():
            app.schema_manager.apply_schema()

    def enqueue_each(self, dsn: str, seqs: Iterable[int], committed: Callable[[int], None]) -> None:
        app, task = make_app(dsn, sync=True)
        with app.open():
            for seq in seqs:
                task.defer(seq=seq)
                committed(seq)

    def enqueue_bulk(self, dsn: str, count: int) -> None:
        app, task = make_app(dsn, sync=True)
        with app.open():
            for start in range(0, count, CHUNK):
                task.batch_defer(*({"seq": n} for n in range(start, min(count, start + CHUNK))))

    def monitor(self, dsn: str, record: Path | None, expected: int) -> bench_common.Monitor:
        return bench_common.SqlMonitor(dsn, "procrastinate_jobs", ["todo"], ["doing"])

    def insert_history(self, conn: psycopg.Connection[Any], rows: int) -> None:
        conn.execute(
            """
            INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
            SELECT %s, 'noop', jsonb_build_object('seq', -g), 'succeeded', 1
            FROM generate_series(1, %s) AS g
            """,
            [QUEUE, rows],
        )

    def worker_commands(
        self, dsn: str, processes: int, concurrency: int | None
    ) -> list[tuple[list[str], Path]]:
        argv = [sys.executable, str(HERE / "procrastinate_adapter.py"), "--role", "worker",
                "--dsn", dsn]  # fmt: skip
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        return [(argv, HERE) for _ in range(processes)]

    def run_worker(self, dsn: str, concurrency: int | None) -> None:
        async def work() -> None:
            app, _ = make_app(dsn, sync=False)
            async with app.open_async():
                # install_signal_handlers (the default): SIGTERM stops it gracefully.
                options = {} if concurrency is None else {"concurrency": concurrency}
                await app.run_worker_async(queues=[QUEUE], **options)

        asyncio.run(work())


if __name__ == "__main__":
    bench_common.main(lambda _variant: ProcrastinateAdapter())
