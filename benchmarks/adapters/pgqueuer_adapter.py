"""pgqueuer under the benchmark harness, on its psycopg driver or (``--variant asyncpg``) asyncpg.

Enqueue: ``Queries.enqueue(entrypoint, payload)`` on an autocommit connection
(one transaction per job); bulk: the same call with lists, in chunks of 10,000.
Workers: ``QueueManager.run()``, one per process, every setting at its default
(``batch_size=10``).

pgqueuer deletes a job from its queue table when it finishes and keeps the
record in ``pgqueuer_log``: its history is written there.

pgqueuer and asyncpg are imported inside functions and typed Any: they are
installed only in this adapter's venv, not in pgq's (where mypy checks this file).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import bench_common
import psycopg

HERE = Path(__file__).resolve().parent
CHUNK = 10_000


def asyncpg_url(dsn: str) -> str:
    """asyncpg takes a URL; the harness passes libpq key=value strings."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    return f"postgresql://{user}@{host}:{port}/{params.get('dbname', 'postgres')}"


class PgqueuerAdapter:
    needs_record = False
    packages = ("pgqueuer", "psycopg", "psycopg-binary", "asyncpg")

    def __init__(self, variant: str) -> None:
        if variant not in ("", "psycopg", "asyncpg"):
            raise SystemExit(f"unknown pgqueuer variant {variant!r}")
        self.variant = variant or "psycopg"
        self.name = "pgqueuer" if self.variant == "psycopg" else "pgqueuer-asyncpg"

    async def _driver(self, dsn: str) -> tuple[Any, Any]:
        """(driver, connection) for this variant."""
        pgqueuer: Any = importlib.import_module("pgqueuer")
        if self.variant == "asyncpg":
            asyncpg: Any = importlib.import_module("asyncpg")
            conn = await asyncpg.connect(asyncpg_url(dsn))
            return pgqueuer.AsyncpgDriver(conn), conn
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return pgqueuer.PsycopgDriver(conn), conn

    async def _queries(self, dsn: str) -> tuple[Any, Any]:
        pgqueuer: Any = importlib.import_module("pgqueuer")
        driver, conn = await self._driver(dsn)
        return pgqueuer.Queries(driver), conn

    def install(self, dsn: str) -> None:
        async def run() -> None:
            queries, conn = await self._queries(dsn)
            await queries.install()
            await conn.close()

        asyncio.run(run())

    def enqueue_each(self, dsn: str, seqs: Iterable[int], committed: Callable[[int], None]) -> None:
        async def run() -> None:
            queries, conn = await self._queries(dsn)
            for seq in seqs:
                await queries.enqueue("noop", json.dumps({"seq": seq}).encode())
                committed(seq)
            await conn.close()

        asyncio.run(run())

    def enqueue_bulk(self, dsn: str, count: int) -> None:
        async def run() -> None:
            queries, conn = await self._queries(dsn)
            for start in range(0, count, CHUNK):
                seqs = range(start, min(count, start + CHUNK))
                await queries.enqueue(
                    ["noop"] * len(seqs),
                    [json.dumps({"seq": n}).encode() for n in seqs],
                    [0] * len(seqs),
                )
            await conn.close()

        asyncio.run(run())

    def monitor(self, dsn: str, record: Path | None, expected: int) -> bench_common.Monitor:
        return bench_common.SqlMonitor(dsn, "pgqueuer", ["queued", "picked"])

    def insert_history(self, conn: psycopg.Connection[Any], rows: int) -> None:
        # Already folded into pgqueuer_statistics (aggregated), as a running
        # system's periodic aggregation would have left it.
        conn.execute(
            """
            INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint, aggregated)
            SELECT now() - (g %% 3600) * interval '1 second', g, 'successful', 0, 'noop', true
            FROM generate_series(1, %s) AS g
            """,
            [rows],
        )

    def worker_commands(
        self, dsn: str, processes: int, concurrency: int | None
    ) -> list[tuple[list[str], Path]]:
        argv = [sys.executable, str(HERE / "pgqueuer_adapter.py"), "--role", "worker",
                "--dsn", dsn, "--variant", self.variant]  # fmt: skip
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        return [(argv, HERE) for _ in range(processes)]

    def run_worker(self, dsn: str, concurrency: int | None) -> None:
        async def work() -> None:
            pgqueuer: Any = importlib.import_module("pgqueuer")
            queries, conn = await self._queries(dsn)
            manager = pgqueuer.QueueManager(queries)

            async def noop(job: Any) -> None:
                bench_common.record_start(json.loads(job.payload)["seq"])

            manager.entrypoint("noop")(noop)

            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, manager.shutdown.set)
            await manager.run(**({} if concurrency is None else {"batch_size": concurrency}))
            await conn.close()

        asyncio.run(work())


if __name__ == "__main__":
    bench_common.main(PgqueuerAdapter)
