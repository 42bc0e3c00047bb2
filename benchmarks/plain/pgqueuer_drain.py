"""PgQueuer on its own, outside the harness: how fast one worker drains no-op jobs.

    benchmarks/.venvs/pgqueuer/bin/python benchmarks/plain/pgqueuer_drain.py 50000

Creates a scratch database through the admin DSN (``BENCH_DSN``, default the
harness's), installs PgQueuer's schema, enqueues the jobs in chunks of 10,000,
runs ``ANALYZE`` (``--no-analyze`` to skip it), then times one ``QueueManager``
on asyncpg, every setting at its default, from its creation until
``run(mode=drain)`` returns, and drops the database. Compare with the harness's
``pgqueuer-asyncpg`` drain_1p row.

PgQueuer and asyncpg are imported through importlib and typed Any: they live in
this script's venv only, not in pgq's, where mypy checks benchmarks/.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from typing import Any

import psycopg

asyncpg: Any = importlib.import_module("asyncpg")
pgqueuer: Any = importlib.import_module("pgqueuer")
QueueExecutionMode: Any = importlib.import_module("pgqueuer.types").QueueExecutionMode

ADMIN_DSN = os.environ.get("BENCH_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
DATABASE = "pgqbench_plain_pgqueuer"
CHUNK = 10_000


def url(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return (
        f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
        f"{params.get('port', '5432')}/{DATABASE}"
    )


async def drain(jobs: int, analyze: bool) -> float:
    conn = await asyncpg.connect(url(ADMIN_DSN))
    queries = pgqueuer.Queries(pgqueuer.AsyncpgDriver(conn))
    await queries.install()
    for start in range(0, jobs, CHUNK):
        size = min(CHUNK, jobs - start)
        await queries.enqueue(["noop"] * size, [b"{}"] * size, [0] * size)
    if analyze:
        await conn.execute("ANALYZE")
    await conn.close()

    started = time.perf_counter()
    driver = pgqueuer.AsyncpgDriver(await asyncpg.connect(url(ADMIN_DSN)))
    manager = pgqueuer.QueueManager(pgqueuer.Queries(driver))

    async def noop(job: Any) -> None:
        pass

    manager.entrypoint("noop")(noop)

    await manager.run(mode=QueueExecutionMode.drain)
    return time.perf_counter() - started


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 50_000
    analyze = "--no-analyze" not in sys.argv
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
        try:
            elapsed = asyncio.run(drain(jobs, analyze))
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    shown = "analyzed" if analyze else "not analyzed"
    print(f"pgqueuer: {jobs:,} jobs ({shown}) in {elapsed:.2f}s = {jobs / elapsed:,.0f} jobs/s")


if __name__ == "__main__":
    main()
