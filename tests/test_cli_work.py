"""`pgq work --processes N` and its hidden `pgq work-child`: each child finds its checked
settings in $PGQ_WORKER_CHILD, never on its command line, and a child started any other
way fails with one clear line.

Most tests run in-process through Typer's CliRunner on ``pgq.cli.app``; one runs a real
supervisor with two children.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner, Result

import pgq
from pgq.cli import app
from pgq.cli_work import CHILD_SPEC_ENV_VAR, ChildSpec
from pgq.config import describe_dsn
from pgq.worker.settings import WorkerSettings
from worker_helpers import (
    LEDGER_APP,
    REPO_ROOT,
    WorkerProcess,
    child_pids,
    create_ledger,
    scalar,
    wait_until,
)

PASSWORD = "hunter2"
NO_PGQ_SETTINGS: dict[str, str | None] = {
    "PGQ_DSN": None, "DATABASE_URL": None, "PGQ_SCHEMA": None, CHILD_SPEC_ENV_VAR: None,
}  # fmt: skip

runner = CliRunner()


def work_child(spec: str | None) -> Result:
    """``pgq work-child`` in-process, with ``spec`` (or nothing) in $PGQ_WORKER_CHILD."""
    return runner.invoke(app, ["work-child"], env={**NO_PGQ_SETTINGS, CHILD_SPEC_ENV_VAR: spec})


def one_error_line(result: Result) -> str:
    """The single line a failed command printed, after checking it failed cleanly."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def child_spec(dsn: str, app_path: str = LEDGER_APP, **overrides: Any) -> str:
    """$PGQ_WORKER_CHILD as `pgq work --processes` writes it for one child."""
    options: dict[str, Any] = {
        "schema": None, "queues": None, "concurrency": 2, "poll_seconds": 0.2,
        "lease_seconds": 5.0, "poll_only": False, "shutdown_grace_seconds": 1.0,
        "rescue_interval_seconds": None, "retention": None, "prune_interval_seconds": 60.0,
        "metrics_port": None, "metrics_host": "127.0.0.1", "name": None,
        "synchronous_commit": False, **overrides,
    }  # fmt: skip
    settings = WorkerSettings.create(dsn, **options)
    environment = ChildSpec(app_path, settings.to_json(), "info", "text").environment(dsn)
    return environment[CHILD_SPEC_ENV_VAR]


# -- pgq work-child started by hand, or with a broken spec ----------------------------------


def test_work_child_without_its_spec_says_it_is_started_by_pgq_work_processes() -> None:
    line = one_error_line(work_child(None))

    assert line == (
        "error: cannot start a worker process: $PGQ_WORKER_CHILD is not set: "
        "run `pgq work --processes N`"
    )


def test_a_metrics_port_range_past_65535_is_refused_before_any_child_starts() -> None:
    result = runner.invoke(
        app,
        ["work", LEDGER_APP, "--dsn", "host=127.0.0.1 dbname=unused", "--processes", "3",
         "--metrics-port", "65534"],
        env=NO_PGQ_SETTINGS,
    )  # fmt: skip

    line = one_error_line(result)
    assert "--metrics-port 65534 with --processes 3" in line
    assert "65536 is past 65535" in line


def test_work_child_is_hidden_from_the_help() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    assert "work-child" not in result.output
    assert "migrate" in result.output


def spec_with_settings(settings_json: str) -> str:
    """A child spec whose fields are all there, holding ``settings_json``."""
    fields = {"app_path": LEDGER_APP, "log_level": "info", "log_format": "text"}
    return json.dumps({**fields, "settings_json": settings_json})


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("", id="empty"),
        pytest.param("not json", id="not_json"),
        pytest.param("[1, 2]", id="a_list"),
        pytest.param("{}", id="no_fields"),
        pytest.param(spec_with_settings("{}"), id="settings_without_fields"),
        pytest.param(spec_with_settings("nope"), id="settings_not_json"),
    ],
)
def test_work_child_with_a_malformed_spec_fails_with_one_clear_line(spec: str) -> None:
    line = one_error_line(work_child(spec))

    assert line.startswith("error: cannot start a worker process")


def test_work_child_whose_app_cannot_be_imported_names_it(dsn: str) -> None:
    line = one_error_line(work_child(child_spec(dsn, "pgq_no_such_module:app")))

    assert "cannot import 'pgq_no_such_module'" in line


def test_work_child_on_an_unmigrated_database_says_to_migrate(empty_dsn: str) -> None:
    line = one_error_line(work_child(child_spec(f"{empty_dsn} password={PASSWORD}")))

    assert "is not in this database: run `pgq migrate`" in line
    assert PASSWORD not in line


def test_the_child_spec_round_trips_through_the_environment(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = WorkerSettings.create(
        dsn, schema=None, queues={"emails": 2}, concurrency=3, poll_seconds=0.5,
        lease_seconds=9.0, poll_only=True, shutdown_grace_seconds=2.0,
        rescue_interval_seconds=None, retention=None, prune_interval_seconds=30.0,
        metrics_port=None, metrics_host="127.0.0.1", name=None, synchronous_commit=False,
    )  # fmt: skip
    spec = ChildSpec(LEDGER_APP, settings.to_json(), "debug", "json")
    environment = spec.environment(dsn)
    monkeypatch.setenv(CHILD_SPEC_ENV_VAR, environment[CHILD_SPEC_ENV_VAR])

    assert ChildSpec.from_environment() == spec
    assert environment["PGQ_DSN"] == dsn, "handlers that read PGQ_DSN find it, as in pgq work"
    restored = WorkerSettings.from_json(ChildSpec.from_environment().settings_json)
    assert (restored.queues, restored.concurrency, restored.lease_seconds) == (
        {"emails": 2}, 3, 9.0,
    )  # fmt: skip


# -- pgq work on a database that is not there -------------------------------------------------


@pytest.mark.parametrize("processes", ["1", "2"])
def test_work_on_a_missing_database_names_it_as_stats_does_without_the_password(
    pg_admin_dsn: str, processes: str
) -> None:
    missing = make_conninfo(pg_admin_dsn, dbname="pgq_no_such_database", password=PASSWORD)
    env = {**NO_PGQ_SETTINGS, "PGQ_DSN": missing}

    work = runner.invoke(app, ["work", LEDGER_APP, "--processes", processes], env=env)
    stats = runner.invoke(app, ["stats"], env=env)

    line = one_error_line(work)
    assert line == one_error_line(stats)
    assert line.startswith(f"error: cannot connect to {describe_dsn(missing)}: "), line
    assert 'database "pgq_no_such_database" does not exist' in line
    assert PASSWORD not in line


# -- a real supervisor ------------------------------------------------------------------------


@pytest.fixture
def supervisors() -> Iterator[list[WorkerProcess]]:
    """Supervisors a test starts; their whole process group is killed at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.kill()
        print(process.log())  # shown by pytest when the test failed


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_children_get_every_option_and_the_dsn_from_the_environment_not_their_command_line(
    dsn: str, tmp_path: Path, supervisors: list[WorkerProcess]
) -> None:
    create_ledger(dsn)
    with psycopg.connect(dsn) as conn:  # commits at exit
        served = pgq.enqueue(conn, "record", queue="only_here").id
        ignored = pgq.enqueue(conn, "record", queue="elsewhere").id
    # The DSN only on the supervisor's command line: not in the environment it inherits.
    env = {k: v for k, v in os.environ.items() if k not in NO_PGQ_SETTINGS}
    argv = [
        sys.executable, "-m", "pgq", "work", LEDGER_APP, "--dsn", dsn, "--processes", "2",
        "--queues", "only_here", "--concurrency", "3", "--lease-seconds", "7",
        "--poll-seconds", "0.2",
    ]  # fmt: skip
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    supervisor = WorkerProcess(popen, log_path, argv)
    supervisors.append(supervisor)

    wait_until(lambda: len(child_pids(supervisor.pid)) == 2, 20, "two children")
    children = child_pids(supervisor.pid)
    for pid in children:
        assert cmdline(pid) == [sys.executable, "-m", "pgq", "work-child"]

    def served_job_done() -> bool:
        done = scalar(dsn, "SELECT count(*) FROM ledger WHERE job_id = %s AND event = 'done'",
                      [served])  # fmt: skip
        return bool(done)

    wait_until(served_job_done, 30, lambda: f"a child ran the job; log:\n{supervisor.log()}")
    pid = scalar(dsn, "SELECT pid FROM ledger WHERE job_id = %s AND event = 'done'", [served])
    assert pid in children
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        statuses: dict[int, str] = dict(
            conn.execute("SELECT id, status::text FROM pgq.jobs").fetchall()
        )
    assert statuses == {served: "succeeded", ignored: "queued"}, "--queues reached the children"
