"""Every SQL snippet in docs/sql.md runs, in order, against a database with jobs in every state.

The cookbook is what operators copy into psql; if a view, a function or a column it uses
changes, this test fails before the documentation can mislead anyone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from seeding import seed_job

Conn = psycopg.Connection[tuple[Any, ...]]

COOKBOOK = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
SQL_BLOCK = re.compile(r"^```sql\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
HOUR = 3600.0


def snippets() -> list[str]:
    return [match.group("body") for match in SQL_BLOCK.finditer(COOKBOOK.read_text())]


def seed_every_state(conn: Conn) -> None:
    """Jobs like a real queue has them: due and scheduled, running (one lease expired), and
    finished ones of every kind, including dead jobs that died of a timeout."""
    seed_job(conn, "queued", task="send_email", queue="emails", due_in=-120)
    seed_job(conn, "queued", task="send_email", queue="emails", due_in=3600)
    seed_job(conn, "queued", task="charge_card", due_in=-5)
    seed_job(conn, "running", task="charge_card")
    seed_job(conn, "running", task="resize_image", queue="images", lease_in=-60)
    seed_job(conn, "succeeded", task="send_email", queue="emails", finished_ago=2 * HOUR)
    seed_job(conn, "succeeded", task="charge_card", finished_ago=30 * 24 * HOUR)
    seed_job(conn, "cancelled", task="resize_image", queue="images", finished_ago=HOUR)
    for ago, error in [(HOUR, "TimeoutError: payment gateway timed out"),
                       (3 * HOUR, "ValueError: bad amount"),
                       (10 * 24 * HOUR, "ConnectionError: timed out")]:  # fmt: skip
        seed_job(conn, "dead", task="charge_card", finished_ago=ago, last_error=error, attempts=5)
    conn.commit()


def test_the_cookbook_has_snippets() -> None:
    assert len(snippets()) >= 10


@pytest.mark.parametrize("autocommit", [False, True], ids=["one_transaction", "autocommit"])
def test_every_cookbook_snippet_runs_in_order_on_a_seeded_database(
    dsn: str, autocommit: bool
) -> None:
    with psycopg.connect(dsn) as conn:
        seed_every_state(conn)
        conn.autocommit = autocommit
        for number, snippet in enumerate(snippets(), start=1):
            try:
                conn.execute(snippet)
            except psycopg.Error as error:
                pytest.fail(f"docs/sql.md snippet {number} failed: {error}\n{snippet}")
        if not autocommit:
            conn.rollback()


def test_the_cookbook_also_runs_on_a_database_with_no_jobs(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for number, snippet in enumerate(snippets(), start=1):
            try:
                conn.execute(snippet)
            except psycopg.Error as error:
                pytest.fail(f"docs/sql.md snippet {number} failed: {error}\n{snippet}")
