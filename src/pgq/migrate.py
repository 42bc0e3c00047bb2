"""Runs pgq's Alembic revisions and checks the schema revision at startup.

pgq keeps its own revision history: the version table is ``<schema>.alembic_version``,
apart from any ``alembic_version`` the application keeps for itself.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgq.config import resolve_schema
from pgq.errors import SchemaError
from pgq.queries import query

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection as SAConnection

log = logging.getLogger("pgq.migrate")

VERSION_TABLE = "alembic_version"
#: The revisions in migrations/versions, oldest first (a test checks them against
#: Alembic's own walk). Listed here so that a worker checking the schema at start-up
#: does not import Alembic and SQLAlchemy: that took 0.4 s of a 1.3 s start.
REVISIONS: tuple[str, ...] = (
    "0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009",
)  # fmt: skip
#: The oldest revision this pgq runs on. Raise it only when the code needs what a
#: revision adds: 0006's task registry and workers table are read by every enqueue
#: and claim of this pgq, 0007 adds the schedules table that periodic tasks need,
#: 0008 the result column that every success now writes, and 0009 the trace_context
#: column that every enqueue and claim names.
REQUIRED_REVISION = "0009"
MIGRATION_LOCK_POLL_SECONDS = 0.2


def ensure_schema_sql(schema: str) -> str:
    """DDL that creates pgq's schema (as text: Alembic's offline mode prints it)."""
    return (
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
        .format(sql.Identifier(resolve_schema(schema)))
        .as_string(None)
    )


def migrations_dir() -> Path:
    """Where the revisions are: inside the installed package, else the source checkout."""
    packaged = Path(str(resources.files("pgq").joinpath("migrations")))
    if (packaged / "env.py").is_file():
        return packaged
    # An editable install runs from src/: the revisions are the top-level migrations/.
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise SchemaError(f"pgq's migrations are missing (looked in {packaged} and {checkout})")


def alembic_config(schema: str, connection: SAConnection | None = None) -> Config:
    """An Alembic Config built in code: no alembic.ini needed, in a wheel or a checkout."""
    from alembic.config import Config

    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.attributes["pgq_schema"] = resolve_schema(schema)
    if connection is not None:
        config.attributes["connection"] = connection
    # Without alembic.ini there is no logging config; keep Alembic's INFO lines out.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return config


def head_revision() -> str:
    """The newest revision this version of pgq ships."""
    return REVISIONS[-1]


@contextmanager
def _restore_alembic_proxies() -> Iterator[None]:
    """Give back ``alembic.op`` and ``alembic.context`` to an enclosing Alembic run.

    Alembic keeps one module-level ``op``/``context`` per process; running pgq's
    revisions from inside an application's own revision would otherwise leave
    that revision's ``op`` pointing at nothing.
    """
    from alembic import context as alembic_context
    from alembic import op as alembic_op

    saved = [getattr(module, "_proxy", None) for module in (alembic_op, alembic_context)]
    try:
        yield
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


def known_revisions() -> set[str]:
    """Every revision this version of pgq ships."""
    return set(REVISIONS)


def required_revision() -> str:
    """The oldest revision this version of pgq runs on (``check_schema`` accepts it and later)."""
    return REQUIRED_REVISION


def upgrade(connection: SAConnection, *, revision: str = "head", schema: str | None = None) -> None:
    """Apply pgq's revisions on ``connection``, inside its transaction.

    This is how an application that already uses Alembic applies pgq from its own
    revision::

        def upgrade() -> None:
            import pgq.migrate
            pgq.migrate.upgrade(op.get_bind())
    """
    from alembic import command

    config = alembic_config(resolve_schema(schema), connection)
    # Read before Alembic begins its own: a transaction open now is the caller's.
    config.attributes["in_callers_transaction"] = connection.in_transaction()
    with _restore_alembic_proxies():
        command.upgrade(config, revision)


def downgrade(connection: SAConnection, *, revision: str, schema: str | None = None) -> None:
    """Revert pgq's revisions down to ``revision`` (``base`` removes everything)."""
    from alembic import command

    with _restore_alembic_proxies():
        command.downgrade(alembic_config(resolve_schema(schema), connection), revision)


def offline_sql(
    *, revision: str = "head", downgrade_to: str | None = None, schema: str | None = None
) -> str:
    """The upgrade as a SQL script, produced without a database (``pgq migrate --sql``).

    With ``downgrade_to``, the downgrade from this pgq's newest revision to that one
    instead: with no database to ask, the script assumes the schema is at the newest.
    """
    from alembic import command

    config = alembic_config(resolve_schema(schema))
    buffer = io.StringIO()
    config.output_buffer = buffer
    if downgrade_to is None:
        command.upgrade(config, revision, sql=True)
    else:
        # Offline, Alembic needs the range: it cannot read where the schema is.
        command.downgrade(config, f"{head_revision()}:{downgrade_to}", sql=True)
    return buffer.getvalue()


@contextmanager
def _sqlalchemy_connection(dsn: str) -> Iterator[SAConnection]:
    import sqlalchemy

    # creator= hands SQLAlchemy a ready psycopg connection, so libpq DSNs
    # (key=value, ?host=/socket) are never re-parsed as SQLAlchemy URLs.
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=sqlalchemy.NullPool
    )
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def _migration_lock(dsn: str, schema: str, timeout_seconds: float) -> Iterator[None]:
    # Polled, never waited for: a blocking advisory lock inside a transaction can
    # deadlock against DDL that another migrator is running. A failed try ends its
    # transaction at once; the try that wins keeps its transaction open until the
    # release. A pooler in transaction mode (PgBouncer) then keeps this connection
    # on the server session that holds the session-level lock, so the release lands
    # there, and no other client of the pool can take the lock again on that
    # session (tests/test_pgbouncer.py). READ COMMITTED, and the schema name bound
    # client-side: the open transaction must hold no snapshot, which revision 0005's
    # CREATE INDEX CONCURRENTLY waits for. A statement with server-side parameters
    # leaves its portal, and the portal's snapshot, open until the transaction ends.
    # No prepared statements: the polls may each reach another server connection.
    with psycopg.connect(dsn, prepare_threshold=None) as lock_conn:
        lock_conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        deadline = time.monotonic() + timeout_seconds
        params = {"schema_name": schema}
        while True:
            with psycopg.ClientCursor(lock_conn) as cursor:
                row = cursor.execute(query("try_migration_lock", schema), params).fetchone()
            if row and row[0]:
                break
            lock_conn.rollback()
            if time.monotonic() > deadline:
                raise SchemaError(
                    f"another `pgq migrate` held the migration lock for {timeout_seconds:g}s"
                )
            time.sleep(MIGRATION_LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            lock_conn.execute(query("release_migration_lock", schema), params)
            lock_conn.commit()


def migrate(
    dsn: str,
    *,
    revision: str = "head",
    downgrade_to: str | None = None,
    schema: str | None = None,
    lock_timeout_seconds: float = 300.0,
) -> tuple[str | None, str | None]:
    """Upgrade (or downgrade) pgq's schema; safe when several processes run it at once.

    Returns the revision before and after.
    """
    schema = resolve_schema(schema)
    with _migration_lock(dsn, schema, lock_timeout_seconds):
        before = current_revision(dsn, schema=schema)
        with _sqlalchemy_connection(dsn) as connection:
            if downgrade_to is not None:
                downgrade(connection, revision=downgrade_to, schema=schema)
            else:
                upgrade(connection, revision=revision, schema=schema)
            connection.commit()
        return before, current_revision(dsn, schema=schema)


@dataclass(frozen=True, slots=True)
class DowngradePlan:
    """What a downgrade would do, read without changing anything (``plan_downgrade``)."""

    schema: str
    #: The schema's revision now, and after the downgrade (None: no pgq revision at all).
    current: str | None
    target: str | None
    #: The revisions the downgrade reverts, newest first.
    reverted: tuple[str, ...]
    #: When the downgrade drops the jobs table (it reverts 0001): the jobs in it by
    #: status, as counted. Empty otherwise.
    jobs_by_status: dict[str, int]

    @property
    def drops_jobs(self) -> bool:
        return REVISIONS[0] in self.reverted


def plan_downgrade(dsn: str, revision: str, *, schema: str | None = None) -> DowngradePlan:
    """What ``migrate(dsn, downgrade_to=revision)`` would revert, and the jobs it would drop.

    It reads only: the count takes no lock that blocks workers or enqueues. A
    ``pgq migrate --downgrade`` shows it before it asks, and as its dry run::

        plan = plan_downgrade(dsn, "base")
        plan.reverted, plan.jobs_by_status  # ('0005', ..., '0001'), {'queued': 3}
    """
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError

    schema = resolve_schema(schema)
    current = current_revision(dsn, schema=schema)
    if current is None:
        return DowngradePlan(schema, None, None, (), {})
    script = ScriptDirectory.from_config(alembic_config(schema))
    try:
        reverted = tuple(step.revision for step in script.iterate_revisions(current, revision))
    except RevisionError as error:
        raise SchemaError(
            f"cannot downgrade pgq's schema {schema!r} from {current} to {revision!r}: {error}"
        ) from None
    if not reverted:
        return DowngradePlan(schema, current, current, (), {})
    oldest = REVISIONS.index(reverted[-1])
    target = REVISIONS[oldest - 1] if oldest > 0 else None
    jobs: dict[str, int] = {}
    if REVISIONS[0] in reverted:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(query("count_jobs_by_status", schema)).fetchall()
        jobs = {str(status): int(count) for status, count in rows}
    return DowngradePlan(schema, current, target, reverted, jobs)


def current_revision(
    dsn_or_conn: str | psycopg.Connection[Any], *, schema: str | None = None
) -> str | None:
    """The revision applied to the database, or None when pgq was never migrated there."""
    schema = resolve_schema(schema)
    if isinstance(dsn_or_conn, str):
        with psycopg.connect(dsn_or_conn, autocommit=True) as conn:
            return _read_revision(conn, schema)
    return _read_revision(dsn_or_conn, schema)


def _read_revision(conn: psycopg.Connection[Any], schema: str) -> str | None:
    if conn.execute(query("find_schema", schema), {"schema_name": schema}).fetchone() is None:
        return None
    try:
        with conn.transaction():
            row = conn.execute(query("read_schema_revision", schema)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return str(row[0]) if row else None


def check_schema(conn: psycopg.Connection[Any], *, schema: str | None = None) -> None:
    """Raise SchemaError unless the database is at a revision this pgq runs on.

    That is ``required_revision()`` or any later one this pgq ships.
    """
    schema = resolve_schema(schema)
    found = _read_revision(conn, schema)
    if found is None:
        if conn.execute(query("find_schema", schema), {"schema_name": schema}).fetchone():
            # `pgq migrate --downgrade base` drops pgq's tables but keeps the schema.
            raise SchemaError(
                f"pgq's schema {schema!r} has no revision applied (downgraded to base?): "
                "run `pgq migrate`"
            )
        raise SchemaError(
            f"pgq's schema {schema!r} is not in this database: run `pgq migrate` first"
        )
    if found not in known_revisions():
        raise SchemaError(
            f"pgq's schema {schema!r} is at revision {found}, newer than this pgq knows "
            f"(its newest is {head_revision()}): upgrade pgq, or run the pgq that migrated it"
        )
    if REVISIONS.index(found) < REVISIONS.index(REQUIRED_REVISION):
        raise SchemaError(
            f"pgq's schema {schema!r} is at revision {found}, this pgq needs "
            f"{REQUIRED_REVISION} or later: run `pgq migrate`"
        )


def load_revision(filename: str) -> ModuleType:
    """Another revision's module (by file name), for a downgrade that puts back what it made."""
    path = migrations_dir() / "versions" / filename
    spec = importlib.util.spec_from_file_location(f"pgq_revision_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SchemaError(f"pgq's migrations are incomplete: {path} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def revision_schema() -> str:
    """The schema an Alembic revision is applied to (called from migrations/versions)."""
    return str(_revision_config().attributes["pgq_schema"])


def in_callers_transaction() -> bool:
    """Does this revision run inside a transaction pgq must not commit (called from
    migrations/versions)?

    True when an application's own revision calls ``upgrade(op.get_bind())``: its
    changes must roll back with the application's, so a revision cannot step outside
    the transaction, to build an index CONCURRENTLY for one.
    """
    return bool(_revision_config().attributes.get("in_callers_transaction", False))


def _revision_config() -> Config:
    from alembic import op

    config = op.get_context().config
    assert config is not None, "pgq revisions run through pgq.migrate's Config"
    return config
