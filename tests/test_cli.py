"""What the `pgq` command shows a newcomer, whatever the command: its version, help that
reads like a common CLI's at 80 columns, counts in the singular and plural, one line per
job in `pgq jobs`, and an APP that does not load explained by what went wrong.

The commands' own behaviour is in test_cli_admin.py and test_cli_work.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest
from typer.main import get_group
from typer.testing import CliRunner, Result

from pgq.cli import app
from pgq.logs import plural
from seeding import seed_job
from worker_helpers import REPO_ROOT, WorkerProcesses, wait_until

NO_PGQ_SETTINGS: dict[str, str | None] = {"PGQ_DSN": None, "DATABASE_URL": None, "PGQ_SCHEMA": None}
UNREACHABLE_DSN = "postgresql://pgq@127.0.0.1:1/none"  # never reached: the APP fails first
COMMANDS = sorted(name for name, command in get_group(app).commands.items() if not command.hidden)

runner = CliRunner()


def pgq_cli(*args: str, columns: int = 80) -> Result:
    """``pgq ARGS`` in-process, in a terminal ``columns`` wide, with no pgq settings."""
    return runner.invoke(app, list(args), env={**NO_PGQ_SETTINGS, "COLUMNS": str(columns)})


def run_pgq(*args: str, columns: int) -> subprocess.CompletedProcess[str]:
    """``python -m pgq ARGS`` as a subprocess, in a terminal ``columns`` wide."""
    env = {k: v for k, v in os.environ.items() if k not in NO_PGQ_SETTINGS}
    env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "pgq", *args],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False,
    )  # fmt: skip


def error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    (line,) = result.stderr.splitlines()
    return line


# -- pgq --version ---------------------------------------------------------------------------


def test_version_prints_the_version_that_pyproject_declares() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

    result = pgq_cli("--version")

    assert result.exit_code == 0
    assert result.stdout == f"pgq {declared}\n"


# -- --help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [(), *((name,) for name in COMMANDS)], ids=" ".join)
def test_help_fits_80_columns_and_names_values_not_python_types(command: tuple[str, ...]) -> None:
    result = pgq_cli(*command, "--help")

    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not re.search(r"<(bool|str|int|float|list)", text), text
    assert "{" not in text.splitlines()[0], "a required argument reads ID, not {ID}"
    assert max(map(len, text.splitlines())) <= 80, text
    assert re.search(r"^  --help +Show this message and exit\.$", text, re.MULTILINE), text


def test_options_name_their_value_and_flags_take_none() -> None:
    work = pgq_cli("work", "--help").stdout
    jobs = pgq_cli("jobs", "--help").stdout

    for option in ("--dsn DSN", "--schema SCHEMA", "-q, --queues QUEUE[=N]", "-c, --concurrency N",
                   "--lease-seconds SECONDS", "--keep-dead AGE", "--log-level LEVEL"):  # fmt: skip
        assert f"  {option}  " in work, option
    assert re.search(r"^  --poll-only +No LISTEN", work, re.MULTILINE), work
    assert re.search(r"^  --since TIME +Created since", jobs, re.MULTILINE), jobs
    assert re.search(r"^  --json +Print JSON", jobs, re.MULTILINE), jobs


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("requeue", "pgq requeue [OPTIONS] [ID]..."),
        ("cancel", "pgq cancel [OPTIONS] ID..."),
        ("job", "pgq job [OPTIONS] ID"),
        ("work", "pgq work [OPTIONS] APP"),
        ("stats", "pgq stats [OPTIONS]"),
    ],
)
def test_usage_lines_read_as_in_other_clis(command: str, usage: str) -> None:
    assert pgq_cli(command, "--help").stdout.splitlines()[0] == f"Usage: {usage}"


def test_the_top_level_help_lists_every_command_on_one_line_each() -> None:
    text = pgq_cli("--help").stdout

    listed = text.split("Commands:\n")[1].splitlines()
    assert sorted(line.split()[0] for line in listed) == COMMANDS
    assert not [line for line in listed if line.endswith("...")], "a summary was cut short"
    assert "  --version  Print pgq's version and exit." in text


@pytest.mark.parametrize("command", ["job", "cancel", "requeue"])
def test_a_job_id_is_described_as_one_and_still_checked(command: str) -> None:
    help_text = pgq_cli(command, "--help").stdout
    refused = pgq_cli(command, "0")

    assert "job id" in help_text.lower()
    assert "9223372036854775807" not in help_text
    assert refused.exit_code == 2
    assert "Invalid value for 'ID': Input should be greater than or equal to 1" in refused.output


# -- counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "said"),
    [(0, "0 dead jobs"), (1, "1 dead job"), (2, "2 dead jobs"), (-1, "-1 dead jobs")],
)
def test_a_count_of_one_is_singular(count: int, said: str) -> None:
    assert plural(count, "dead job") == said


def test_a_noun_whose_plural_is_not_an_s_gives_its_own() -> None:
    assert plural(1, "worker process", "worker processes") == "1 worker process"
    assert plural(3, "worker process", "worker processes") == "3 worker processes"


# -- pgq jobs at 80 columns ------------------------------------------------------------------


def test_jobs_prints_one_line_per_job_at_80_columns_and_job_prints_the_whole_error(
    dsn: str,
) -> None:
    error = "Traceback (most recent call last):\n" + "  ValueError: the card was declined " * 12
    with psycopg.connect(dsn, autocommit=True) as db:
        dead = seed_job(db, "dead", task="charge_card", queue="payments", last_error=error)
        queued = seed_job(db, task="send_email", queue="emails")

    listed = run_pgq("jobs", "--dsn", dsn, columns=80)
    shown = run_pgq("job", str(dead), "--dsn", dsn, columns=80)

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(map(len, lines)) <= 80, listed.stdout
    (dead_row,) = [line for line in lines if line.startswith(f"│ {dead} ")]
    (queued_row,) = [line for line in lines if line.startswith(f"│ {queued} ")]
    assert "payments" in dead_row and "charge_card" in dead_row and "dead" in dead_row
    assert dead_row.rstrip(" │").endswith("…"), dead_row
    assert "│ Traceback (mos" in dead_row, "the error's first words, on the job's one line"
    assert "send_email" in queued_row
    assert shown.returncode == 0, shown.stderr
    assert " ".join(error.split()) in " ".join(re.sub("[│─┃━]", " ", shown.stdout).split())


# -- pgq work: the APP and its queues --------------------------------------------------------


def test_an_app_attribute_that_does_not_exist_is_named_with_the_apps_there_are() -> None:
    line = error_line(pgq_cli("work", "tests.apps.metrics_app:ap", "--dsn", UNREACHABLE_DSN))

    assert line == (
        "error: module 'tests.apps.metrics_app' has no attribute 'ap'; "
        "try 'tests.apps.metrics_app:app'"
    )


def test_a_module_with_no_app_says_so() -> None:
    line = error_line(pgq_cli("work", "tests.seeding:app", "--dsn", UNREACHABLE_DSN))

    assert line.endswith("has no attribute 'app'; module 'tests.seeding' has no pgq.App at all")


def test_a_module_that_does_not_exist_is_named_with_where_pgq_looked() -> None:
    line = error_line(pgq_cli("work", "myproject.tasks:app", "--dsn", UNREACHABLE_DSN))

    assert line == (
        "error: cannot import 'myproject.tasks' for APP 'myproject.tasks:app': no module named "
        f"'myproject' in {Path.cwd()} or the installed packages"
    )


def test_an_app_whose_own_import_is_missing_names_that_dependency_not_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shop_tasks.py").write_text("import pgq\nimport stripe_sdk_not_installed\n")
    monkeypatch.syspath_prepend(tmp_path)  # as `pgq work` run from the project's directory
    monkeypatch.chdir(tmp_path)

    line = error_line(pgq_cli("work", "shop_tasks:app", "--dsn", UNREACHABLE_DSN))

    assert line == (
        "error: cannot import 'shop_tasks' for APP 'shop_tasks:app': it imports "
        "'stripe_sdk_not_installed', which is not installed here"
    )


def test_the_start_up_log_line_shows_each_queues_cap(dsn: str, workers: WorkerProcesses) -> None:
    worker = workers.start(dsn, "--queues", "emails=5,default", app="tests.apps.metrics_app:app")

    wait_until(lambda: " started: " in worker.log(), 30, worker.log)
    worker.signal(signal.SIGTERM)

    assert worker.wait(30) == 0, worker.log()
    (started,) = [line for line in worker.log().splitlines() if " started: " in line]
    assert ", queues emails=5, default, concurrency 10, " in started, started
