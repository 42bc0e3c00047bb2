"""awa (``awa-pg``: a Rust core with a Python SDK) under the benchmark harness.

Install: ``migrate()`` then ``install_queue_storage()`` (its current storage
engine; ``enqueue_many_copy`` needs it). Enqueue: ``Client.insert()`` per job;
bulk: ``Client.enqueue_many_copy()`` (COPY) in chunks of 10,000. Workers:
``AsyncClient.start([("bench", 10)])``, one per process, other settings default:
awa has no default worker count per queue, so it gets pgq's default, 10.

Finished jobs are counted from the handlers' start records (``needs_record``):
awa keeps completion receipts in rotating ring partitions, and its own
``queue_stats()`` took minutes on a table with history, too slow to poll.
History goes into ``awa.done_entries`` (terminal rows, which awa counts as
completed) at the ring's current slot.

awa is imported inside functions and typed Any: it is installed only in this
adapter's venv, not in pgq's (where mypy checks this file).
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_common
import psycopg

HERE = Path(__file__).resolve().parent
QUEUE = "bench"
CHUNK = 10_000
# awa has no default worker count per queue (its README example uses 4): pgq's default.
DEFAULT_WORKERS = 10


@dataclass
class Noop:
    """The job's args; awa derives the kind ("noop") from the class name."""

    seq: int


def database_url(dsn: str) -> str:
    """awa takes a URL; the harness passes libpq key=value strings."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    return f"postgres://{user}@{host}:{port}/{params.get('dbname', 'postgres')}"


def awa_module() -> Any:
    return importlib.import_module("awa")


class AwaAdapter:
    name = "awa"
    needs_record = True
    packages = ("awa-pg", "psycopg", "psycopg-binary")

    def install(self, dsn: str) -> None:
        client = awa_module().Client(database_url(dsn))
        client.migrate()
        client.install_queue_storage()
        client.close()

    def enqueue_each(self, dsn: str, seqs: Iterable[int], committed: Callable[[int], None]) -> None:
        client = awa_module().Client(database_url(dsn))
        for seq in seqs:
            client.insert(Noop(seq=seq), queue=QUEUE)
            committed(seq)
        client.close()

    def enqueue_bulk(self, dsn: str, count: int) -> None:
        client = awa_module().Client(database_url(dsn))
        for start in range(0, count, CHUNK):
            client.enqueue_many_copy(
                [Noop(seq=n) for n in range(start, min(count, start + CHUNK))], queue=QUEUE
            )
        client.close()

    def monitor(self, dsn: str, record: Path | None, expected: int) -> bench_common.Monitor:
        if record is None:
            return _QueuedCount(dsn)
        return bench_common.RecordMonitor(record, expected)

    def insert_history(self, conn: psycopg.Connection[Any], rows: int) -> None:
        conn.execute(
            """
            INSERT INTO awa.done_entries
                (ready_slot, ready_generation, job_id, kind, queue, args, state, priority,
                 attempt, run_lease, max_attempts, lane_seq, run_at, attempted_at,
                 finalized_at, created_at)
            SELECT s.current_slot, s.generation, -g, 'noop', %s, jsonb_build_object('seq', -g),
                   'completed', 2, 1, 1, 25, -g, now(), now(),
                   now() - (g %% 3600) * interval '1 second', now() - interval '1 hour'
            FROM awa.queue_ring_state AS s, generate_series(1, %s) AS g
            """,
            [QUEUE, rows],
        )

    def worker_commands(
        self, dsn: str, processes: int, concurrency: int | None
    ) -> list[tuple[list[str], Path]]:
        argv = [sys.executable, str(HERE / "awa_adapter.py"), "--role", "worker",
                "--dsn", dsn, "--concurrency", str(concurrency or DEFAULT_WORKERS)]  # fmt: skip
        return [(argv, HERE) for _ in range(processes)]

    def run_worker(self, dsn: str, concurrency: int | None) -> None:
        async def work() -> None:
            client = awa_module().AsyncClient(database_url(dsn))

            async def noop(job: Any) -> None:
                bench_common.record_start(job.args.seq)

            client.task(Noop, queue=QUEUE)(noop)

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await client.start([(QUEUE, concurrency or DEFAULT_WORKERS)])
            await stop.wait()
            await client.shutdown()
            await client.close()

        asyncio.run(work())


class _QueuedCount:
    """After an enqueue, before any worker ran: the ready entries are the queued jobs."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def any_unfinished(self) -> bool:
        return self.unfinished() > 0

    def unfinished(self) -> int:
        sql = "SELECT count(*) FROM awa.ready_entries WHERE queue = %s"
        row = self.conn.execute(sql, [QUEUE]).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


if __name__ == "__main__":
    bench_common.main(lambda _variant: AwaAdapter())
