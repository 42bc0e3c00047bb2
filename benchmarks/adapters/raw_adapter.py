"""The raw-SQL ceiling: a minimal jobs table and the fewest statements a queue needs.

No framework, no retries, no leases: a claim is one batch
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``,
completion one ``UPDATE ... WHERE id = ANY(...)``. enqueue_single is a bare INSERT
and commit; bulk is COPY. Only the latency scenario adds a NOTIFY to each
insert, since an idle worker must be woken somehow.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterable
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


def noop(seq: int) -> None:
    bench_common.record_start(seq)


class RawAdapter:
    name = "raw"
    needs_record = False
    packages = ("psycopg", "psycopg-binary")
    #: Set by the latency scenarios: enqueue_each then also wakes the worker.
    notify = False

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
        with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
            with cursor.copy("COPY jobs (args) FROM STDIN") as copy:
                for seq in range(count):
                    copy.write_row([f'{{"seq":{seq}}}'])
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
        self, dsn: str, processes: int, concurrency: int
    ) -> list[tuple[list[str], Path]]:
        argv = [sys.executable, str(HERE / "raw_adapter.py"), "--role", "worker", "--dsn", dsn,
                "--concurrency", str(concurrency)]  # fmt: skip
        return [(argv, HERE) for _ in range(processes)]

    def run_worker(self, dsn: str, concurrency: int) -> None:
        stopping = False

        def stop(_signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            psycopg.connect(dsn, autocommit=True) as listener,
        ):
            listener.execute(f"LISTEN {CHANNEL}")
            while not stopping:
                rows = conn.execute(CLAIM, [concurrency], prepare=True).fetchall()
                if rows:
                    for _id, args in rows:
                        noop(**args)
                    conn.execute(COMPLETE, [[row[0] for row in rows]], prepare=True)
                    continue
                # Idle: sleep until a NOTIFY (or poll every second, as the queues do).
                for _ in listener.notifies(timeout=1.0, stop_after=1):
                    pass


if __name__ == "__main__":

    def make(_variant: str) -> RawAdapter:
        adapter = RawAdapter()
        adapter.notify = "latency" in sys.argv or "history" in sys.argv
        return adapter

    bench_common.main(make)
