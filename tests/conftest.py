"""Fixtures that give every test a real PostgreSQL database of its own.

The server is, in this order: ``$PGQ_TEST_DSN``; else a local server at
127.0.0.1:5432 (user postgres) if it answers within two seconds; else a
throwaway cluster the suite starts itself (tests/pgcluster.py). With none of
them, the run fails with a message saying what to do: it never skips.

pgq's schema is migrated once per run into a template database, and each test
gets a clone of it (``CREATE DATABASE ... TEMPLATE``, as procrastinate does):
cloning takes milliseconds, where migrating takes most of a second, and no test
can see another's rows. Every database the run creates is dropped at the end.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgq.migrate
from pgcluster import ClusterError, ThrowawayCluster
from pgq.config import describe_dsn, redact
from worker_helpers import WorkerProcesses

TEST_DSN_ENV_VAR = "PGQ_TEST_DSN"
LOCAL_DSN = make_conninfo(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
LOCAL_CONNECT_TIMEOUT_SECONDS = 2

NO_SERVER_HELP = (
    "pgq's tests need a PostgreSQL server (13 or newer) and found none.\n"
    "Do one of these:\n"
    "  * set PGQ_TEST_DSN to a server and role allowed to CREATE DATABASE, e.g.\n"
    "    PGQ_TEST_DSN='host=127.0.0.1 port=5432 user=postgres dbname=postgres';\n"
    "  * start PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres\n"
    "    (Debian/Ubuntu: pg_ctlcluster <version> main start);\n"
    "  * install the PostgreSQL server binaries (initdb, pg_ctl) so that the tests\n"
    "    can start a throwaway cluster of their own."
)


def _connect_error(dsn: str, timeout_seconds: int | None = None) -> str | None:
    """None if ``dsn`` accepts a connection, else why not."""
    params: dict[str, Any] = {}
    if timeout_seconds is not None:
        params["connect_timeout"] = timeout_seconds
    try:
        with psycopg.connect(dsn, autocommit=True, **params) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return redact(str(error).strip(), dsn)
    return None


@dataclass(frozen=True)
class PostgresServer:
    """The server this run uses: its maintenance database's DSN, and where it came from."""

    admin_dsn: str
    origin: str


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server for the whole run (see the module docstring for the order)."""
    explicit = os.environ.get(TEST_DSN_ENV_VAR)
    if explicit:
        error = _connect_error(explicit)
        if error is not None:
            pytest.exit(
                f"{TEST_DSN_ENV_VAR} is set ({describe_dsn(explicit)}) but the server "
                f"refused the connection: {error}\n\n{NO_SERVER_HELP}",
                returncode=1,
            )
        yield PostgresServer(explicit, f"${TEST_DSN_ENV_VAR}")
        return

    local_error = _connect_error(LOCAL_DSN, LOCAL_CONNECT_TIMEOUT_SECONDS)
    if local_error is None:
        yield PostgresServer(LOCAL_DSN, "local server at 127.0.0.1:5432")
        return

    try:
        cluster = ThrowawayCluster()
    except ClusterError as error:
        pytest.exit(
            f"no server at 127.0.0.1:5432 ({local_error}), and no throwaway cluster "
            f"either: {error}\n\n{NO_SERVER_HELP}",
            returncode=1,
        )
    try:
        cluster.start()
    except ClusterError as error:
        cluster.cleanup()
        pytest.exit(
            f"no server at 127.0.0.1:5432 ({local_error}), and the throwaway cluster "
            f"did not start: {error}\n\n{NO_SERVER_HELP}",
            returncode=1,
        )
    try:
        yield PostgresServer(cluster.dsn(), f"throwaway cluster in {cluster.base_dir}")
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server: PostgresServer) -> str:
    """DSN of the server's maintenance database, where test databases are created."""
    return pg_server.admin_dsn


class Databases:
    """Creates and drops this run's databases, all named ``pgq_test_<pid>_<random>_...``."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.prefix = f"pgq_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.template = f"pgq_test_tmpl_{os.getpid()}_{secrets.token_hex(3)}"
        self._numbers = itertools.count(1)
        self._admin = psycopg.connect(admin_dsn, autocommit=True)
        self._created: list[str] = []
        self._to_drop: list[str] = []

    def dsn(self, dbname: str) -> str:
        """``admin_dsn`` pointed at ``dbname`` (works for key=value and URL DSNs)."""
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def create(self, *, template: str = "template0", name: str | None = None) -> str:
        self._drop_pending()
        name = name or f"{self.prefix}_{next(self._numbers)}"
        self._admin.execute(
            # The default strategy (WAL_LOG on 15+) on purpose: FILE_COPY checkpoints
            # the whole server at every clone, several times slower on a busy one.
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        self._created.append(name)
        return name

    def drop_later(self, name: str) -> None:
        """Drop ``name`` before the next database is created, or at the end of the run.

        Not at once: the backends of connections the test just closed take a moment
        to exit, and DROP DATABASE waits for them in steps of 100 ms.
        """
        self._to_drop.append(name)

    def _drop_pending(self) -> None:
        while self._to_drop:
            self.drop(self._to_drop.pop())

    def drop(self, name: str) -> None:
        # FORCE: a test that leaked a connection (or a killed worker's) must not
        # leave its database behind.
        self._admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if name in self._created:
            self._created.remove(name)

    def close(self) -> None:
        try:
            for name in reversed(list(self._created)):
                self.drop(name)
        finally:
            self._admin.close()


@pytest.fixture(scope="session")
def databases(pg_admin_dsn: str) -> Iterator[Databases]:
    """This run's databases, with pgq's template migrated once, dropped at the end."""
    dbs = Databases(pg_admin_dsn)
    try:
        dbs.create(name=dbs.template)
        pgq.migrate.migrate(dbs.dsn(dbs.template))
        yield dbs
    finally:
        dbs.close()


@pytest.fixture
def make_dsn(databases: Databases) -> Iterator[Callable[..., str]]:
    """Make another fresh database: ``make_dsn()`` is migrated, ``make_dsn(migrated=False)`` empty.

    Databases made here are dropped when the test ends.
    """
    made: list[str] = []

    def make(*, migrated: bool = True) -> str:
        name = databases.create(template=databases.template if migrated else "template0")
        made.append(name)
        return databases.dsn(name)

    yield make
    for name in made:
        databases.drop_later(name)


@pytest.fixture
def dsn(make_dsn: Callable[..., str]) -> str:
    """DSN of a fresh database with pgq's schema at head, for this test only."""
    return make_dsn()


@pytest.fixture
def empty_dsn(make_dsn: Callable[..., str]) -> str:
    """DSN of a fresh database with no pgq schema, for this test only."""
    return make_dsn(migrated=False)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection (autocommit off) to this test's migrated database."""
    connection = psycopg.connect(dsn)
    try:
        yield connection
    finally:
        # close(), not the context manager: that would commit what the test left open.
        connection.close()


@pytest.fixture(scope="module")
def module_dsn(databases: Databases) -> Iterator[str]:
    """DSN of a migrated database shared by the tests of one module (see ``rollback_conn``)."""
    name = databases.create(template=databases.template)
    yield databases.dsn(name)
    databases.drop_later(name)


@pytest.fixture(scope="module")
def module_conn(module_dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """One connection to the module's shared database for all its tests, never committed:
    for property tests whose many examples would each pay for a connection otherwise."""
    connection = psycopg.connect(module_dsn)
    try:
        yield connection
    finally:
        connection.close()  # without commit


@pytest.fixture
def rollback_conn(module_dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection to the module's shared migrated database, rolled back after the test.

    For the many small tests that must commit nothing (bad input refused, a query
    that prepares): they skip the cost of a database of their own. A test that
    commits must use ``conn`` instead.
    """
    connection = psycopg.connect(module_dsn)
    try:
        yield connection
    finally:
        connection.close()  # without commit: the test's work is rolled back


@pytest.fixture
def throwaway_cluster() -> Iterator[ThrowawayCluster]:
    """A started PostgreSQL cluster of this test's own, to restart or crash at will."""
    try:
        cluster = ThrowawayCluster()
    except ClusterError as error:
        pytest.fail(f"cannot create a throwaway PostgreSQL cluster: {error}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Starts `pgq work` subprocesses; kills them all at teardown and prints their logs."""
    procs = WorkerProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()
        print(procs.logs())  # shown by pytest when the test failed


# pgq.testing's pytest plugin, dogfooded: its pgq_conn on a database of this run's own
# (the plugin's pgq_dsn reads $PGQ_TEST_DSN as a database; here it names the server).
@pytest.fixture(scope="session")
def pgq_test_schema() -> str:
    return "pgq"


@pytest.fixture(scope="session")
def pgq_dsn(databases: Databases) -> Iterator[str]:
    name = databases.create(template=databases.template)
    yield databases.dsn(name)
    databases.drop_later(name)


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """``serve(dsn, token=None, read_only=False, app=None)``: the base URL of pgq web on a free
    loopback port (uvicorn in a thread), stopped when the test ends."""
    from pgq.web import create_app
    from web_server import Served

    running: list[Served] = []

    def start(dsn: str = "", *, token: str | None = None, read_only: bool = False,
              app: Any = None) -> str:  # fmt: skip
        served = Served(app or create_app(dsn, token=token, read_only=read_only))
        running.append(served)
        return served.url

    yield start
    for served in running:
        served.stop()
