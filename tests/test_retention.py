"""Retention: workers delete finished jobs once they are older than their status's retention.

A worker's pruning is two parts, driven here directly: ``prune_finished_jobs`` (one
pruning run) and the ``Maintenance`` thread (pgq.worker.maintenance), which runs it every
``prune_interval_seconds`` (60 s by default, its first run at a random point within the
first interval), here with a short interval. ``pgq work`` takes the retentions as
``--keep-succeeded``, ``--keep-cancelled`` and ``--keep-dead``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgq.errors import ConfigError
from pgq.retention import KEEP_EVERYTHING, Retention, prune_finished_jobs
from pgq.worker.maintenance import Maintenance
from seeding import Conn, job_ids, seed_job
from worker_helpers import REPO_ROOT, wait_until

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    """Autocommit, as prune_finished_jobs requires: each batch commits on its own."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def seed_unfinished(db: Conn) -> set[int]:
    """Old jobs that are not finished: never pruned, however old."""
    return {
        seed_job(db, "queued", created_ago=30 * DAY, due_in=-30 * DAY),
        seed_job(db, "queued", created_ago=30 * DAY, due_in=DAY),
        seed_job(db, "running", created_ago=30 * DAY),
    }


def test_a_pruning_run_deletes_finished_jobs_past_their_status_retention_and_nothing_else(
    db: Conn,
) -> None:
    kept = seed_unfinished(db) | {
        seed_job(db, "succeeded", finished_ago=30 * MINUTE),
        seed_job(db, "cancelled", finished_ago=HOUR),
        seed_job(db, "dead", finished_ago=365 * DAY),  # dead_seconds=None: kept forever
    }
    expired = {
        seed_job(db, "succeeded", finished_ago=2 * HOUR),
        seed_job(db, "succeeded", finished_ago=DAY),
        seed_job(db, "cancelled", finished_ago=3 * HOUR),
    }
    retention = Retention(succeeded_seconds=HOUR, cancelled_seconds=2 * HOUR, dead_seconds=None)

    deleted = prune_finished_jobs(db, "pgq", retention)

    assert deleted == len(expired)
    assert job_ids(db) == kept


def test_dead_jobs_are_pruned_only_when_they_have_a_retention(db: Conn) -> None:
    old_dead = seed_job(db, "dead", finished_ago=40 * DAY)
    kept = {
        seed_job(db, "dead", finished_ago=20 * DAY),
        seed_job(db, "succeeded", finished_ago=40 * DAY),  # succeeded_seconds=None: kept
        seed_job(db, "cancelled", finished_ago=40 * DAY),
    }

    assert prune_finished_jobs(db, "pgq", Retention(None, None, dead_seconds=30 * DAY)) == 1

    assert job_ids(db) == kept
    assert old_dead not in job_ids(db)


def test_the_default_retention_keeps_succeeded_a_day_cancelled_a_week_and_dead_forever(
    db: Conn,
) -> None:
    kept = seed_unfinished(db) | {
        seed_job(db, "succeeded", finished_ago=23 * HOUR),
        seed_job(db, "cancelled", finished_ago=6 * DAY),
        seed_job(db, "dead", finished_ago=3650 * DAY),
    }
    seed_job(db, "succeeded", finished_ago=25 * HOUR)
    seed_job(db, "cancelled", finished_ago=8 * DAY)

    assert prune_finished_jobs(db, "pgq", Retention()) == 2

    assert job_ids(db) == kept


def test_keep_everything_prunes_nothing(db: Conn) -> None:
    seeded = {
        seed_job(db, status, finished_ago=3650 * DAY)
        for status in ("succeeded", "cancelled", "dead")
    }

    assert prune_finished_jobs(db, "pgq", KEEP_EVERYTHING) == 0

    assert job_ids(db) == seeded


def test_a_pruning_run_stops_after_its_batches_per_status_and_the_next_run_goes_on(
    db: Conn,
) -> None:
    for status in ("succeeded", "cancelled"):
        for _ in range(7):
            seed_job(db, status, finished_ago=2 * DAY)
    retention = Retention(succeeded_seconds=DAY, cancelled_seconds=DAY)

    first = prune_finished_jobs(db, "pgq", retention, batch_size=2, max_batches=2)
    left_after_first = len(job_ids(db))
    second = prune_finished_jobs(db, "pgq", retention, batch_size=2, max_batches=2)

    assert (first, left_after_first) == (8, 6), "two batches of two, per status"
    assert second == 6, "a batch of two, then a short one ends each status"
    assert job_ids(db) == set()


@pytest.mark.parametrize("age", [-1.0, math.nan])
@pytest.mark.parametrize("status", ["succeeded", "cancelled", "dead"])
def test_retention_refuses_a_negative_or_nan_age(status: str, age: float) -> None:
    with pytest.raises(ConfigError, match=f"retention for {status} jobs must be >= 0 seconds"):
        Retention(**{f"{status}_seconds": age})


def test_the_maintenance_thread_prunes_again_on_every_interval_until_stopped(
    dsn: str, db: Conn
) -> None:
    recent = seed_job(db, "succeeded", finished_ago=MINUTE)
    seed_job(db, "succeeded", finished_ago=HOUR)
    maintenance = Maintenance(
        dsn=dsn,
        schema="pgq",
        rescue_interval_seconds=0.2,
        retention=Retention(succeeded_seconds=10 * MINUTE, cancelled_seconds=None),
        prune_interval_seconds=0.2,
    )
    maintenance.start()
    try:
        wait_until(lambda: job_ids(db) == {recent}, 10, lambda: f"first prune; {job_ids(db)}")
        # A job that ages past its retention later is caught by a later run.
        cancelled = seed_job(db, "cancelled", finished_ago=DAY)  # cancelled: kept forever
        late = seed_job(db, "succeeded", finished_ago=HOUR)
        wait_until(lambda: late not in job_ids(db), 10, "a later prune run")
        assert job_ids(db) == {recent, cancelled}
    finally:
        maintenance.stop()
    assert not maintenance.is_alive()

    seed_job(db, "succeeded", finished_ago=HOUR)
    time.sleep(0.6)  # three of its intervals
    assert len(job_ids(db)) == 3, "a stopped thread prunes nothing"


@pytest.mark.parametrize("option", ["--keep-succeeded", "--keep-cancelled", "--keep-dead"])
def test_pgq_work_refuses_a_retention_that_is_not_a_duration_or_forever(option: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgq", "work", "tests.apps.metrics_app:app", option, "5x",
         "--dsn", "host=127.0.0.1 port=1"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert message.startswith(f"error: {option}: invalid duration '5x'")
    assert message.endswith("or 'forever'")
