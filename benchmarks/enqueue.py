"""Enqueue throughput: single jobs in their own transactions, and enqueue_many in bulk.

    python benchmarks/enqueue.py --dsn postgresql://postgres@127.0.0.1/postgres

Works in a scratch database it creates and drops. Absolute numbers depend on the
machine (and on synchronous_commit for the single-job case); compare runs made
on the same machine.
"""

from __future__ import annotations

import argparse
import time
import uuid

import psycopg
from psycopg import sql

import pgq
from pgq.migrate import migrate


def scratch_database(admin_dsn: str) -> tuple[str, str]:
    name = f"pgq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return name, psycopg.conninfo.make_conninfo("", **params)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_single(dsn: str, count: int) -> float:
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for number in range(count):
            pgq.enqueue(conn, "noop", {"n": number})
            conn.commit()
        return count / (time.perf_counter() - started)


def bench_bulk(dsn: str, count: int) -> float:
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        ids = pgq.enqueue_many(conn, (pgq.JobSpec("noop", {"n": n}) for n in range(count)))
        conn.commit()
        elapsed = time.perf_counter() - started
    assert len(ids) == count, f"expected {count} ids, got {len(ids)}"
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 user=postgres dbname=postgres")
    parser.add_argument("--single", type=int, default=2_000, help="jobs for enqueue_single")
    parser.add_argument("--bulk", type=int, default=100_000, help="jobs for enqueue_many")
    args = parser.parse_args()
    name, dsn = scratch_database(args.dsn)
    try:
        migrate(dsn)
        single = bench_single(dsn, args.single)
        bulk = bench_bulk(dsn, args.bulk)
    finally:
        drop_database(args.dsn, name)
    print(f"enqueue_single  {args.single:>9,} jobs  {single:>10,.0f} jobs/s")
    print(f"enqueue_many    {args.bulk:>9,} jobs  {bulk:>10,.0f} jobs/s")


if __name__ == "__main__":
    main()
