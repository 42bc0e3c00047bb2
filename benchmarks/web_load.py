"""Load on `pgq web`: POST /api/jobs at fixed rates, and the dashboard's pages over a big table.

    .venv/bin/python benchmarks/web_load.py                       # 100, 500, 1000/s, 10 s each
    .venv/bin/python benchmarks/web_load.py --find-max            # then step up to the limit
    .venv/bin/python benchmarks/web_load.py --pages 1000000       # page times, 1M finished jobs

It creates a database of its own (dropped at the end), migrates it, and starts
`pgq web` (with a token, as a deployment would have) on a free loopback port. The
load generator is open-loop: request i is due at start + i/rate whatever happened
to the ones before, and its latency counts from that due time, so a server that
falls behind is charged for the wait (no coordinated omission). Requests go over
keep-alive HTTP/1.1 connections, a new one opened whenever all are busy (up to
--max-connections). The generator runs on the same machine as the server and the
database: on a small machine it takes a share of the CPU they would otherwise get.

A rate is sustained when the server answered at least 99 % of the requests with
201, kept up (finished within 1 s of the rate's end), and its p95 stayed under
100 ms: the bar the service pgq grew from set at 100/s. Results are written as
JSON to --out (default benchmarks/results/web_load.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgq.migrate

HERE = Path(__file__).resolve().parent
DEFAULT_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
P95_BAR_SECONDS = 0.100
IDLE_SECONDS = 4.0
#: The rates --find-max tries, between the fixed rates' highest sustained and lowest failed.
STEPS = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1500, 2000, 3000, 4000)
TOKEN = secrets.token_urlsafe(24)


@dataclass
class RateResult:
    target_per_second: float
    seconds: float
    sent: int
    created: int
    failed: int
    achieved_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    connections: int
    #: How many requests got each HTTP status; 0 counts those that got no answer.
    statuses: dict[int, int]
    #: The machine's 1-minute load average when the rate ended: on a shared machine,
    #: other work takes CPU from the server, and this says how much there was.
    load_average: float
    sustained: bool


class Connection:
    """One keep-alive HTTP/1.1 connection to pgq web."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        self.last_used = time.monotonic()
        return status

    def close(self) -> None:
        self.writer.close()


def job_request(port: int, number: int) -> bytes:
    body = json.dumps({"task": "bench_web", "args": {"n": number}, "queue": "web"}).encode()
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run_rate(port: int, rate: float, seconds: float, max_connections: int) -> RateResult:
    """Send rate * seconds POSTs, each at its due time; measure each from that due time."""
    loop = asyncio.get_running_loop()
    idle: list[Connection] = []
    opened = 0
    slot_free = asyncio.Condition()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    total = int(rate * seconds)
    start = loop.time() + 0.2

    async def take() -> Connection:
        nonlocal opened
        async with slot_free:
            while not idle and opened >= max_connections:
                await slot_free.wait()
            while idle:
                conn = idle.pop()
                # uvicorn closes a connection idle for 5 s: drop it first, as HTTP clients do.
                if time.monotonic() - conn.last_used < IDLE_SECONDS:
                    return conn
                conn.close()
                opened -= 1
            opened += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return Connection(reader, writer)

    async def give_back(conn: Connection | None) -> None:
        nonlocal opened
        async with slot_free:
            if conn is None:
                opened -= 1
            else:
                idle.append(conn)
            slot_free.notify()

    async def one(number: int) -> None:
        due = start + number / rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        conn = await take()
        try:
            status = await conn.post(job_request(port, number))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            statuses[0] += 1
            await give_back(None)
            return
        latencies.append(loop.time() - due)
        statuses[status] += 1
        await give_back(conn)

    await asyncio.gather(*(one(n) for n in range(total)))
    finished = loop.time()
    for conn in idle:
        conn.close()
    elapsed = finished - start
    ordered = sorted(latencies)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    created = statuses[201]
    p95 = quantile(0.95)
    return RateResult(
        target_per_second=rate,
        seconds=seconds,
        sent=total,
        created=created,
        failed=total - created,
        achieved_per_second=round(created / elapsed, 1),
        p50_ms=round(quantile(0.50), 2),
        p95_ms=round(p95, 2),
        p99_ms=round(quantile(0.99), 2),
        max_ms=round(ordered[-1] * 1000 if ordered else 0.0, 2),
        connections=opened,
        statuses=dict(sorted(statuses.items())),
        load_average=round(os.getloadavg()[0], 2),
        sustained=created >= 0.99 * total
        and elapsed <= seconds + 1.2
        and p95 <= P95_BAR_SECONDS * 1000,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_web(dsn: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGQ_WEB_TOKEN": TOKEN}
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "pgq", "web", "--dsn", dsn, "--port", str(port),
             "--log-level", "warning"],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"pgq web did not start: {log.read_text()}") from None
            time.sleep(0.1)


def fill_finished_jobs(dsn: str, count: int) -> None:
    """``count`` succeeded jobs spread over the last day (1/24 of them in the last hour), and
    100 dead jobs: a table whose history dwarfs its queue."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgq.jobs (task, queue, args, status, attempts, started_at, finished_at)
            SELECT 'report_' || (n %% 20), 'q' || (n %% 5), jsonb_build_object('n', n),
                   'succeeded', 1, at - interval '20 ms', at
            FROM generate_series(1, %(count)s) AS n,
                 LATERAL (SELECT now() - (n %% 1440) * interval '1 minute'
                                 - (n %% 53) * interval '1 second' AS at) AS t
            """,
            {"count": count},
        )
        conn.execute(
            """
            INSERT INTO pgq.jobs (task, queue, status, attempts, finished_at, last_error)
            SELECT 'charge', 'payments', 'dead', 5, now() - n * interval '1 minute',
                   'TimeoutError: gateway took too long'
            FROM generate_series(1, 100) AS n
            """
        )
        conn.execute("VACUUM ANALYZE pgq.jobs")


PAGES = ("/", "/jobs", "/jobs?status=queued", "/dead", "/jobs?q=gateway&status=dead",
         "/api/stats", "/api/jobs?limit=50", "/api/jobs?status=dead&limit=50")  # fmt: skip


def time_pages(port: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median and largest time of each page, fetched ``repeats`` times in turn."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    timings: dict[str, list[float]] = {page: [] for page in PAGES}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
        form = client.get("/login").text
        csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/login", data={"token": TOKEN, "next": "/", "csrf_token": csrf})
        for page in PAGES:  # warm: the pool's connections, the templates
            client.get(page).raise_for_status()
        for _ in range(repeats):
            for page in PAGES:
                begun = time.perf_counter()
                client.get(page).raise_for_status()
                timings[page].append((time.perf_counter() - begun) * 1000)
    return {
        page: {"median_ms": round(statistics.median(t), 1), "max_ms": round(max(t), 1)}
        for page, t in timings.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("PGQ_BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN),
                        help="a server and role allowed to CREATE DATABASE")  # fmt: skip
    parser.add_argument("--rates", default="100,500,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--pages", type=int, default=0, metavar="FINISHED_JOBS")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "web_load.json")
    options = parser.parse_args()

    name = f"pgq_web_bench_{os.getpid()}"
    with psycopg.connect(options.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(options.dsn, dbname=name)
    log = Path(f"/tmp/{name}.log")
    server = None
    report: dict[str, Any] = {"at": datetime.now(UTC).isoformat(), "cpus": os.cpu_count()}
    try:
        pgq.migrate.migrate(dsn)
        if options.pages:
            # First, so that the load runs over a big table too, and the jobs it leaves
            # queued are the newest, as queued jobs in a live table are.
            began = time.monotonic()
            fill_finished_jobs(dsn, options.pages)
            report["pages_finished_jobs"] = options.pages
            report["pages_fill_seconds"] = round(time.monotonic() - began, 1)
        port = free_port()
        server = start_web(dsn, port, log)
        results: list[RateResult] = []

        def measure(rate: float) -> RateResult:
            result = asyncio.run(run_rate(port, rate, options.seconds, options.max_connections))
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)
            time.sleep(2)  # let autovacuum and the pool settle between rates
            return result

        fixed = [measure(float(r)) for r in options.rates.split(",") if r]
        if options.find_max:
            # Step up from the highest rate sustained to the first that is not.
            best = max((r.target_per_second for r in fixed if r.sustained), default=0.0)
            failed = min((r.target_per_second for r in fixed if not r.sustained), default=None)
            for step in STEPS:
                if step > best and (failed is None or step < failed):
                    if not measure(step).sustained:
                        break
        report["post_jobs"] = [asdict(r) for r in results]
        sustained = [r.target_per_second for r in results if r.sustained]
        report["max_sustained_per_second"] = max(sustained) if sustained else None
        if options.pages:
            report["pages"] = time_pages(port, repeats=20)
            print(json.dumps(report["pages"], indent=1), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with psycopg.connect(options.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    options.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
