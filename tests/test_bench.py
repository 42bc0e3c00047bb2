"""`pgq bench` measures pgq on the user's database and leaves nothing behind."""

from __future__ import annotations

import json

import psycopg
from typer.testing import CliRunner

from pgq.cli import app


def schemas(dsn: str) -> set[str]:
    # pg_temp_N namespaces are PostgreSQL's own, made lazily for temporary tables.
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%temp%'")
        return {row[0] for row in rows}


def test_bench_reports_every_figure_and_drops_its_temporary_schema(dsn: str) -> None:
    before = schemas(dsn)
    result = CliRunner().invoke(
        app,
        ["bench", "--dsn", dsn, "--single-jobs", "50", "--bulk-jobs", "500",
         "--latency-jobs", "10", "--rate", "50", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    figures = report["figures"]
    for name in ("enqueue_single_jobs_per_s", "enqueue_bulk_jobs_per_s", "drain_jobs_per_s"):
        assert figures[name] > 0
    assert figures["latency_jobs_picked_up"] == 10
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p95_ms"] <= figures["latency_p99_ms"]
    assert schemas(dsn) == before
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgq.jobs").fetchone()
    assert row == (0,), "bench must not touch the real pgq schema"


def test_bench_with_an_unreachable_server_fails_clearly_without_the_password() -> None:
    result = CliRunner().invoke(
        app, ["bench", "--dsn", "host=127.0.0.1 port=1 password=hunter2 connect_timeout=2"]
    )
    assert result.exit_code == 1
    assert "cannot connect" in result.output
    assert "hunter2" not in result.output
