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
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.main import get_group
from typer.testing import CliRunner, Result

import pgq
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


def run_pgq(*args: str, columns: int | None) -> subprocess.CompletedProcess[str]:
    """``python -m pgq ARGS`` as a subprocess, stdout a pipe, and $COLUMNS ``columns``.

    ``columns=None``: no $COLUMNS, as in CI or a cron job's log.
    """
    env = {k: v for k, v in os.environ.items() if k not in (*NO_PGQ_SETTINGS, "COLUMNS")}
    if columns is not None:
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


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_version_that_pyproject_declares(flag: str) -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

    result = pgq_cli(flag)

    assert result.exit_code == 0
    assert result.stdout == f"pgq {declared}\n"
    assert pgq.__version__ == declared


def test_without_installed_metadata_pgq_imports_and_its_version_is_unknown() -> None:
    # As from a source tree on sys.path that was never pip-installed: no dist-info.
    script = (
        "import importlib.metadata as m, sys\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import pgq\n"
        "print(pgq.__version__)\n"
        "sys.argv = ['pgq', '-V']\n"
        "from pgq.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=60, check=False,
    )  # fmt: skip

    assert (result.returncode, result.stdout, result.stderr) == (0, "unknown\npgq unknown\n", "")


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
    assert "  -V, --version  Print pgq's version and exit." in text


@pytest.mark.parametrize("command", ["job", "cancel", "requeue"])
@pytest.mark.parametrize("typed", ["abc", "0", "1.5", "1_000", "\u0663"])  # \u0663: Arabic 3
def test_a_job_id_is_described_as_one_and_a_bad_one_is_named(command: str, typed: str) -> None:
    help_text = pgq_cli(command, "--help").stdout
    refused = pgq_cli(command, typed)

    assert "job id" in help_text.lower()
    assert "9223372036854775807" not in help_text
    assert refused.exit_code == 2
    said = f"Error: Invalid value for 'ID': {typed!r} is not a job id (a whole number from 1)\n"
    assert said in refused.output


def test_a_bad_id_among_good_ones_is_named() -> None:
    refused = pgq_cli("cancel", "12", "x7", "13")

    assert refused.exit_code == 2
    assert "'x7' is not a job id (a whole number from 1)" in refused.output


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


def test_piped_with_no_columns_set_jobs_cuts_no_cell_and_prune_no_sentence(dsn: str) -> None:
    error = "ConnectionError: the SMTP relay at mail.internal:587 closed the connection early"
    with psycopg.connect(dsn, autocommit=True) as db:
        dead = seed_job(db, "dead", task="send_confirmation_email", queue="transactional",
                        last_error=error, finished_ago=3 * 86400)  # fmt: skip
        seed_job(db, "succeeded", finished_ago=3 * 86400)

    listed = run_pgq("jobs", "--dsn", dsn, columns=None)
    pruned = run_pgq("prune", "--older-than", "1d", "--status", "dead", "--status", "succeeded",
                     "--dry-run", "--dsn", dsn, columns=None)  # fmt: skip

    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(f"│ {dead} ")]
    assert "│ send_confirmation_email │" in row and f"│ {error} │" in row, row
    assert pruned.returncode == 0, pruned.stderr
    (line,) = pruned.stdout.splitlines()
    assert line.startswith("dry run: would delete 1 dead job and 1 succeeded job finished before ")
    assert line.endswith(" (older than 1d); nothing deleted"), line


def test_jobs_with_no_match_says_so_naming_the_filters(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        seed_job(db, task="send_email", queue="emails")

    none_dead = pgq_cli("jobs", "--status", "dead", "--queue", "emails", "--dsn", dsn)
    none_at_all = pgq_cli("jobs", "--task", "nope", "--since", "1h", "--dsn", dsn)

    assert none_dead.exit_code == 0
    assert none_dead.stdout == "no jobs match --status dead --queue emails\n"
    assert none_at_all.stdout == "no jobs match --task nope --since 1h\n"


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


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory holding myproject/tasks.py, where `pgq work` is run.

    What it imported is forgotten afterwards: another test's `myproject` is not this one.
    """
    (tmp_path / "myproject").mkdir()
    (tmp_path / "myproject" / "__init__.py").write_text("")
    (tmp_path / "myproject" / "tasks.py").write_text(
        "import pgq\napp = pgq.App()\n\n@app.task\ndef send_email() -> None: ...\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(tmp_path)
    yield tmp_path
    for name in [name for name in sys.modules if name.partition(".")[0] == "myproject"]:
        del sys.modules[name]


@pytest.mark.parametrize(
    "typed",
    ["myproject/tasks.py:app", "./myproject/tasks.py:app", "myproject/tasks:app",
     "myproject.tasks.py:app", "{project}/myproject/tasks.py:app"],
)  # fmt: skip
def test_an_app_given_as_a_file_path_is_shown_as_the_dotted_module_path(
    project: Path, typed: str
) -> None:
    spec = typed.format(project=project)

    line = error_line(pgq_cli("work", spec, "--dsn", UNREACHABLE_DSN))

    assert line == (
        f"error: APP {spec!r} names a file: use a dotted module path, as in 'myproject.tasks:app'"
    )


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("myproject.task:app", "myproject.tasks:app"), ("myprojetc.tasks:app", "myproject.tasks:app")],
)
def test_a_module_name_with_a_typo_suggests_the_module_that_exists(
    project: Path, typed: str, meant: str
) -> None:
    line = error_line(pgq_cli("work", typed, "--dsn", UNREACHABLE_DSN))

    assert line.endswith(f" or the installed packages; did you mean {meant!r}?"), line


def test_a_missing_module_with_no_near_name_gets_no_suggestion(project: Path) -> None:
    line = error_line(pgq_cli("work", "myproject.billing:app", "--dsn", UNREACHABLE_DSN))

    assert line.endswith(f"named 'myproject.billing' in {project} or the installed packages")


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


def test_a_served_queue_that_no_task_declares_is_warned_about_at_start_up(
    dsn: str, workers: WorkerProcesses
) -> None:
    # metrics_app's tasks all use the queue 'default'; 'emials' is a typo of no one's.
    worker = workers.start(dsn, "--queues", "emials,default", app="tests.apps.metrics_app:app")

    wait_until(lambda: " started: " in worker.log(), 30, worker.log)
    worker.signal(signal.SIGTERM)

    assert worker.wait(30) == 0, worker.log()
    warnings = [line for line in worker.log().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, worker.log()
    assert warnings[0].endswith(
        "queue 'emials' is no task's queue in this app (tasks use: default); jobs reach it "
        "only when enqueued with queue='emials'"
    ), warnings
