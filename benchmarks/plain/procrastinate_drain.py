"""procrastinate on its own, outside the harness: how fast one worker drains no-op jobs.

    benchmarks/.venvs/procrastinate/bin/python benchmarks/plain/procrastinate_drain.py 10000

Creates a scratch database through the admin DSN (``BENCH_DSN``, default the
harness's), applies procrastinate's schema, defers the jobs with
``batch_defer_async`` in chunks of 10,000, runs ``ANALYZE`` (``--no-analyze`` to
skip it), then times one worker, every setting at its default, from the call
until ``run_worker_async(wait=False)`` returns (it returns once no job is left),
and drops the database. Compare with the harness's ``procrastinate`` drain_1p row.

procrastinate is imported through importlib and typed Any: it lives in this
script's venv only, not in pgq's, where mypy checks benchmarks/.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from typing import Any

import psycopg

procrastinate: Any = importlib.import_module("procrastinate")

ADMIN_DSN = os.environ.get("BENCH_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
DATABASE = "pgqbench_plain_procrastinate"
CHUNK = 10_000


async def drain(dsn: str, jobs: int, analyze: bool) -> float:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    async def noop(seq: int) -> None:
        pass

    task = app.task(name="noop", queue="bench")(noop)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, CHUNK):
            await task.batch_defer_async(
                *({"seq": n} for n in range(start, min(jobs, start + CHUNK)))
            )
        if analyze:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ANALYZE")
        started = time.perf_counter()
        await app.run_worker_async(queues=["bench"], wait=False)
        return time.perf_counter() - started


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 10_000
    analyze = "--no-analyze" not in sys.argv
    dsn = " ".join(
        [*(p for p in ADMIN_DSN.split() if not p.startswith("dbname=")), f"dbname={DATABASE}"]
    )
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DATABASE}")
        try:
            elapsed = asyncio.run(drain(dsn, jobs, analyze))
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    shown = "analyzed" if analyze else "not analyzed"
    print(
        f"procrastinate: {jobs:,} jobs ({shown}) in {elapsed:.2f}s = {jobs / elapsed:,.0f} jobs/s"
    )


if __name__ == "__main__":
    main()
