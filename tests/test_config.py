"""Where pgq finds its database: --dsn, $PGQ_DSN, $DATABASE_URL, in the forms users have.

``DATABASE_URL`` often holds SQLAlchemy's form (``postgresql+asyncpg://``): pgq
drops the driver and translates asyncpg's ``ssl=`` so that libpq can read it.
Anything that is not PostgreSQL is refused with ConfigError, password unprinted.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

import pgq.migrate
from pgq.cli import app
from pgq.config import normalize_dsn, resolve_dsn, worker_conninfo
from pgq.errors import ConfigError

PASSWORD = "s3cr3t-PW"

# (what users have in DATABASE_URL, what libpq must read from it)
ACCEPTED_FORMS: list[tuple[str, dict[str, str]]] = [
    ("postgresql+psycopg://app:pw@db.internal:6432/shop",
     {"user": "app", "password": "pw", "host": "db.internal", "port": "6432", "dbname": "shop"}),
    ("postgresql+psycopg2://app@db.internal/shop?sslmode=verify-full&application_name=web",
     {"user": "app", "host": "db.internal", "dbname": "shop", "sslmode": "verify-full",
      "application_name": "web"}),
    ("postgresql+asyncpg://app:p%40ss@db.internal:5432/shop?ssl=require",
     {"user": "app", "password": "p@ss", "host": "db.internal", "port": "5432", "dbname": "shop",
      "sslmode": "require"}),
    ("postgresql+asyncpg://app@db.internal/shop?ssl=verify-ca&connect_timeout=5",
     {"user": "app", "host": "db.internal", "dbname": "shop", "sslmode": "verify-ca",
      "connect_timeout": "5"}),
    ("postgres://app@[::1]:5433/shop", {"user": "app", "host": "::1", "port": "5433",
                                        "dbname": "shop"}),
    ("postgresql://app@db.internal/shop?ssl=true",
     {"user": "app", "host": "db.internal", "dbname": "shop", "sslmode": "require"}),
    ("PostgreSQL+AsyncPG://app@db.internal/shop", {"user": "app", "host": "db.internal",
                                                   "dbname": "shop"}),
    ("postgresql+psycopg:///shop?host=/var/run/postgresql",
     {"dbname": "shop", "host": "/var/run/postgresql"}),
    ("  postgresql://app@db.internal/shop\n", {"user": "app", "host": "db.internal",
                                               "dbname": "shop"}),
    ("host=db.internal port=6432 dbname=shop user=app",
     {"host": "db.internal", "port": "6432", "dbname": "shop", "user": "app"}),
]  # fmt: skip


def libpq_reads(dsn: str) -> dict[str, Any]:
    return {key: value for key, value in conninfo_to_dict(dsn).items() if value is not None}


@pytest.mark.parametrize(("dsn", "expected"), ACCEPTED_FORMS)
def test_sqlalchemy_and_asyncpg_urls_reach_libpq_with_every_part_kept(
    dsn: str, expected: dict[str, str]
) -> None:
    assert libpq_reads(normalize_dsn(dsn)) == expected


# (a DSN that is not PostgreSQL's, or not a DSN, and what the error must say)
REFUSED_FORMS: list[tuple[str, str]] = [
    (f"mysql://root:{PASSWORD}@db/shop", "has the scheme 'mysql', which is not PostgreSQL"),
    (f"redis://:{PASSWORD}@cache:6379/0", "has the scheme 'redis', which is not PostgreSQL"),
    (f"jdbc:postgresql://db.internal/shop?password={PASSWORD}",
     "has the scheme 'jdbc:postgresql', which is not PostgreSQL"),
    (f"sqlite+pysqlite:///{PASSWORD}.db", "has the scheme 'sqlite+pysqlite'"),
    (PASSWORD, "it is neither a URL (postgresql://user@host:5432/dbname"),
    (f"postgresql+asyncpg://app:{PASSWORD}@db.internal/shop?prepared_statement_cache_size=0",
     'invalid URI query parameter: "prepared_statement_cache_size"'),
    (f"postgresql+asyncpg://app:{PASSWORD}%zz@db.internal/shop", "invalid percent-encoded token"),
    (f"host=db.internal password={PASSWORD} nonsense", 'missing "=" after "nonsense"'),
]  # fmt: skip


@pytest.mark.parametrize(("dsn", "message"), REFUSED_FORMS)
def test_a_dsn_that_is_not_postgresql_is_refused_by_name_without_its_password(
    dsn: str, message: str
) -> None:
    with pytest.raises(ConfigError, match="DSN") as refused:
        normalize_dsn(dsn)

    assert message in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_a_bad_environment_variable_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGQ_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"mysql://root:{PASSWORD}@db.internal/shop")

    with pytest.raises(ConfigError) as refused:
        resolve_dsn()

    assert str(refused.value).startswith("the DSN in DATABASE_URL has the scheme 'mysql'")
    assert PASSWORD not in str(refused.value)


def test_pgq_dsn_wins_over_a_database_url_for_another_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An application on MySQL keeps its DATABASE_URL; pgq's own setting is PGQ_DSN.
    monkeypatch.setenv("PGQ_DSN", "postgresql+psycopg://app@db.internal/jobs")
    monkeypatch.setenv("DATABASE_URL", f"mysql://root:{PASSWORD}@db.internal/shop")

    assert resolve_dsn() == "postgresql://app@db.internal/jobs"
    assert resolve_dsn("postgres://ops@db.internal/jobs") == "postgresql://ops@db.internal/jobs"


def sqlalchemy_url(dsn: str, driver: str, query: str = "") -> str:
    """The test database as a SQLAlchemy URL with a password (the test server trusts)."""
    params = libpq_reads(dsn)
    host = params.get("host", "127.0.0.1")
    where = f"{quote(host, safe='')}:{params.get('port', '5432')}"
    if host.startswith("/"):  # a socket directory: libpq takes it as ?host=
        where, query = "", f"host={quote(host, safe='')}&{query}".rstrip("&")
    user = quote(params.get("user", "postgres"), safe="")
    url = f"postgresql+{driver}://{user}:{PASSWORD}@{where}/{quote(params['dbname'], safe='')}"
    return f"{url}?{query}" if query else url


@pytest.mark.parametrize(("driver", "query"), [("psycopg", ""), ("asyncpg", "ssl=disable")])
def test_pgq_connects_through_a_sqlalchemy_database_url(dsn: str, driver: str, query: str) -> None:
    url = sqlalchemy_url(dsn, driver, query)

    result = CliRunner().invoke(
        app, ["migrate", "--current"], env={"PGQ_DSN": None, "DATABASE_URL": url, "COLUMNS": "200"}
    )

    assert result.exit_code == 0, result.output
    head = pgq.migrate.head_revision()
    assert f"current revision: {head}\nnewest revision: {head} (up to date)" in result.output
    assert f"dbname={libpq_reads(dsn)['dbname']}" in result.output
    assert PASSWORD not in result.output


def test_asyncpg_ssl_setting_reaches_the_server_as_sslmode(dsn: str) -> None:
    # Without the translation libpq refuses ?ssl=disable outright; with it, no TLS is used.
    with psycopg.connect(normalize_dsn(sqlalchemy_url(dsn, "asyncpg", "ssl=disable"))) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()

    assert row == (False,)


def test_a_mysql_database_url_stops_a_command_with_one_clear_line() -> None:
    result = CliRunner().invoke(
        app, ["stats"], env={"PGQ_DSN": None, "DATABASE_URL": f"mysql://root:{PASSWORD}@db/shop"}
    )

    assert result.exit_code == 1
    assert " ".join(result.output.split()).startswith(
        "error: the DSN in DATABASE_URL has the scheme 'mysql', which is not PostgreSQL"
    )
    assert PASSWORD not in result.output


def test_a_worker_built_in_python_takes_a_sqlalchemy_url_too() -> None:
    conninfo = worker_conninfo("postgresql+asyncpg://app:secret@db:5433/shop?ssl=require")

    params = conninfo_to_dict(conninfo)
    assert (params["host"], params["port"], params["dbname"]) == ("db", "5433", "shop")
    assert params["sslmode"] == "require"
