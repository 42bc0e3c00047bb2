"""`pgq bench`: measure pgq on your own database, to size a fleet on your own hardware.

Everything happens in a temporary schema (``pgq_bench_<random>``) that is
dropped at the end, so it is safe to point at a shared database; it adds load
while it runs, though. The numbers are for pgq alone; benchmarks/ compares pgq
with other queues on one machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgq.enqueue import JobSpec, enqueue, enqueue_many
from pgq.migrate import migrate
from pgq.queries import Statements
from pgq.tasks import App, JobContext
from pgq.worker import Worker

POLL_SECONDS = 0.02

# The bench's own statements (waiting for the drain, dropping its schema).
bench_query = Statements("bench.sql")


@dataclass(frozen=True, slots=True)
class BenchSettings:
    single_jobs: int = 1_000
    bulk_jobs: int = 50_000
    latency_jobs: int = 200
    latency_rate_per_second: float = 20.0
    concurrency: int = 100


@dataclass(slots=True)
class BenchResult:
    """Figures by scenario: jobs/s for throughput, milliseconds for latency."""

    figures: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str, int, int], None]  # (scenario, done, total)


@contextmanager
def temporary_schema(dsn: str) -> Iterator[str]:
    """A freshly migrated pgq schema that is dropped afterwards, whatever happens."""
    schema = f"pgq_bench_{uuid.uuid4().hex[:8]}"
    try:
        migrate(dsn, schema=schema)
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(bench_query("drop_schema", schema))


def bench_enqueue_single(dsn: str, schema: str, count: int, progress: Progress) -> float:
    """Jobs/s enqueueing one job per committed transaction (the outbox case)."""
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for number in range(count):
            enqueue(conn, "noop", {"n": number}, schema=schema)
            conn.commit()
            if number % 100 == 0:
                progress("enqueue_single", number, count)
        elapsed = time.perf_counter() - started
    progress("enqueue_single", count, count)
    return count / elapsed


def bench_enqueue_bulk(dsn: str, schema: str, count: int, progress: Progress) -> float:
    """Jobs/s through enqueue_many (COPY), streaming from a generator."""
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        enqueue_many(conn, (JobSpec("noop", {"n": n}) for n in range(count)), schema=schema)
        conn.commit()
        elapsed = time.perf_counter() - started
    progress("enqueue_bulk", count, count)
    return count / elapsed


def _noop_app() -> App:
    app = App()

    @app.task(name="noop")
    async def noop(n: int) -> None:
        return None

    return app


async def _drain(dsn: str, schema: str, total: int, concurrency: int, progress: Progress) -> float:
    worker = Worker(_noop_app(), dsn, schema=schema, concurrency=concurrency, poll_seconds=0.05)
    started = time.perf_counter()
    running = asyncio.create_task(worker.run())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(bench_query("count_unfinished_jobs", schema))
            row = await cursor.fetchone()
            left = int(row[0]) if row else 0
            progress("drain", total - left, total)
            if left == 0 or running.done():
                break
            await asyncio.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - started
    worker.request_stop()
    await running
    return total / elapsed


def bench_drain(dsn: str, schema: str, total: int, concurrency: int, progress: Progress) -> float:
    """Jobs/s for one in-process worker draining the ``total`` queued no-op jobs."""
    return asyncio.run(_drain(dsn, schema, total, concurrency, progress))


async def _latency(
    dsn: str, schema: str, count: int, rate: float, progress: Progress
) -> list[float]:
    """Seconds from each job's commit to its handler's start, for ``count`` paced jobs."""
    committed: dict[int, float] = {}
    started: dict[int, float] = {}
    app = App()

    @app.task(name="ping")
    async def ping(ctx: JobContext) -> None:
        started[ctx.job_id] = time.time()

    worker = Worker(app, dsn, schema=schema, concurrency=10, poll_seconds=5.0)
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.5)  # let the worker start listening
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        interval = 1.0 / rate
        next_send = time.perf_counter()
        for number in range(count):
            await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
            next_send += interval
            async with conn.transaction():
                job = await app.tasks["ping"].enqueue_async(conn, schema=schema)
            committed[job.id] = time.time()
            progress("latency", number + 1, count)
    deadline = time.monotonic() + 10
    while len(started) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    worker.request_stop()
    await running
    # A handler may start before the producer reads its clock after COMMIT
    # returns; that counts as zero, not as a negative latency.
    return [max(0.0, started[i] - committed[i]) for i in committed if i in started]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def run_bench(dsn: str, settings: BenchSettings, progress: Progress) -> BenchResult:
    """Run every scenario in a temporary schema and return the figures."""
    result = BenchResult()
    with temporary_schema(dsn) as schema:
        figures = result.figures
        figures["enqueue_single_jobs_per_s"] = bench_enqueue_single(
            dsn, schema, settings.single_jobs, progress
        )
        figures["enqueue_bulk_jobs_per_s"] = bench_enqueue_bulk(
            dsn, schema, settings.bulk_jobs, progress
        )
        figures["drain_jobs_per_s"] = bench_drain(
            dsn, schema, settings.single_jobs + settings.bulk_jobs, settings.concurrency, progress
        )
        delays = asyncio.run(
            _latency(dsn, schema, settings.latency_jobs, settings.latency_rate_per_second, progress)
        )
        if delays:
            for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                figures[f"latency_{name}_ms"] = percentile(delays, fraction) * 1000
            figures["latency_mean_ms"] = statistics.fmean(delays) * 1000
        figures["latency_jobs_picked_up"] = float(len(delays))
    return result


def describe(settings: BenchSettings) -> dict[str, Any]:
    return {
        "single_jobs": settings.single_jobs,
        "bulk_jobs": settings.bulk_jobs,
        "latency_jobs": settings.latency_jobs,
        "latency_rate_per_second": settings.latency_rate_per_second,
        "concurrency": settings.concurrency,
    }
