"""The scheduler makes each tick's job once, across the fleet, on the database's word.

Time zones and missed ticks run on a controlled clock: the test moves "now" and
calls the scheduler's tick itself, as its thread would after each wait it asks for.
The fleet test runs real `pgq work` processes racing on an every-second schedule.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from typer.testing import CliRunner

import pgq
from pgq import admin
from pgq.cli import app as cli_app
from pgq.worker.scheduler import Scheduler
from worker_helpers import WorkerProcesses, wait_until

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def autocommit(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def worker_scheduler(dsn: str, app: pgq.App, clock: Clock) -> Scheduler:
    """What a worker of ``app`` runs, with ``clock`` for its time."""
    return Scheduler(dsn=dsn, schema="pgq", schedules=app.schedules, tasks=app.tasks, clock=clock)


def run_until(
    scheduler: Scheduler, conn: psycopg.Connection[Any], clock: Clock, end: datetime
) -> None:
    """Let time pass as the scheduler's thread would: wake when it asks, until ``end``."""
    while clock.now < end:
        # In UTC: adding to a local time adds to its wall clock, across DST changes too.
        clock.now = clock.now.astimezone(UTC) + timedelta(seconds=scheduler.tick(conn))


def jobs_made(conn: psycopg.Connection[Any], zone: ZoneInfo = BERLIN) -> list[str]:
    """The run_at of every job, oldest first, in local time: a job's run_at is its tick."""
    rows = conn.execute("SELECT run_at FROM pgq.jobs ORDER BY id").fetchall()
    return [run_at.astimezone(zone).isoformat() for (run_at,) in rows]


def nightly_app(cron: str = "30 2 * * *", misfire: str = "skip") -> pgq.App:
    app = pgq.App()

    @app.periodic(cron, tz="Europe/Berlin", misfire=misfire, queue="reports")  # type: ignore[arg-type]
    def nightly() -> None: ...

    return app


# -- daylight saving time -------------------------------------------------------------


def test_a_daily_tick_in_the_skipped_hour_runs_once_at_three(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN))
    run_until(worker_scheduler(dsn, nightly_app(), clock), autocommit, clock,
              datetime(2026, 3, 30, 12, 0, tzinfo=BERLIN))  # fmt: skip
    assert jobs_made(autocommit) == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_daily_tick_in_the_repeated_hour_runs_once(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN))
    run_until(worker_scheduler(dsn, nightly_app(), clock), autocommit, clock,
              datetime(2026, 10, 26, 12, 0, tzinfo=BERLIN))  # fmt: skip
    assert jobs_made(autocommit) == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_a_worker_back_in_the_repeated_hour_makes_the_days_missed_tick_once(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    app = nightly_app(misfire="run_latest")
    clock = Clock(datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN))
    worker_scheduler(dsn, app, clock).tick(autocommit)
    # No worker from then until 02:10 winter time, in the hour that happens twice: the
    # night's 02:30 (summer time) was missed, the second 02:30 is not a tick of its own.
    clock.now = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)
    run_until(worker_scheduler(dsn, app, clock), autocommit, clock,
              datetime(2026, 10, 26, 12, 0, tzinfo=BERLIN))  # fmt: skip
    assert jobs_made(autocommit) == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_an_hourly_schedule_runs_by_real_hours_across_both_changes(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN))
    scheduler = worker_scheduler(dsn, nightly_app("30 * * * *"), clock)
    run_until(scheduler, autocommit, clock, datetime(2026, 3, 29, 5, 0, tzinfo=BERLIN))
    clock.now = datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN)
    autocommit.execute("DELETE FROM pgq.jobs")
    # Seven months on: every tick between is a missed one, skipped without a job.
    run_until(scheduler, autocommit, clock, datetime(2026, 10, 25, 5, 0, tzinfo=BERLIN))
    assert jobs_made(autocommit) == [
        "2026-10-25T00:30:00+02:00",
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",  # the hour that happens twice runs twice: an hour apart
        "2026-10-25T03:30:00+01:00",
        "2026-10-25T04:30:00+01:00",
    ]


def test_an_hourly_schedule_has_no_tick_in_the_skipped_hour(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN))
    run_until(worker_scheduler(dsn, nightly_app("30 * * * *"), clock), autocommit, clock,
              datetime(2026, 3, 29, 5, 0, tzinfo=BERLIN))  # fmt: skip
    assert jobs_made(autocommit) == [
        "2026-03-29T00:30:00+01:00",
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-29T04:30:00+02:00",
    ]


# -- missed ticks ---------------------------------------------------------------------


def hourly_after_an_outage(dsn: str, conn: psycopg.Connection[Any], misfire: str,
                           back_at: datetime) -> list[str]:  # fmt: skip
    """An hourly schedule declared at 10:00:30, its workers gone until ``back_at``."""
    app = nightly_app("0 * * * *", misfire=misfire)
    clock = Clock(datetime(2026, 6, 1, 10, 0, 30, tzinfo=BERLIN))
    worker_scheduler(dsn, app, clock).tick(conn)
    clock.now = back_at
    worker_scheduler(dsn, app, clock).tick(conn)  # a new worker: all it knows is in the table
    return jobs_made(conn)


def test_skip_makes_no_job_for_ticks_missed_while_no_worker_ran(
    dsn: str, autocommit: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    back_at = datetime(2026, 6, 1, 15, 20, tzinfo=BERLIN)
    assert hourly_after_an_outage(dsn, autocommit, "skip", back_at) == []
    assert (
        "schedule nightly '0 * * * *' Europe/Berlin: skipped tick 2026-06-01T15:00:00+02:00, "
        "over a minute late (misfire='skip'); the ticks from 2026-06-01T11:00:00+02:00 until then "
        "were missed (no worker ran) and skipped"
    ) in caplog.messages
    [schedule] = admin.schedules(autocommit, now=back_at)
    assert schedule.ticked_through == datetime(2026, 6, 1, 15, 0, tzinfo=BERLIN)
    assert schedule.next_run == datetime(2026, 6, 1, 16, 0, tzinfo=BERLIN)


def test_run_latest_makes_one_job_for_the_latest_missed_tick(
    dsn: str, autocommit: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    back_at = datetime(2026, 6, 1, 15, 20, tzinfo=BERLIN)
    assert hourly_after_an_outage(dsn, autocommit, "run_latest", back_at) == [
        "2026-06-01T15:00:00+02:00"
    ]
    [made] = [m for m in caplog.messages if "made job" in m]
    assert made.endswith("the ticks from 2026-06-01T11:00:00+02:00 until then were missed (no "
                          "worker ran) and skipped")  # fmt: skip


def test_a_tick_under_a_minute_late_still_runs_under_skip(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    back_at = datetime(2026, 6, 1, 15, 0, 45, tzinfo=BERLIN)  # a deploy, say
    assert hourly_after_an_outage(dsn, autocommit, "skip", back_at) == ["2026-06-01T15:00:00+02:00"]


def test_a_new_schedule_does_not_run_ticks_from_before_it_existed(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime(2026, 6, 1, 10, 0, tzinfo=BERLIN))
    worker_scheduler(dsn, nightly_app(misfire="run_latest"), clock).tick(autocommit)
    assert jobs_made(autocommit) == []


# -- once per tick --------------------------------------------------------------------


def test_a_tick_is_made_once_whichever_workers_try_it_and_whatever_was_pruned(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    app = nightly_app()
    clock = Clock(datetime(2026, 6, 1, 12, 0, tzinfo=BERLIN))
    fleet = [worker_scheduler(dsn, app, clock) for _ in range(3)]
    for scheduler in fleet:
        scheduler.tick(autocommit)
    clock.now = datetime(2026, 6, 2, 2, 30, 5, tzinfo=BERLIN)
    for scheduler in fleet:
        scheduler.tick(autocommit)
    assert jobs_made(autocommit) == ["2026-06-02T02:30:00+02:00"]
    # Retention deletes the finished job; a worker started afterwards still knows the tick is done.
    autocommit.execute("UPDATE pgq.jobs SET status = 'succeeded', finished_at = now()")
    assert admin.prune(autocommit, "succeeded", 0) == 1
    worker_scheduler(dsn, app, clock).tick(autocommit)
    assert jobs_made(autocommit) == []
    [schedule] = admin.schedules(autocommit)
    assert schedule.last_job_id is not None and schedule.last_job_status is None  # pruned


def test_the_ticks_job_has_the_tasks_queue_and_max_attempts_and_the_schedules_args(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    app = pgq.App()

    @app.task(queue="accounts", max_attempts=2)
    def sync_account(account: int) -> None: ...

    app.schedule(sync_account, cron="0 * * * *", args={"account": 42})
    clock = Clock(datetime(2026, 6, 1, 9, 59, tzinfo=UTC))
    run_until(worker_scheduler(dsn, app, clock), autocommit, clock,
              datetime(2026, 6, 1, 10, 1, tzinfo=UTC))  # fmt: skip
    row = autocommit.execute("SELECT task, queue, max_attempts, args FROM pgq.jobs").fetchone()
    assert row == ("sync_account", "accounts", 2, {"account": 42})


def test_a_schedule_no_worker_declares_for_a_week_is_deleted(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    worker_scheduler(dsn, nightly_app("0 3 * * *"), clock).tick(autocommit)
    clock.now += timedelta(days=6)
    worker_scheduler(dsn, nightly_app("0 4 * * *"), clock).tick(autocommit)
    assert sorted(s.cron for s in admin.schedules(autocommit)) == ["0 3 * * *", "0 4 * * *"]
    clock.now += timedelta(days=2)
    worker_scheduler(dsn, nightly_app("0 4 * * *"), clock).tick(autocommit)
    assert [s.cron for s in admin.schedules(autocommit)] == ["0 4 * * *"]


# -- the fleet ------------------------------------------------------------------------


def test_four_workers_racing_on_an_every_second_schedule_make_one_job_per_tick(
    dsn: str, workers: WorkerProcesses
) -> None:
    fleet = [workers.start(dsn, "--concurrency", "2", app="tests.apps.periodic:app")
             for _ in range(4)]  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn:

        def ticks() -> int:
            return int(conn.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0])  # type: ignore[index]

        wait_until(lambda: ticks() > 0, 30, "the first tick's job")
        time.sleep(12)
        for worker in fleet:
            worker.signal(signal.SIGTERM)
        for worker in fleet:
            assert worker.wait(timeout=30) == 0
        rows = conn.execute("SELECT run_at FROM pgq.jobs ORDER BY run_at").fetchall()
    run_ats = [run_at for (run_at,) in rows]
    assert len(run_ats) >= 10
    assert len(set(run_ats)) == len(run_ats), "a tick made more than one job"
    gaps = {b - a for a, b in itertools.pairwise(run_ats)}
    assert gaps == {timedelta(seconds=1)}, f"ticks missed between the first and the last: {gaps}"
    assert all(run_at.microsecond == 0 for run_at in run_ats)
    logs = "".join(worker.log() for worker in fleet)
    assert "failed" not in logs and "Traceback" not in logs


# -- pgq schedules --------------------------------------------------------------------


def pgq_schedules_table(dsn: str) -> str:
    """`pgq schedules` as printed, wide enough that no cell wraps."""
    done = subprocess.run(
        [sys.executable, "-m", "pgq", "schedules", "--dsn", dsn], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"}, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def test_pgq_schedules_lists_next_run_and_last_jobs_status(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    app = nightly_app("*/5 * * * *")

    @app.task()
    def sync_account(account: int) -> None: ...

    app.schedule(sync_account, cron="0 3 * * *", tz="UTC", args={"account": 42})
    now = datetime.now(UTC)
    clock = Clock(now - timedelta(minutes=10))
    run_until(worker_scheduler(dsn, app, clock), autocommit, clock, now)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["schedules", "--dsn", dsn, "--json"])
    assert result.exit_code == 0, result.output
    shown = {s["task"]: s for s in json.loads(result.output)["schedules"]}
    nightly = shown["nightly"]
    assert nightly["cron"] == "*/5 * * * *" and nightly["tz"] == "Europe/Berlin"
    assert nightly["last_job_status"] == "queued" and nightly["declared"] is True
    next_run = datetime.fromisoformat(nightly["next_run"])
    assert now < next_run <= now + timedelta(minutes=5) and next_run.minute % 5 == 0
    assert shown["sync_account"]["args"] == {"account": 42}
    assert shown["sync_account"]["last_job_id"] is None

    table = pgq_schedules_table(dsn)
    nightly_line = next(line for line in table.splitlines() if "nightly" in line)
    assert "*/5 * * * *" in nightly_line and "Europe/Berlin" in nightly_line
    assert "queued" in nightly_line and ", in " in nightly_line
    sync_line = next(line for line in table.splitlines() if "sync_account" in line)
    assert '{"account": 42}' in sync_line


def test_pgq_schedules_says_when_no_worker_declares_a_schedule(
    dsn: str, autocommit: psycopg.Connection[Any]
) -> None:
    clock = Clock(datetime.now(UTC) - timedelta(hours=1))
    worker_scheduler(dsn, nightly_app(), clock).tick(autocommit)
    assert "no worker declares it" in pgq_schedules_table(dsn)
