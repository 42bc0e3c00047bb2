"""The operators' commands: `pgq stats`, `jobs`, `job`, `requeue`, `cancel`, `prune`.

Most run in-process through Typer's CliRunner on ``pgq.cli.app``; a few run as
real ``python -m pgq`` subprocesses, as an operator's shell runs them. Checked:
what is printed, the shape of ``--json``, exit codes, and that a failing
connection gives one clear line without the DSN's password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner, Result

from conftest import Databases
from pgq.cli import app
from seeding import Conn, fetch_job, job_ids, job_statuses, seed_job
from terminal import run_pgq_on_a_terminal
from worker_helpers import REPO_ROOT

HOUR = 3600.0
PASSWORD = "hunter2"
NO_PGQ_SETTINGS: dict[str, str | None] = {"PGQ_DSN": None, "DATABASE_URL": None, "PGQ_SCHEMA": None}
SUMMARY_KEYS = {
    "id", "queue", "task", "status", "priority", "attempts", "max_attempts", "run_at",
    "created_at", "started_at", "finished_at", "locked_by", "last_error",
}  # fmt: skip

runner = CliRunner()


def pgq_cli(*args: str) -> Result:
    """``pgq ARGS`` in-process, with no pgq settings in the environment."""
    return runner.invoke(app, list(args), env=NO_PGQ_SETTINGS)


def run_pgq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m pgq ARGS`` as a subprocess, wide enough that tables never wrap.

    stdin is not a terminal, as in a script: a command that would ask refuses instead.
    """
    env = {k: v for k, v in os.environ.items() if k not in NO_PGQ_SETTINGS}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "pgq", *args], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout, check=False,
    )  # fmt: skip


def flat(text: str) -> str:
    """``text`` on one line: rich wraps long lines at the terminal's width."""
    return " ".join(text.split())


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body row of the rich tables in ``text``."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.strip().startswith("│")
    ]


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def failed(result: Result) -> str:
    """The one-line error of a command that exited 1 (stderr, flattened)."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    return flat(result.stderr)


@pytest.fixture
def db(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def module_empty_dsn(databases: Databases) -> Iterator[str]:
    """A database without pgq's schema, shared by this module's tests (they only read)."""
    name = databases.create()
    yield databases.dsn(name)
    databases.drop_later(name)


# -- pgq stats ------------------------------------------------------------------------------


def test_stats_shows_due_scheduled_running_expired_and_lag_per_queue(dsn: str, db: Conn) -> None:
    seed_job(db, queue="emails", due_in=-90)
    seed_job(db, queue="emails", due_in=-10)
    seed_job(db, queue="emails", due_in=600)
    seed_job(db, "running", queue="emails", lease_in=-2)
    seed_job(db, "succeeded", queue="archive")

    out = ok(pgq_cli("stats", "--dsn", dsn))

    assert "pgq queues" in out
    (row,) = table_rows(out)
    assert row[:5] == ["emails", "2", "1", "1", "1"]
    assert row[5].endswith("m") and 1.5 <= float(row[5][:-1]) < 3, "lag 90 s shows as 1.5m"
    assert row[6:] == ["0", ""], "no dead job, no time of death"
    assert "archive" not in out


def test_stats_shows_each_queues_dead_jobs_and_last_death_without_all(dsn: str, db: Conn) -> None:
    seed_job(db, "dead", queue="payments", finished_ago=3 * HOUR)
    seed_job(db, "dead", queue="payments", finished_ago=2 * HOUR)
    seed_job(db, "dead", queue="emails", finished_ago=600)
    seed_job(db, queue="emails", due_in=-30)
    seed_job(db, "succeeded", queue="archive")

    out = ok(pgq_cli("stats", "--dsn", dsn))

    rows = {row[0]: row for row in table_rows(out)}
    assert set(rows) == {"emails", "payments"}, "a queue with only dead jobs has a row too"
    assert rows["payments"][1:5] == ["0", "0", "0", "0"]
    assert rows["payments"][6:] == ["2", "2.0h ago"], "the newest death, not the oldest"
    assert rows["emails"][1] == "1" and rows["emails"][6:] == ["1", "10.0m ago"]
    assert "all jobs by queue and status" not in out, "no --all: no scan of the table"


def test_stats_with_no_unfinished_or_dead_jobs_says_so(dsn: str, db: Conn) -> None:
    seed_job(db, "succeeded")
    seed_job(db, "cancelled")

    out = ok(pgq_cli("stats", "--dsn", dsn))

    assert table_rows(out) == []
    assert "no queued, running or dead jobs" in out


def test_stats_all_adds_every_status_per_queue(dsn: str, db: Conn) -> None:
    for status in ("queued", "succeeded", "succeeded", "dead", "cancelled"):
        seed_job(db, status, queue="emails")
    seed_job(db, "succeeded", queue="archive")

    out = ok(pgq_cli("stats", "--all", "--dsn", dsn))

    assert "all jobs by queue and status" in out
    rows = table_rows(out)
    # queue, queued, running, succeeded, dead, cancelled
    assert ["archive", "0", "0", "1", "0", "0"] in rows
    assert ["emails", "1", "0", "2", "1", "1"] in rows


def test_stats_json_has_queues_and_with_all_counts(dsn: str, db: Conn) -> None:
    seed_job(db, queue="emails", due_in=-30)
    dead = seed_job(db, "dead", queue="emails")

    plain = json.loads(ok(pgq_cli("stats", "--json", "--dsn", dsn)))
    everything = json.loads(ok(pgq_cli("stats", "--json", "--all", "--dsn", dsn)))

    assert set(plain) == {"queues", "counts", "unserved"} and plain["counts"] == []
    (queue,) = plain["queues"]
    assert set(queue) == {
        "queue", "due", "scheduled", "running", "lease_expired", "lag_seconds", "dead",
        "last_died_at",
    }  # fmt: skip
    assert (queue["queue"], queue["due"], queue["scheduled"], queue["running"]) == (
        "emails", 1, 0, 0,
    )  # fmt: skip
    assert 29 <= queue["lag_seconds"] < 90
    assert queue["dead"] == 1
    died = datetime.fromisoformat(queue["last_died_at"])
    assert died.utcoffset() is not None and died == fetch_job(db, dead)["finished_at"]
    assert sorted(everything["counts"], key=lambda c: c["status"]) == [
        {"queue": "emails", "status": "dead", "jobs": 1},
        {"queue": "emails", "status": "queued", "jobs": 1},
    ]


# -- pgq jobs and pgq job -------------------------------------------------------------------


def test_jobs_lists_newest_first_filtered_by_status_queue_and_task(dsn: str, db: Conn) -> None:
    wanted = [seed_job(db, "dead", task="charge", queue="payments") for _ in range(3)]
    seed_job(db, "dead", task="charge", queue="default")
    seed_job(db, "dead", task="refund", queue="payments")
    seed_job(db, "queued", task="charge", queue="payments")

    out = ok(
        pgq_cli("jobs", "--status", "dead", "--queue", "payments", "--task", "charge",
                "--dsn", dsn)
    )  # fmt: skip

    rows = table_rows(out)
    assert [int(row[0]) for row in rows] == sorted(wanted, reverse=True)
    assert {tuple(row[1:4]) for row in rows} == {("payments", "charge", "dead")}
    assert "pgq jobs (3 shown)" in out


def test_jobs_limit_and_since_keep_only_the_newest(dsn: str, db: Conn) -> None:
    old = seed_job(db, created_ago=3 * HOUR)
    recent = [seed_job(db) for _ in range(4)]

    limited = ok(pgq_cli("jobs", "--limit", "2", "--dsn", dsn))
    since = ok(pgq_cli("jobs", "--since", "2h", "--dsn", dsn))

    assert [int(row[0]) for row in table_rows(limited)] == sorted(recent, reverse=True)[:2]
    ids_since = {int(row[0]) for row in table_rows(since)}
    assert ids_since == set(recent) and old not in ids_since


def test_jobs_json_is_a_list_of_job_summaries(dsn: str, db: Conn) -> None:
    job_id = seed_job(db, "dead", task="charge", queue="payments", last_error="ValueError: no")

    (job,) = json.loads(ok(pgq_cli("jobs", "--json", "--dsn", dsn)))

    assert set(job) == SUMMARY_KEYS
    assert (job["id"], job["task"], job["queue"], job["status"]) == (
        job_id, "charge", "payments", "dead",
    )  # fmt: skip
    assert job["last_error"] == "ValueError: no" and job["attempts"] == 5
    assert job["finished_at"].endswith("+00:00"), "times are ISO 8601 with an offset"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "finished"], "unknown status 'finished'"),
        (["--since", "yesterday"], "--since 'yesterday': give a duration ago"),
        (["--since", "2030-01-01T10:00"], "UTC offset"),
    ],
)
def test_jobs_refuses_bad_filters_with_a_clear_message(
    module_dsn: str, args: list[str], message: str
) -> None:
    assert message in failed(pgq_cli("jobs", *args, "--dsn", module_dsn))


def test_the_hint_for_a_time_without_offset_gives_a_value_that_is_accepted(
    module_dsn: str,
) -> None:
    hint = failed(pgq_cli("jobs", "--since", "2030-01-01", "--dsn", module_dsn))
    suggested = hint.rsplit("e.g. ", 1)[-1]

    ok(pgq_cli("jobs", "--since", suggested, "--dsn", module_dsn))


def test_job_shows_args_state_and_error_history(dsn: str, db: Conn) -> None:
    job_id = seed_job(
        db, "dead", task="charge", args={"order": 7}, attempts=2, max_attempts=2,
        last_error="ValueError: card declined",
    )  # fmt: skip
    db.execute("SELECT pgq.requeue(%s)", [job_id])

    out = ok(pgq_cli("job", str(job_id), "--dsn", dsn))

    fields = {row[0]: row[1] for row in table_rows(out) if len(row) == 2}
    assert fields["id"] == str(job_id) and fields["task"] == "charge"
    assert fields["status"] == "queued" and fields["attempts"] == "0"
    assert fields["args"] == '{"order": 7}'
    assert "error history, oldest first" in out
    # Narrow terminals wrap the history's cells onto more lines: read it loosely.
    history = [row for row in table_rows(out) if len(row) == 4]
    assert [row[0] for row in history if row[0]] == ["1", "2"]
    # last_error, then each attempt's error (wrapped in its cell, so read without the borders)
    assert flat(out.replace("│", " ")).count("ValueError: card declined") == 3
    assert any(row[2] == "postgres" and row[3] == "requeued" for row in history)


def test_job_json_has_args_errors_lease_and_dedupe_key(dsn: str, db: Conn) -> None:
    job_id = seed_job(db, "running", args={"to": "a@b.c"}, dedupe_key="mail-1")

    job = json.loads(ok(pgq_cli("job", str(job_id), "--json", "--dsn", dsn)))

    assert set(job) == SUMMARY_KEYS | {
        "args", "errors", "locked_until", "dedupe_key", "result", "progress"
    }  # fmt: skip
    assert job["args"] == {"to": "a@b.c"} and job["errors"] == []
    assert job["status"] == "running" and job["locked_by"] == "worker-host:4242:abcdef"
    assert job["dedupe_key"] == "mail-1" and job["locked_until"] is not None


def test_job_with_an_unknown_id_fails_with_a_clear_message(module_dsn: str) -> None:
    assert failed(pgq_cli("job", "4242", "--dsn", module_dsn)) == "error: no job with id 4242"


# -- pgq requeue ----------------------------------------------------------------------------


def test_requeue_by_id_requeues_dead_and_cancelled_jobs(dsn: str, db: Conn) -> None:
    dead = seed_job(db, "dead")
    cancelled = seed_job(db, "cancelled")

    out = ok(pgq_cli("requeue", str(dead), str(cancelled), "--dsn", dsn))

    assert flat(out) == f"job {dead}: requeued job {cancelled}: requeued"
    assert job_statuses(db) == {dead: "queued", cancelled: "queued"}


def test_requeue_by_id_refuses_a_running_job_exits_1_and_still_requeues_the_others(
    dsn: str, db: Conn
) -> None:
    running = seed_job(db, "running")
    dead = seed_job(db, "dead")

    result = pgq_cli("requeue", str(running), str(dead), "--dsn", dsn)

    assert result.exit_code == 1
    assert flat(result.stdout) == (
        f"job {running}: not requeued: job {running} is running, only dead or cancelled "
        f"jobs can be requeued job {dead}: requeued"
    )
    assert job_statuses(db) == {running: "running", dead: "queued"}


def test_requeue_dry_run_by_id_says_what_it_would_do_and_changes_nothing(
    dsn: str, db: Conn
) -> None:
    dead = seed_job(db, "dead", task="charge")
    running = seed_job(db, "running", task="charge")

    out = ok(pgq_cli("requeue", str(dead), str(running), "--dry-run", "--dsn", dsn))

    assert flat(out) == (
        f"job {dead} (charge): would requeue job {running} (charge): would refuse: it is "
        "running: only dead or cancelled jobs can be requeued"
    )
    assert job_statuses(db) == {dead: "dead", running: "running"}


def seed_dead_mix(db: Conn) -> dict[str, int]:
    return {
        "charge timeout": seed_job(db, "dead", task="charge", last_error="TimeoutError: gw",
                                   finished_ago=3 * HOUR),
        "charge value": seed_job(db, "dead", task="charge", last_error="ValueError: amount",
                                 finished_ago=HOUR),
        "email timeout": seed_job(db, "dead", task="email", queue="mail",
                                  last_error="smtp TIMEOUT", finished_ago=600),
        "queued timeout": seed_job(db, "queued", task="charge", last_error="TimeoutError: gw"),
    }  # fmt: skip


def test_requeue_dry_run_by_filter_lists_the_matching_dead_jobs_and_changes_nothing(
    dsn: str, db: Conn
) -> None:
    jobs = seed_dead_mix(db)
    before = job_statuses(db)

    out = ok(pgq_cli("requeue", "--error", "%timeout%", "--dry-run", "--dsn", dsn))

    assert "dry run: 2 dead jobs would be requeued" in out
    rows = table_rows(out)
    assert [int(row[0]) for row in rows] == [jobs["charge timeout"], jobs["email timeout"]]
    assert rows[1][1:3] == ["mail", "email"]
    assert job_statuses(db) == before


def test_requeue_dry_run_of_a_large_dead_letter_queue_shows_the_first_hundred_by_id(
    dsn: str, db: Conn
) -> None:
    with db.transaction():
        dead = [seed_job(db, "dead", finished_ago=HOUR * (200 - i)) for i in range(102)]

    out = ok(pgq_cli("requeue", "--all-dead", "--dry-run", "--dsn", dsn))

    assert "dry run: 102 dead jobs would be requeued" in out
    assert [int(row[0]) for row in table_rows(out)] == dead[:100]
    assert "first 100 of 102, by id" in flat(out)
    assert set(job_statuses(db).values()) == {"dead"}


def test_requeue_dry_run_promises_only_what_the_real_run_then_does(dsn: str, db: Conn) -> None:
    blocked = seed_job(db, "dead", dedupe_key="sync-1")
    seed_job(db, "queued", dedupe_key="sync-1")
    seed_job(db, "dead")

    by_id = ok(pgq_cli("requeue", str(blocked), "--dry-run", "--dsn", dsn))
    by_filter = ok(pgq_cli("requeue", "--all-dead", "--dry-run", "--dsn", dsn))
    real = ok(pgq_cli("requeue", "--all-dead", "--yes", "--dsn", dsn))

    assert flat(real) == "requeued 1 dead job"
    assert "would refuse" in by_id
    assert "dry run: 1 dead job would be requeued" in by_filter


def test_requeue_by_error_pattern_requeues_exactly_the_matching_dead_jobs(
    dsn: str, db: Conn
) -> None:
    jobs = seed_dead_mix(db)

    out = ok(pgq_cli("requeue", "--error", "%timeout%", "--yes", "--dsn", dsn))

    assert flat(out) == "requeued 2 dead jobs"
    statuses = job_statuses(db)
    assert statuses[jobs["charge timeout"]] == statuses[jobs["email timeout"]] == "queued"
    assert statuses[jobs["charge value"]] == "dead"


@pytest.mark.parametrize(
    ("options", "selected"),
    [
        (["--task", "charge"], {"charge timeout", "charge value"}),
        (["--queue", "mail"], {"email timeout"}),
        (["--died-after", "2h"], {"charge value", "email timeout"}),
        (["--died-before", "30m"], {"charge timeout", "charge value"}),
        (["--task", "charge", "--died-after", "2h"], {"charge value"}),
        (["--all-dead"], {"charge timeout", "charge value", "email timeout"}),
    ],
)
def test_requeue_by_filter_or_all_dead_requeues_the_selected_dead_jobs(
    dsn: str, db: Conn, options: list[str], selected: set[str]
) -> None:
    jobs = seed_dead_mix(db)

    out = ok(pgq_cli("requeue", *options, "-y", "--dsn", dsn))

    assert flat(out) == {1: "requeued 1 dead job", 2: "requeued 2 dead jobs",
                         3: "requeued 3 dead jobs"}[len(selected)]  # fmt: skip
    statuses = job_statuses(db)
    for name, job_id in jobs.items():
        if name.startswith("queued"):
            assert statuses[job_id] == "queued"
        else:
            assert statuses[job_id] == ("queued" if name in selected else "dead"), name


def test_requeue_by_filter_without_a_terminal_or_yes_refuses_and_requeues_nothing(
    dsn: str, db: Conn
) -> None:
    jobs = seed_dead_mix(db)
    before = job_statuses(db)

    text = failed(pgq_cli("requeue", "--error", "%timeout%", "--task", "charge", "--dsn", dsn))

    assert text.startswith(
        "error: refusing to requeue 1 dead job matching --task charge --error %timeout% "
        "without confirmation: stdin is not a terminal"
    ), text
    assert "Add --yes to go ahead, or --dry-run" in text
    assert job_statuses(db) == before
    assert before[jobs["charge timeout"]] == "dead"


def test_requeue_by_filter_on_a_terminal_asks_and_a_no_requeues_nothing(dsn: str, db: Conn) -> None:
    seed_dead_mix(db)
    before = job_statuses(db)

    result = run_pgq_on_a_terminal("requeue", "--all-dead", "--dsn", dsn, answer="n\n")

    assert result.returncode == 1, result.stderr
    assert flat(result.stderr) == (
        "Requeue 3 dead jobs (--all-dead)? Each runs again, with its attempts from zero. "
        "[y/N] not confirmed: nothing changed"
    )
    assert job_statuses(db) == before


def test_requeue_by_id_does_not_ask(dsn: str, db: Conn) -> None:
    # The operator named each job: nothing to confirm, and scripts keep working.
    dead = seed_job(db, "dead")

    assert flat(ok(pgq_cli("requeue", str(dead), "--dsn", dsn))) == f"job {dead}: requeued"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1", "--task", "charge"], "error: give job ids or filters, not both"),
        (["1", "--all-dead"], "error: give job ids or filters, not both"),
        ([], "error: say which jobs: ids, a filter (--task, --queue, --error, --died-after, "
             "--died-before), or --all-dead"),
        (["--died-after", "2030-01-01T00:00"], "UTC offset"),
    ],
)  # fmt: skip
def test_requeue_refuses_ambiguous_or_missing_selections_and_changes_nothing(
    dsn: str, db: Conn, args: list[str], message: str
) -> None:
    dead = seed_job(db, "dead", task="charge")

    assert message in failed(pgq_cli("requeue", *args, "--dsn", dsn))

    assert fetch_job(db, dead)["status"] == "dead"


# -- pgq cancel -----------------------------------------------------------------------------


def test_cancel_cancels_queued_jobs(dsn: str, db: Conn) -> None:
    first, second = seed_job(db), seed_job(db, due_in=600)

    out = ok(pgq_cli("cancel", str(first), str(second), "--dsn", dsn))

    assert flat(out) == f"job {first}: cancelled job {second}: cancelled"
    assert job_statuses(db) == {first: "cancelled", second: "cancelled"}


def test_cancel_reports_each_refusal_and_exits_1(dsn: str, db: Conn) -> None:
    queued, running, dead = seed_job(db), seed_job(db, "running"), seed_job(db, "dead")

    result = pgq_cli("cancel", str(queued), str(running), str(dead), "999999", "--dsn", dsn)

    assert result.exit_code == 1
    assert flat(result.stdout) == (
        f"job {queued}: cancelled job {running}: cancelled "
        f"job {dead}: not cancelled: job {dead} is dead, only queued or running jobs can be "
        "cancelled job 999999: not cancelled: no job with id 999999"
    )
    assert job_statuses(db) == {queued: "cancelled", running: "cancelled", dead: "dead"}


def test_job_shows_progress_and_result(dsn: str, db: Conn) -> None:
    job_id = seed_job(db, "succeeded")
    db.execute(
        "UPDATE pgq.jobs SET progress = %s, result = %s WHERE id = %s",
        ['{"done": 3}', '{"width": 640}', job_id],
    )
    db.commit()

    result = pgq_cli("job", str(job_id), "--dsn", dsn)

    assert result.exit_code == 0, result.output
    assert '│ progress     │ {"done": 3}' in result.stdout
    assert '│ result       │ {"width": 640}' in result.stdout


@pytest.mark.parametrize("command", ["cancel", "requeue", "job"])
def test_an_id_beyond_bigint_is_refused_before_reaching_the_database(
    module_dsn: str, command: str
) -> None:
    result = pgq_cli(command, "99999999999999999999", "--dsn", module_dsn)

    assert result.exit_code == 2
    assert "9223372036854775807" in flat(result.output)


# -- pgq prune ------------------------------------------------------------------------------


def test_prune_deletes_old_succeeded_and_cancelled_jobs_by_default(dsn: str, db: Conn) -> None:
    day = 86400.0
    seed_job(db, "succeeded", finished_ago=3 * day)
    seed_job(db, "cancelled", finished_ago=3 * day)
    seed_job(db, "cancelled", finished_ago=3 * day)
    kept = {
        seed_job(db, "succeeded", finished_ago=day),
        seed_job(db, "dead", finished_ago=30 * day),
        seed_job(db, "queued", created_ago=30 * day),
    }

    out = ok(pgq_cli("prune", "--older-than", "2d", "--yes", "--dsn", dsn))

    assert out.splitlines() == [
        "pruned 1 succeeded job older than 2d",
        "pruned 2 cancelled jobs older than 2d",
    ]
    assert job_ids(db) == kept


def test_prune_with_status_and_batch_size_deletes_only_that_status(dsn: str, db: Conn) -> None:
    for _ in range(5):
        seed_job(db, "dead", finished_ago=2 * HOUR)
    kept = {seed_job(db, "dead", finished_ago=600), seed_job(db, "succeeded", finished_ago=HOUR)}

    out = ok(
        pgq_cli("prune", "--older-than", "1h", "--status", "dead", "--batch-size", "2",
                "-y", "--dsn", dsn)
    )  # fmt: skip

    assert out.splitlines() == ["pruned 5 dead jobs older than 1h"]
    assert job_ids(db) == kept


def seed_old_dead_jobs(db: Conn) -> set[int]:
    """Two dead jobs that died 2 h ago, and a succeeded one as old: all of them in view."""
    return {
        seed_job(db, "dead", finished_ago=2 * HOUR),
        seed_job(db, "dead", finished_ago=2 * HOUR),
        seed_job(db, "succeeded", finished_ago=2 * HOUR),
    }


def test_prune_without_a_terminal_or_yes_refuses_naming_what_it_would_delete(
    dsn: str, db: Conn
) -> None:
    everything = seed_old_dead_jobs(db)

    text = failed(pgq_cli("prune", "--older-than", "1h", "--status", "dead", "--dsn", dsn))

    assert text.startswith("error: refusing to delete 2 dead jobs finished before "), text
    assert "UTC (older than 1h) without confirmation: stdin is not a terminal" in text
    assert text.endswith("Add --yes to go ahead, or --dry-run to see what would change")
    assert job_ids(db) == everything


def test_prune_dry_run_counts_per_status_and_deletes_nothing(dsn: str, db: Conn) -> None:
    everything = seed_old_dead_jobs(db)
    seed_job(db, "dead", finished_ago=600)  # too young
    everything = job_ids(db)

    out = ok(
        pgq_cli("prune", "--older-than", "1h", "--status", "dead", "--status", "succeeded",
                "--status", "cancelled", "--dry-run", "--dsn", dsn)
    )  # fmt: skip

    assert flat(out).startswith(
        "dry run: would delete 2 dead jobs, 1 succeeded job and 0 cancelled jobs finished before "
    ), out
    assert flat(out).endswith("UTC (older than 1h); nothing deleted")
    assert job_ids(db) == everything


def test_prune_on_a_terminal_asks_and_a_no_deletes_nothing(dsn: str, db: Conn) -> None:
    everything = seed_old_dead_jobs(db)

    result = run_pgq_on_a_terminal(
        "prune", "--older-than", "1h", "--status", "dead", "--dsn", dsn, answer="n\n"
    )

    assert result.returncode == 1, result.stderr
    question, _, after = flat(result.stderr).partition(" [y/N] ")
    assert question.startswith("Delete 2 dead jobs finished before "), result.stderr
    assert question.endswith(" UTC (older than 1h)?")
    assert after == "not confirmed: nothing changed"
    assert result.stdout == ""
    assert job_ids(db) == everything


def test_prune_on_a_terminal_deletes_after_a_yes(dsn: str, db: Conn) -> None:
    everything = seed_old_dead_jobs(db)
    succeeded = max(everything)

    result = run_pgq_on_a_terminal(
        "prune", "--older-than", "1h", "--status", "dead", "--dsn", dsn, answer="y\n"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "pruned 2 dead jobs older than 1h\n"
    assert job_ids(db) == {succeeded}


def test_prune_with_nothing_to_delete_does_not_ask(dsn: str, db: Conn) -> None:
    young = seed_job(db, "dead", finished_ago=600)

    out = ok(pgq_cli("prune", "--older-than", "1h", "--status", "dead", "--dsn", dsn))

    assert out.splitlines() == ["pruned 0 dead jobs older than 1h"]
    assert job_ids(db) == {young}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "1d", "--status", "queued"],
         "error: only finished jobs can be pruned (succeeded, dead, cancelled), not queued"),
        (["--older-than", "-1d"], "error: invalid duration '-1d'"),
        (["--older-than", "soon"], "error: invalid duration 'soon'"),
    ],
)  # fmt: skip
def test_prune_refuses_unfinished_statuses_and_bad_ages(
    dsn: str, db: Conn, args: list[str], message: str
) -> None:
    job_id = seed_job(db, "succeeded", finished_ago=30 * 86400)

    assert message in failed(pgq_cli("prune", *args, "--dsn", dsn))

    assert job_ids(db) == {job_id}


# -- when the database is not there ---------------------------------------------------------

COMMANDS = {
    "stats": ["stats"],
    "jobs": ["jobs"],
    "job": ["job", "1"],
    "requeue": ["requeue", "1"],
    "requeue by filter": ["requeue", "--all-dead"],
    "cancel": ["cancel", "1"],
    "prune": ["prune", "--older-than", "1d"],
}
BAD_DSNS: dict[str, tuple[Callable[[str, str], str], str]] = {
    # (how to make the DSN from the test's migrated and empty ones, what the error says)
    "unparsable DSN": (lambda dsn, empty: f"host=127.0.0.1 password={PASSWORD} nonsense",
                       "error: invalid DSN:"),
    "unreachable server": (lambda dsn, empty: make_conninfo(dsn, port=1, password=PASSWORD),
                           "error: cannot connect to"),
    "unmigrated schema": (lambda dsn, empty: make_conninfo(empty, password=PASSWORD),
                          "error: pgq's schema 'pgq' is not in this database: "
                          "run `pgq migrate` first"),
}  # fmt: skip


@pytest.mark.parametrize("problem", list(BAD_DSNS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_fails_clearly_without_leaking_the_password(
    module_dsn: str, module_empty_dsn: str, command: str, problem: str
) -> None:
    make_dsn, message = BAD_DSNS[problem]

    result = pgq_cli(*COMMANDS[command], "--dsn", make_dsn(module_dsn, module_empty_dsn))

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert flat(result.stderr).startswith(message)
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output


def test_unreachable_server_message_names_the_server_without_its_password(
    module_dsn: str,
) -> None:
    bad = make_conninfo(module_dsn, host="127.0.0.1", port=1, password=PASSWORD)

    text = failed(pgq_cli("stats", "--dsn", bad))

    assert "host=127.0.0.1" in text and "port=1" in text and "Connection refused" in text
    assert PASSWORD not in text


@pytest.mark.parametrize("password", [f"{PASSWORD}%zz", f"{PASSWORD}%00"])
def test_a_url_dsn_with_a_malformed_password_does_not_print_it(password: str) -> None:
    # libpq's parse error quotes the part it could not decode: here, the password.
    result = pgq_cli("stats", "--dsn", f"postgresql://postgres:{password}@127.0.0.1:5432/db")

    assert result.exit_code == 1
    assert "invalid DSN" in result.stderr
    assert PASSWORD not in result.output


# -- as real processes ----------------------------------------------------------------------


def test_stats_json_from_a_real_process(dsn: str, db: Conn) -> None:
    seed_job(db, queue="emails", due_in=600)

    result = run_pgq("stats", "--json", "--dsn", dsn)

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    # No worker runs: the job is unserved too.
    unserved = [(u["queue"], u["due"], u["scheduled"]) for u in shown.pop("unserved")]
    assert unserved == [("emails", 0, 1)]
    assert shown == {
        "queues": [{"queue": "emails", "due": 0, "scheduled": 1, "running": 0,
                    "lease_expired": 0, "lag_seconds": 0.0, "dead": 0, "last_died_at": None}],
        "counts": [],
    }  # fmt: skip


def test_job_json_and_requeue_from_real_processes(dsn: str, db: Conn) -> None:
    job_id = seed_job(db, "dead", args={"order": 7}, last_error="ValueError: declined")

    shown = run_pgq("job", str(job_id), "--json", "--dsn", dsn)
    requeued = run_pgq("requeue", str(job_id), "--dsn", dsn)

    assert shown.returncode == 0, shown.stderr
    job: dict[str, Any] = json.loads(shown.stdout)
    assert (job["status"], job["args"], job["last_error"]) == (
        "dead", {"order": 7}, "ValueError: declined",
    )  # fmt: skip
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"job {job_id}: requeued"
    assert fetch_job(db, job_id)["status"] == "queued"


def test_requeue_of_a_running_job_exits_1_from_a_real_process(dsn: str, db: Conn) -> None:
    job_id = seed_job(db, "running")

    result = run_pgq("requeue", str(job_id), "--dsn", dsn)

    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"job {job_id}: not requeued: job {job_id} is running, only dead or cancelled jobs "
        "can be requeued"
    )
    assert fetch_job(db, job_id)["status"] == "running"


@pytest.mark.parametrize("problem", ["unreachable server", "unmigrated schema"])
def test_a_real_process_fails_with_one_line_and_no_password(
    module_dsn: str, module_empty_dsn: str, problem: str
) -> None:
    make_dsn, message = BAD_DSNS[problem]

    result = run_pgq("jobs", "--dsn", make_dsn(module_dsn, module_empty_dsn))

    assert result.returncode == 1
    assert result.stdout == ""
    assert flat(result.stderr).startswith(message)
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr


def test_dsn_comes_from_pgq_dsn_in_the_environment(dsn: str, db: Conn) -> None:
    seed_job(db, queue="from-env")

    result = runner.invoke(app, ["stats", "--json"], env={**NO_PGQ_SETTINGS, "PGQ_DSN": dsn})

    assert result.exit_code == 0, result.output
    assert [q["queue"] for q in json.loads(result.stdout)["queues"]] == ["from-env"]


def test_a_stored_error_cannot_drive_the_operators_terminal(dsn: str) -> None:
    # An error message from outside (a fetched page) with a title-setting OSC, a
    # clear-screen CSI and a forged line of its own.
    hostile = "boom \x1b]0;PWNED\x07\x1b[2J\n2026-12-01 CRITICAL forged\r"
    with psycopg.connect(dsn) as db:
        job_id = seed_job(db, "dead", last_error=hostile)

    shown = run_pgq("job", str(job_id), "--dsn", dsn)
    listed = run_pgq("jobs", "--status", "dead", "--dsn", dsn)

    for done in (shown, listed):
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\r" not in done.stdout
    # In the table cell a line break stays one (a traceback keeps its lines); in the list,
    # where each job is one line, it becomes a space.
    assert "boom \\x1b]0;PWNED\\x07\\x1b[2J" in shown.stdout and "forged\\x0d" in shown.stdout
