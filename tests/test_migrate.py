"""`pgq migrate` as an operator runs it: the real console script, on real databases."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.errors
import pytest
import sqlalchemy
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

import pgq.migrate
from pgcluster import free_port
from pgq.cli import app as cli_app
from pgq.queries import query
from pgq.roles import grant_roles, role_names, roles_sql
from seeding import Conn, seed_job
from terminal import run_pgq_on_a_terminal

HEAD = pgq.migrate.head_revision()


def pgq_env() -> dict[str, str]:
    """The environment with no pgq settings, so only the command line says where to go."""
    env = dict(os.environ)
    for name in ("PGQ_DSN", "DATABASE_URL", "PGQ_SCHEMA"):
        env.pop(name, None)
    return env


def run_pgq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m pgq ARGS`` as a script runs it: stdin is no terminal, so pgq cannot ask."""
    return subprocess.run(
        [sys.executable, "-m", "pgq", *args], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env=pgq_env(), timeout=timeout, check=False,
    )  # fmt: skip


def output(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr as one line: rich wraps long lines at the terminal width."""
    return " ".join((result.stdout + result.stderr).split())


def migrate_ok(dsn: str, *extra: str) -> str:
    result = run_pgq("migrate", "--dsn", dsn, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return output(result)


def relation_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def schema_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [name]
        ).fetchone()
    return bool(row and row[0])


def index_is_valid(dsn: str, name: str) -> bool:
    """Does the index exist, built to the end (a cancelled CONCURRENTLY build leaves it invalid)?"""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
        ).fetchone()
    return bool(row and row[0])


def schema_dump(dsn: str, schema: str = "pgq") -> str:
    """pg_dump of one schema's DDL, without the lines that name the database or vary by run."""
    result = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "-n", schema, "-d", dsn],
        capture_output=True, text=True, env=pgq_env(), timeout=60, check=True,
    )  # fmt: skip
    kept = [
        line
        for line in result.stdout.splitlines()
        if line.strip()
        and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config"))
        and not line.startswith(("\\restrict", "\\unrestrict"))  # pg_dump >= 15.14: random keys
    ]
    return "\n".join(kept)


# --- upgrade ------------------------------------------------------------------------------


def test_the_revision_list_pgq_checks_at_start_up_matches_the_migrations_it_ships() -> None:
    # Workers read pgq.migrate.REVISIONS instead of importing Alembic: a revision
    # added to migrations/versions but not there would make them refuse its schema.
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(pgq.migrate.alembic_config("pgq"))
    oldest_first = [revision.revision for revision in script.walk_revisions()][::-1]
    assert list(pgq.migrate.REVISIONS) == oldest_first


def test_starting_a_worker_does_not_import_alembic() -> None:
    # The schema check at start-up reads REVISIONS; Alembic and SQLAlchemy cost 0.4 s.
    probe = (
        "import sys, pgq.worker, pgq.migrate, pgq.cli;"
        "pgq.migrate.head_revision(); pgq.migrate.known_revisions();"
        "print(sorted(m for m in ('alembic', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_migrate_brings_an_empty_database_to_head(empty_dsn: str) -> None:
    text = migrate_ok(empty_dsn)

    assert f"none -> {HEAD}" in text
    assert pgq.migrate.current_revision(empty_dsn) == HEAD
    assert relation_exists(empty_dsn, "pgq.jobs")


def test_migrate_twice_is_a_no_op_that_says_so(empty_dsn: str) -> None:
    migrate_ok(empty_dsn)
    before = schema_dump(empty_dsn)

    text = migrate_ok(empty_dsn)

    assert f"already at revision {HEAD}" in text
    assert schema_dump(empty_dsn) == before


def test_three_concurrent_migrations_all_succeed_and_one_does_the_work(empty_dsn: str) -> None:
    command = [sys.executable, "-m", "pgq", "migrate", "--dsn", empty_dsn]
    processes = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pgq_env()
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    texts = [" ".join((out + err).split()) for out, err in outputs]
    assert sum(f"none -> {HEAD}" in text for text in texts) == 1, texts
    assert sum("already at revision" in text for text in texts) == 2, texts
    assert pgq.migrate.current_revision(empty_dsn) == HEAD


def test_migrate_accepts_a_url_dsn(empty_dsn: str) -> None:
    params = {key: str(value) for key, value in conninfo_to_dict(empty_dsn).items() if value}
    user = quote(params.pop("user", "postgres"), safe="")
    if "password" in params:
        user += ":" + quote(params.pop("password"), safe="")
    host = quote(params.pop("host", "127.0.0.1"), safe="")  # a socket dir is %-encoded
    port, dbname = params.pop("port", "5432"), quote(params.pop("dbname"), safe="")
    url = f"postgresql://{user}@{host}:{port}/{dbname}"

    migrate_ok(url)

    assert pgq.migrate.current_revision(empty_dsn) == HEAD


def test_migrate_reads_the_dsn_from_pgq_dsn(empty_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgq", "migrate"],
        capture_output=True, text=True, env={**pgq_env(), "PGQ_DSN": empty_dsn},
        timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, output(result)
    assert pgq.migrate.current_revision(empty_dsn) == HEAD


def test_migrate_without_any_dsn_says_how_to_give_one() -> None:
    result = run_pgq("migrate")

    assert result.returncode != 0
    assert "PGQ_DSN" in output(result)
    assert "Traceback" not in result.stderr


# --- offline SQL --------------------------------------------------------------------------


def test_migrate_sql_needs_no_database_and_builds_the_same_schema(
    make_dsn: Callable[..., str],
) -> None:
    offline_db, online_db = make_dsn(migrated=False), make_dsn(migrated=False)

    script = run_pgq("migrate", "--sql")
    assert script.returncode == 0, output(script)
    assert "CREATE TABLE pgq.jobs" in script.stdout
    applied = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-d", offline_db],
        input=script.stdout, capture_output=True, text=True,
        env=pgq_env(), timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    migrate_ok(online_db)

    assert schema_dump(offline_db) == schema_dump(online_db)
    assert pgq.migrate.current_revision(offline_db) == HEAD


def test_migrate_sql_with_a_schema_targets_that_schema() -> None:
    result = run_pgq("migrate", "--sql", "--schema", "jobs_sql")

    assert result.returncode == 0, output(result)
    assert 'CREATE SCHEMA IF NOT EXISTS "jobs_sql"' in result.stdout
    assert "CREATE TABLE jobs_sql.jobs" in result.stdout
    assert "pgq." not in result.stdout.replace("pgq.migrate", "")


# --- downgrade ----------------------------------------------------------------------------


def test_migrations_go_up_down_and_up_again(empty_dsn: str) -> None:
    migrate_ok(empty_dsn)
    at_head = schema_dump(empty_dsn)

    text = migrate_ok(empty_dsn, "--downgrade", "base", "--yes")

    assert f"{HEAD} -> none" in text
    assert not relation_exists(empty_dsn, "pgq.jobs")
    with psycopg.connect(empty_dsn) as conn:
        leftovers = conn.execute(
            "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'pgq' AND typname = 'job_status'"
            " UNION ALL SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'pgq' AND proname = 'enqueue'"
        ).fetchall()
    assert leftovers == []
    assert pgq.migrate.current_revision(empty_dsn) is None

    migrate_ok(empty_dsn)

    assert pgq.migrate.current_revision(empty_dsn) == HEAD
    assert schema_dump(empty_dsn) == at_head


# --- --current ----------------------------------------------------------------------------


def test_migrate_current_shows_the_revision_and_changes_nothing(
    make_dsn: Callable[..., str],
) -> None:
    migrated, empty = make_dsn(), make_dsn(migrated=False)

    text = migrate_ok(migrated, "--current")
    assert f"current revision: {HEAD}" in text
    assert "up to date" in text

    text = migrate_ok(empty, "--current")
    assert "current revision: none" in text
    assert "needs `pgq migrate`" in text
    assert not schema_exists(empty, "pgq")


# --- schema ---------------------------------------------------------------------------------


def test_migrate_into_a_custom_schema_keeps_the_version_table_there(empty_dsn: str) -> None:
    migrate_ok(empty_dsn, "--schema", "custom_name")

    assert relation_exists(empty_dsn, "custom_name.jobs")
    assert relation_exists(empty_dsn, "custom_name.alembic_version")
    assert not relation_exists(empty_dsn, "public.alembic_version")
    assert not schema_exists(empty_dsn, "pgq")
    assert pgq.migrate.current_revision(empty_dsn, schema="custom_name") == HEAD
    assert pgq.migrate.current_revision(empty_dsn) is None  # the default schema's
    assert f"current revision: {HEAD}" in migrate_ok(
        empty_dsn, "--current", "--schema", "custom_name"
    )


def test_jobs_can_be_enqueued_into_a_custom_schema(empty_dsn: str) -> None:
    migrate_ok(empty_dsn, "--schema", "custom_name")

    with psycopg.connect(empty_dsn) as conn:
        result = pgq.enqueue(conn, "send_email", {"to": "x"}, schema="custom_name")
        ids = pgq.enqueue_many(conn, [pgq.JobSpec("a")], schema="custom_name")
        rows = conn.execute("SELECT id FROM custom_name.jobs ORDER BY id").fetchall()

    assert [row[0] for row in rows] == [result.id, *ids]


def test_migrate_refuses_a_bad_schema_name_with_a_clear_error(empty_dsn: str) -> None:
    result = run_pgq("migrate", "--dsn", empty_dsn, "--schema", "bad-name; drop")

    assert result.returncode != 0
    text = output(result)
    assert "invalid schema name" in text
    assert "Traceback" not in result.stderr
    with psycopg.connect(empty_dsn) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('public', 'information_schema')"
        ).fetchall()
    assert schemas == []


@pytest.mark.parametrize("name", ["pgq\n", "Upper", "1st", "a" * 41, 'x"; DROP SCHEMA public; --'])
def test_migrate_refuses_schema_names_that_are_not_plain_identifiers(
    empty_dsn: str, name: str
) -> None:
    with pytest.raises(pgq.ConfigError, match="invalid schema name"):
        pgq.migrate.migrate(empty_dsn, schema=name)


# --- connection failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "command"),
    [("key_value", ["migrate"]), ("url", ["migrate"]), ("key_value", ["migrate", "--current"])],
)
def test_unreachable_server_fails_clearly_without_printing_the_password(
    form: str, command: list[str]
) -> None:
    port = free_port()  # nothing listens there
    if form == "url":
        dsn = f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres?connect_timeout=2"
    else:
        dsn = make_conninfo(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres",
            connect_timeout=2, password="hunter2",
        )  # fmt: skip

    result = run_pgq(*command, "--dsn", dsn)

    assert result.returncode != 0
    text = output(result)
    assert "cannot connect" in text, text
    assert str(port) in text
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_an_error_from_the_server_is_named_as_one_not_blamed_on_the_dsn(
    dsn: str, pg_admin_dsn: str
) -> None:
    """A login that may not read pgq's schema gets the server's error, not "invalid DSN"."""
    role, password = f"pgq_test_outsider_{secrets.token_hex(4)}", secrets.token_hex(8)
    create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(create.format(sql.Identifier(role), sql.Literal(password)))
    try:
        result = run_pgq("migrate", "--dsn", make_conninfo(dsn, user=role, password=password))
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert result.returncode == 1
    text = output(result)
    assert "error: cannot migrate: permission denied for schema pgq" in text, text
    assert "invalid DSN" not in text
    assert "Traceback" not in result.stderr


# --- living beside the application's own Alembic ------------------------------------------


def test_migrate_leaves_the_apps_own_alembic_version_untouched(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        conn.execute(
            "CREATE TABLE public.alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)"
        )
        conn.execute("INSERT INTO public.alembic_version VALUES ('app_rev_42')")

    def app_revisions() -> list[tuple[str, ...]]:
        with psycopg.connect(empty_dsn) as conn:
            return conn.execute("SELECT version_num FROM public.alembic_version").fetchall()

    migrate_ok(empty_dsn)
    assert app_revisions() == [("app_rev_42",)]
    assert pgq.migrate.current_revision(empty_dsn) == HEAD

    migrate_ok(empty_dsn, "--downgrade", "base", "-y")
    assert app_revisions() == [("app_rev_42",)]


def _engine(dsn: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=sqlalchemy.NullPool
    )


def test_upgrade_runs_inside_the_apps_own_sqlalchemy_transaction(empty_dsn: str) -> None:
    engine = _engine(empty_dsn)
    try:
        with engine.connect() as connection:
            with connection.begin():
                connection.execute(sqlalchemy.text("CREATE TABLE public.orders (id int)"))
                pgq.migrate.upgrade(connection)
                connection.execute(sqlalchemy.text("INSERT INTO public.orders VALUES (1)"))
    finally:
        engine.dispose()

    assert pgq.migrate.current_revision(empty_dsn) == HEAD
    assert relation_exists(empty_dsn, "public.orders")
    # Built inside the app's transaction (no CONCURRENTLY there), and valid.
    assert index_is_valid(empty_dsn, "pgq.jobs_dead_idx")
    with psycopg.connect(empty_dsn) as conn:
        assert pgq.enqueue(conn, "after_upgrade").created


def test_upgrade_is_undone_when_the_apps_transaction_rolls_back(empty_dsn: str) -> None:
    engine = _engine(empty_dsn)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(sqlalchemy.text("CREATE TABLE public.orders (id int)"))
            pgq.migrate.upgrade(connection)
            transaction.rollback()
    finally:
        engine.dispose()

    assert not relation_exists(empty_dsn, "public.orders")
    assert not relation_exists(empty_dsn, "pgq.jobs")
    assert pgq.migrate.current_revision(empty_dsn) is None


def test_python_migrate_reports_revisions_before_and_after(empty_dsn: str) -> None:
    assert pgq.migrate.migrate(empty_dsn) == (None, HEAD)
    assert pgq.migrate.migrate(empty_dsn) == (HEAD, HEAD)
    assert pgq.migrate.migrate(empty_dsn, downgrade_to="base") == (HEAD, None)


def test_check_schema_names_the_fix_when_pgq_was_never_migrated(empty_dsn: str) -> None:
    # Autocommit: an open transaction would hold up revision 0005's concurrent index build.
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(pgq.SchemaError, match="pgq migrate"):
            pgq.migrate.check_schema(conn)
        pgq.migrate.migrate(empty_dsn)
        pgq.migrate.check_schema(conn)


def test_after_a_downgrade_to_base_stats_and_work_say_no_revision_is_applied(
    empty_dsn: str,
) -> None:
    migrate_ok(empty_dsn)
    migrate_ok(empty_dsn, "--downgrade", "base", "--yes")
    assert schema_exists(empty_dsn, "pgq")  # the schema stays; its tables are gone

    stats = run_pgq("stats", "--dsn", empty_dsn)
    work = run_pgq("work", "tests.apps.metrics_app:app", "--dsn", empty_dsn)

    for result in (stats, work):
        assert result.returncode == 1, output(result)
        assert output(result) == (
            "error: pgq's schema 'pgq' has no revision applied (downgraded to base?): "
            "run `pgq migrate`"
        )


def test_a_database_without_pgqs_schema_is_told_apart_from_one_at_base(
    empty_dsn: str,
) -> None:
    result = run_pgq("stats", "--dsn", empty_dsn)

    assert output(result) == (
        "error: pgq's schema 'pgq' is not in this database: run `pgq migrate` first"
    )


# --- revision 0003: one run_at rule, one dead-job filter ------------------------------------

NEW_IN_0003 = ("resolve_run_at", "dead_job_matches", "requeueable_dead_job_ids")
NEW_IN_0004 = ("run_at_in_range",)


def functions(dsn: str, schema: str = "pgq") -> dict[str, str]:
    """Every function in ``schema``: its name and full definition."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            [schema],
        ).fetchall()
    return {str(name): str(definition) for name, definition in rows}


# The columns of revision 0001's pgq.jobs: later revisions add columns, never change these.
ALL_JOBS_OF_0001 = """
SELECT id, queue, task, args, status, priority, attempts, max_attempts, run_at, locked_until,
       locked_by, lease_token, last_error, errors, dedupe_key, created_at, started_at, finished_at
FROM pgq.jobs
ORDER BY id
"""


def all_jobs(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        # The columns revision 0002 knows: later revisions may add some.
        return conn.execute(
            "SELECT id, queue, task, args, status, priority, attempts, max_attempts, run_at,"
            " locked_until, locked_by, lease_token, last_error, errors, dedupe_key, created_at,"
            " started_at, finished_at FROM pgq.jobs ORDER BY id"
        ).fetchall()


def seed_0002_jobs(dsn: str) -> dict[str, int]:
    """A queued job, a scheduled one and two dead ones, written as revision 0002 knows them."""
    with psycopg.connect(dsn) as conn:  # commits at exit
        return {
            "queued": seed_job(conn, task="send_email", args={"to": "a@b.c"}),
            "scheduled": seed_job(conn, task="report", due_in=3600, dedupe_key="report-1"),
            "dead_charge": seed_job(conn, "dead", task="charge", last_error="TimeoutError: x"),
            "dead_email": seed_job(conn, "dead", task="email", finished_ago=7200),
        }


def test_upgrade_from_0002_keeps_every_job_and_adds_the_shared_functions(
    empty_dsn: str,
) -> None:
    pgq.migrate.migrate(empty_dsn, revision="0002")
    assert not set(NEW_IN_0003) & set(functions(empty_dsn))
    ids = seed_0002_jobs(empty_dsn)
    before = all_jobs(empty_dsn)

    text = migrate_ok(empty_dsn)

    assert f"0002 -> {HEAD}" in text
    assert all_jobs(empty_dsn) == before
    assert set(NEW_IN_0003) <= set(functions(empty_dsn))
    with psycopg.connect(empty_dsn) as conn:
        dry_run = {row[0] for row in conn.execute("SELECT * FROM pgq.requeueable_dead_job_ids()")}
        requeued = {
            row[0] for row in conn.execute("SELECT * FROM pgq.requeue_dead(task => 'charge')")
        }
        enqueued = pgq.enqueue(conn, "after_upgrade", delay=30)
        statuses: dict[int, str] = dict(
            conn.execute("SELECT id, status::text FROM pgq.jobs").fetchall()
        )
    assert dry_run == {ids["dead_charge"], ids["dead_email"]}
    assert requeued == {ids["dead_charge"]}
    assert statuses == {
        ids["queued"]: "queued", ids["scheduled"]: "queued", ids["dead_charge"]: "queued",
        ids["dead_email"]: "dead", enqueued.id: "queued",
    }  # fmt: skip


def test_upgrade_to_0004_moves_run_at_values_no_tool_can_handle_into_the_range(
    empty_dsn: str,
) -> None:
    pgq.migrate.migrate(empty_dsn, revision="0003")
    with psycopg.connect(empty_dsn) as conn:  # commits at exit
        conn.execute(
            "INSERT INTO pgq.jobs (task, run_at) VALUES"
            " ('never', 'infinity'), ('far', '20000-01-01'), ('due', '-infinity'),"
            " ('old', '1900-01-01'), ('fine', '2030-06-01')"
        )
    with psycopg.connect(empty_dsn) as conn, pytest.raises(psycopg.errors.DataError):
        conn.execute("SELECT * FROM pgq.queue_stats")  # what `pgq stats` reads, broken at 0003

    migrate_ok(empty_dsn)

    with psycopg.connect(empty_dsn) as conn:
        rows: dict[str, str] = dict(
            conn.execute("SELECT task, run_at::text FROM pgq.jobs").fetchall()
        )
    assert rows == {
        "never": "9998-12-31 00:00:00+00", "far": "9998-12-31 00:00:00+00",
        "due": "1970-01-01 00:00:00+00", "old": "1970-01-01 00:00:00+00",
        "fine": "2030-06-01 00:00:00+00",
    }  # fmt: skip
    for command in ("stats", "jobs"):
        result = run_pgq(command, "--dsn", empty_dsn)
        assert result.returncode == 0, output(result)


def test_downgrade_to_0002_restores_its_requeue_dead_and_up_again_restores_0003(
    make_dsn: Callable[..., str],
) -> None:
    dsn, at_0002 = make_dsn(), make_dsn(migrated=False)
    pgq.migrate.migrate(at_0002, revision="0002")
    at_head = schema_dump(dsn)
    ids = seed_0002_jobs(dsn)

    text = migrate_ok(dsn, "--downgrade", "0002", "--yes")

    assert f"{HEAD} -> 0002" in text
    assert pgq.migrate.current_revision(dsn) == "0002"
    assert functions(dsn) == functions(at_0002), "0002's functions, 0002's definitions"
    assert schema_dump(dsn) == schema_dump(at_0002)
    with psycopg.connect(dsn) as conn:
        requeued = [
            row[0] for row in conn.execute("SELECT * FROM pgq.requeue_dead(task => 'email')")
        ]
    assert requeued == [ids["dead_email"]], "the restored requeue_dead still works"

    migrate_ok(dsn)

    assert pgq.migrate.current_revision(dsn) == HEAD
    assert schema_dump(dsn) == at_head


def test_migrate_sql_creates_and_opens_the_0003_functions() -> None:
    result = CliRunner().invoke(cli_app, ["migrate", "--sql", "--schema", "jobs_sql"])

    assert result.exit_code == 0, result.output
    script = result.stdout
    for name in NEW_IN_0003:
        assert f"CREATE FUNCTION jobs_sql.{name}(" in script
    assert "CREATE OR REPLACE FUNCTION jobs_sql.requeue_dead(" in script
    # Open to all, so that roles set up before the upgrade keep enqueueing.
    assert re.search(r"GRANT EXECUTE ON FUNCTION\s+jobs_sql\.resolve_run_at[^;]*TO PUBLIC", script)
    assert "version_num='0003'" in script


# Roles are cluster-wide: these are named after a random schema, and dropped after the test.


def create_login(conn: Conn, name: str, group: str) -> None:
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            sql.Identifier(name), sql.Identifier(group)
        )
    )


def drop_roles(dsn: str, roles: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in reversed(roles):  # logins before the groups they belong to
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def roles_script_of_0002(conn: Conn, schema: str) -> str:
    """What `pgq roles` applied before revision 0003: today's script without later functions."""
    script = roles_sql(schema).as_string(conn)
    # Revision 0006's tables and columns (and 0009's column): their grants, on lines of their
    # own, or appended.
    script = "\n".join(
        line.replace(", queue_from_task, priority_from_task", "").replace(", trace_context", "")
        for line in script.splitlines()
        if not any(f".{name}" in line for name in ("tasks", "workers", "live_workers"))
    )
    # Revision 0007's table and view: their grants, and the comment above them.
    lines = [line for line in script.splitlines() if "schedule" not in line]
    later = (*NEW_IN_0003, *NEW_IN_0004, "job_results")
    kept = [line for line in lines if not any(f in line for f in later)]
    assert len(kept) == len(lines) - len(later), "one grant line per function"
    return "\n".join(kept)


@pytest.fixture
def roles_to_drop(empty_dsn: str) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    drop_roles(empty_dsn, created)


def test_roles_set_up_before_0003_keep_enqueueing_and_requeueing_after_the_upgrade(
    empty_dsn: str, roles_to_drop: list[str]
) -> None:
    schema = f"pgqup_{secrets.token_hex(4)}"
    names = role_names(schema)
    logins = {"producer": f"{schema}_producer_login", "operator": f"{schema}_operator_login"}
    roles_to_drop += [names.producer, names.worker, names.operator, *logins.values()]

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(schema))

    def as_login(kind: str) -> Conn:
        return psycopg.connect(make_conninfo(empty_dsn, user=logins[kind]))

    pgq.migrate.migrate(empty_dsn, revision="0002", schema=schema)
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        admin.execute(roles_script_of_0002(admin, schema).encode())
        create_login(admin, logins["producer"], names.producer)
        create_login(admin, logins["operator"], names.operator)
        row = admin.execute(q("SELECT id FROM {s}.enqueue('charge')")).fetchone()
        assert row is not None
        dead = int(row[0])
        admin.execute(
            q("UPDATE {s}.jobs SET status = 'dead', attempts = 1, finished_at = now(),"
              " last_error = 'TimeoutError: x' WHERE id = %s"),
            [dead],
        )  # fmt: skip

    pgq.migrate.migrate(empty_dsn, schema=schema)  # and no `pgq roles` after it

    with as_login("producer") as producer:  # commits at exit
        producer.execute(q("SELECT * FROM {s}.enqueue('by_sql')"))
        pgq.enqueue(producer, "by_python", delay=5, schema=schema)  # resolve_run_at
        pgq.enqueue(producer, "by_python", dedupe_key="once", schema=schema)
        pgq.enqueue_many(producer, [pgq.JobSpec("in_bulk", delay=5)], schema=schema)
    with as_login("operator") as operator:
        dry_run = [
            row[0] for row in operator.execute(q("SELECT * FROM {s}.requeueable_dead_job_ids()"))
        ]
        requeued = [row[0] for row in operator.execute(q("SELECT * FROM {s}.requeue_dead()"))]
        by_task: dict[str, int] = dict(
            operator.execute(q("SELECT task, count(*) FROM {s}.jobs GROUP BY task"))
        )
    assert dry_run == requeued == [dead]
    assert by_task == {"charge": 1, "by_sql": 1, "by_python": 2, "in_bulk": 1}

    # A later `pgq roles` narrows the new functions to the roles that need them.
    stranger = f"{schema}_stranger"
    roles_to_drop.append(stranger)
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        grant_roles(admin, schema)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))
        admin.execute(q("GRANT USAGE ON SCHEMA {s} TO ") + sql.Identifier(stranger))
    with as_login("producer") as producer:
        pgq.enqueue(producer, "by_python", delay=5, schema=schema)
    with psycopg.connect(make_conninfo(empty_dsn, user=stranger)) as outsider:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="resolve_run_at"):
            outsider.execute(q("SELECT {s}.resolve_run_at(NULL, 5)"))


# --- a downgrade asks first -----------------------------------------------------------------


def seed_jobs_of_every_kind(dsn: str) -> None:
    """2 queued jobs, 1 running, 1 dead and 1 succeeded."""
    with psycopg.connect(dsn) as conn:  # commits at exit
        for status in ("queued", "queued", "running", "dead", "succeeded"):
            seed_job(conn, status)


DROPS_THE_JOBS = (
    "This drops pgq.jobs holding 3 unfinished jobs (2 queued, 1 running) and 2 finished jobs "
    "(1 succeeded, 1 dead): they are lost."
)


def test_a_downgrade_on_a_terminal_asks_naming_the_jobs_it_drops_and_a_no_keeps_them(
    dsn: str,
) -> None:
    seed_jobs_of_every_kind(dsn)

    result = run_pgq_on_a_terminal("migrate", "--dsn", dsn, "--downgrade", "base", answer="n\n")

    assert result.returncode == 1, output(result)
    assert output(result) == (
        f"Downgrade pgq's schema 'pgq' from {HEAD} to base? {DROPS_THE_JOBS} [y/N] "
        "not confirmed: nothing changed"
    )
    assert pgq.migrate.current_revision(dsn) == HEAD
    assert len(all_jobs(dsn)) == 5


def test_a_downgrade_on_a_terminal_goes_ahead_after_a_yes(dsn: str) -> None:
    seed_jobs_of_every_kind(dsn)

    result = run_pgq_on_a_terminal("migrate", "--dsn", dsn, "--downgrade", "base", answer="y\n")

    assert result.returncode == 0, output(result)
    assert f"pgq schema 'pgq': {HEAD} -> none" in output(result)
    assert not relation_exists(dsn, "pgq.jobs")


def test_a_downgrade_without_a_terminal_or_yes_is_refused_and_changes_nothing(dsn: str) -> None:
    seed_jobs_of_every_kind(dsn)

    result = run_pgq("migrate", "--dsn", dsn, "--downgrade", "base")

    assert result.returncode == 1
    assert output(result) == (
        f"error: refusing to downgrade pgq's schema 'pgq' from {HEAD} to base without "
        f"confirmation: stdin is not a terminal, so pgq cannot ask. {DROPS_THE_JOBS} Add --yes "
        "to go ahead, or --dry-run to see what would change"
    )
    assert pgq.migrate.current_revision(dsn) == HEAD
    assert len(all_jobs(dsn)) == 5


def test_a_downgrade_dry_run_names_the_revisions_and_the_jobs_and_changes_nothing(
    dsn: str,
) -> None:
    seed_jobs_of_every_kind(dsn)
    before = schema_dump(dsn)

    text = migrate_ok(dsn, "--downgrade", "base", "--dry-run")

    reverted = ", ".join(reversed(pgq.migrate.REVISIONS))
    assert text == (
        f"dry run: would downgrade pgq's schema 'pgq' from {HEAD} to base, reverting "
        f"{reverted}. {DROPS_THE_JOBS} Nothing changed."
    )
    assert schema_dump(dsn) == before and len(all_jobs(dsn)) == 5


def reverted_down_to(revision: str) -> str:
    """The revisions a downgrade to ``revision`` reverts, newest first, as migrate lists them."""
    later = pgq.migrate.REVISIONS[pgq.migrate.REVISIONS.index(revision) + 1 :]
    return ", ".join(reversed(later))


def test_a_downgrade_that_keeps_the_jobs_says_so_and_what_this_pgq_needs(dsn: str) -> None:
    text = migrate_ok(dsn, "--downgrade", "0003", "--dry-run")

    assert text == (
        f"dry run: would downgrade pgq's schema 'pgq' from {HEAD} to 0003, reverting "
        f"{reverted_down_to('0003')}. Jobs are kept. This pgq needs "
        f"{pgq.migrate.required_revision()}: it refuses to run until migrated again. "
        "Nothing changed."
    )
    assert pgq.migrate.current_revision(dsn) == HEAD


def test_a_downgrade_of_an_empty_queue_says_the_table_is_empty(dsn: str) -> None:
    text = migrate_ok(dsn, "--downgrade", "base", "--dry-run")

    assert "This drops pgq.jobs, which is empty." in text


def test_migrate_sql_with_downgrade_prints_the_downgrade_from_the_newest_revision(
    dsn: str,
) -> None:
    script = run_pgq("migrate", "--sql", "--downgrade", "base")
    assert script.returncode == 0, output(script)
    assert "DROP TABLE pgq.jobs" in script.stdout and "CREATE TABLE" not in script.stdout

    applied = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-d", dsn],
        input=script.stdout, capture_output=True, text=True,
        env=pgq_env(), timeout=60, check=False,
    )  # fmt: skip

    assert applied.returncode == 0, applied.stderr
    assert not relation_exists(dsn, "pgq.jobs")
    assert pgq.migrate.current_revision(dsn) is None


# --- revision 0005: dead jobs per queue and queue_stats read indexes ------------------------


def plan_text(dsn: str, statement: str) -> str:
    with psycopg.connect(dsn) as conn:
        return "\n".join(str(row[0]) for row in conn.execute("EXPLAIN " + statement))


def seed_a_long_history(dsn: str) -> None:
    """20,000 succeeded jobs, 30 dead ones and a few unfinished: a queue some weeks old."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO pgq.jobs (task, queue, status, finished_at)"
            " SELECT 'task', 'queue_' || (n % 3), 'succeeded', now() - n * interval '1 minute'"
            " FROM generate_series(1, 20000) AS n"
        )
        for n in range(30):
            seed_job(conn, "dead", queue=f"queue_{n % 3}")
        seed_job(conn, "queued")
        seed_job(conn, "running")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgq.jobs")


def test_before_0005_the_first_screens_queries_read_the_whole_table(empty_dsn: str) -> None:
    pgq.migrate.migrate(empty_dsn, revision="0004")
    seed_a_long_history(empty_dsn)

    assert "Seq Scan on jobs" in plan_text(empty_dsn, "SELECT * FROM pgq.queue_stats")
    dead = query("count_dead_jobs_by_queue", "pgq").as_string(None)
    assert "Seq Scan on jobs" in plan_text(empty_dsn, dead)


def test_at_0005_they_read_only_indexes(dsn: str) -> None:
    seed_a_long_history(dsn)

    stats = plan_text(dsn, "SELECT * FROM pgq.queue_stats")
    dead = plan_text(dsn, query("count_dead_jobs_by_queue", "pgq").as_string(None))

    assert "Seq Scan" not in stats and "jobs_queue_claim_idx" in stats, stats
    # An index-only scan where VACUUM could mark the pages all-visible; a bitmap scan of
    # the same partial index where another session's snapshot kept it from doing so (the
    # suite shares its server): either way only the dead jobs are read, never the history.
    assert "Seq Scan" not in dead and "jobs_dead_idx" in dead, dead


def test_upgrade_to_0005_builds_its_index_without_blocking_enqueues(empty_dsn: str) -> None:
    pgq.migrate.migrate(empty_dsn, revision="0004")
    writer = psycopg.connect(empty_dsn)  # an enqueue still in its transaction
    try:
        # Through the SQL function: this pgq's own enqueue needs a newer revision.
        writer.execute("SELECT * FROM pgq.enqueue('slow_transaction')")
        migration = subprocess.Popen(
            [sys.executable, "-m", "pgq", "migrate", "--dsn", empty_dsn],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=pgq_env(),
        )  # fmt: skip
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX%%'"
        with psycopg.connect(empty_dsn, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while not watcher.execute(waiting).fetchone() == (1,):
                assert time.monotonic() < deadline, "the index build never started"
                time.sleep(0.05)
            # A plain CREATE INDEX would now wait for the open enqueue, and every
            # other enqueue would queue behind it: this one would time out.
            with psycopg.connect(empty_dsn, options="-c lock_timeout=2s") as other:
                created = other.execute("SELECT created FROM pgq.enqueue('meanwhile')")
                assert created.fetchone() == (True,)
        writer.commit()
        stdout, _ = migration.communicate(timeout=60)
    finally:
        writer.close()

    assert migration.returncode == 0, stdout
    assert f"0004 -> {HEAD}" in stdout
    assert index_is_valid(empty_dsn, "pgq.jobs_dead_idx")


def test_an_upgrade_interrupted_during_the_index_build_is_finished_by_the_next(
    empty_dsn: str,
) -> None:
    pgq.migrate.migrate(empty_dsn, revision="0004")
    # A build cancelled while it waits for an open snapshot leaves an invalid index.
    with psycopg.connect(empty_dsn) as reader, psycopg.connect(empty_dsn, autocommit=True) as ddl:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM pgq.jobs")
        ddl.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            ddl.execute(
                "CREATE INDEX CONCURRENTLY jobs_dead_idx ON pgq.jobs (queue, finished_at)"
                " WHERE status = 'dead'"
            )
    assert relation_exists(empty_dsn, "pgq.jobs_dead_idx")
    assert not index_is_valid(empty_dsn, "pgq.jobs_dead_idx")

    migrate_ok(empty_dsn)

    assert index_is_valid(empty_dsn, "pgq.jobs_dead_idx")


def test_this_pgq_runs_on_the_revision_it_needs_and_refuses_older_ones(
    make_dsn: Callable[..., str],
) -> None:
    needed = pgq.migrate.required_revision()
    older = pgq.migrate.REVISIONS[pgq.migrate.REVISIONS.index(needed) - 1]
    at_needed, at_older = make_dsn(migrated=False), make_dsn(migrated=False)
    pgq.migrate.migrate(at_needed, revision=needed)
    pgq.migrate.migrate(at_older, revision=older)
    with psycopg.connect(at_needed) as conn:
        seed_job(conn, "dead", queue="payments")

    stats = run_pgq("stats", "--dsn", at_needed, "--json")
    refused = run_pgq("stats", "--dsn", at_older)

    assert stats.returncode == 0, output(stats)
    assert [(q["queue"], q["dead"]) for q in json.loads(stats.stdout)["queues"]] == [
        ("payments", 1)
    ]
    assert refused.returncode == 1
    assert output(refused) == (
        f"error: pgq's schema 'pgq' is at revision {older}, this pgq needs {needed} or later: "
        "run `pgq migrate`"
    )


# --- revision 0007: periodic schedules -------------------------------------------------------


def test_schedules_go_down_and_up_again_and_the_jobs_stay(dsn: str) -> None:
    before_schedules = pgq.migrate.REVISIONS[pgq.migrate.REVISIONS.index("0007") - 1]
    seed_jobs_of_every_kind(dsn)
    at_head, jobs = schema_dump(dsn), all_jobs(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO pgq.schedules (task, cron, tz, ticked_through, declared_at)"
            " VALUES ('nightly', '0 3 * * *', 'UTC', now(), now())"
        )

    text = migrate_ok(dsn, "--downgrade", before_schedules, "--yes")

    assert f"{HEAD} -> {before_schedules}" in text
    assert not relation_exists(dsn, "pgq.schedules")
    assert not relation_exists(dsn, "pgq.schedule_status")
    assert all_jobs(dsn) == jobs

    migrate_ok(dsn)

    assert schema_dump(dsn) == at_head and all_jobs(dsn) == jobs


# --- 0006: the task registry ------------------------------------------------------------------


def test_0006_goes_down_and_up_again_keeping_jobs_and_fixing_attempts_left_to_the_task(
    dsn: str,
) -> None:
    with psycopg.connect(dsn) as conn:  # commits at exit
        conn.execute(
            "INSERT INTO pgq.tasks (name, queue, priority, max_attempts, retry_base_seconds,"
            " retry_cap_seconds, registered_by) VALUES ('known', 'mail', 4, 3, 1, 60, 'w1')"
        )
        ids = [
            pgq.enqueue(conn, "known").id,  # the registry's queue, priority and attempts
            pgq.enqueue(conn, "unregistered").id,  # the defaults
            pgq.enqueue(conn, "known", queue="chosen", max_attempts=9).id,
        ]

    def jobs() -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute(
                "SELECT task, queue, priority, max_attempts FROM pgq.jobs WHERE id = ANY(%s)"
                " ORDER BY id",
                [ids],
            ).fetchall()

    assert jobs() == [
        ("known", "mail", 4, None), ("unregistered", "default", 0, None),
        ("known", "chosen", 4, 9),
    ]  # fmt: skip

    migrate_ok(dsn, "--downgrade", "0005", "--yes")

    # Revision 0005 knows no "the task's": each job gets its task's value for good, else 5.
    assert jobs() == [
        ("known", "mail", 4, 3), ("unregistered", "default", 0, 5), ("known", "chosen", 4, 9),
    ]  # fmt: skip
    assert not relation_exists(dsn, "pgq.task_defaults")

    migrate_ok(dsn)

    assert jobs() == [
        ("known", "mail", 4, 3), ("unregistered", "default", 0, 5), ("known", "chosen", 4, 9),
    ]  # fmt: skip
    with psycopg.connect(dsn) as conn:
        assert pgq.enqueue(conn, "after", {"n": 1}).created


# --- revision 0008: results, progress, cancelling running jobs ----------------------------


def jobs_by_status(dsn: str) -> list[tuple[int, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, status::text, attempts FROM pgq.jobs ORDER BY id")
        return [(int(i), str(s), int(a)) for i, s, a in rows]


def test_0008_goes_down_and_up_again_keeping_every_job(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:  # commits at exit
        seed_job(conn, "queued")
        done = seed_job(conn, "succeeded")
        conn.execute("UPDATE pgq.jobs SET result = '{\"sum\": 5}' WHERE id = %s", [done])
        busy = seed_job(conn, "running")
        conn.execute("UPDATE pgq.jobs SET progress = '\"half\"' WHERE id = %s", [busy])
        stopped = seed_job(conn, "running")
    with psycopg.connect(dsn) as conn:
        pgq.cancel(conn, stopped)
    before = jobs_by_status(dsn)

    pgq.migrate.migrate(dsn, downgrade_to="0005")

    assert jobs_by_status(dsn) == before  # the job cancelled while running stays cancelled
    assert not relation_exists(dsn, "pgq.job_results")
    refused = pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="only queued")
    with psycopg.connect(dsn) as conn, refused:
        conn.execute("SELECT pgq.cancel(%s)", [busy])

    pgq.migrate.migrate(dsn)

    assert jobs_by_status(dsn) == before
    with psycopg.connect(dsn) as conn:
        # The downgrade dropped results and progress: they come back empty.
        assert pgq.get_job(conn, done).result is None
        pgq.cancel(conn, busy)
        assert pgq.get_job(conn, busy).status == "cancelled"


def test_migrate_sql_creates_0008s_view_and_cancel_for_running_jobs() -> None:
    script = run_pgq("migrate", "--sql")

    assert script.returncode == 0, output(script)
    assert "CREATE VIEW pgq.job_results AS" in script.stdout
    assert "PERFORM pg_notify('pgq_cancel', job_id || ' ' || found_token);" in script.stdout


# --- revision 0009: the enqueuer's trace context -------------------------------------------


def test_0009_goes_down_and_up_again_keeping_every_job(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:  # commits at exit
        seed_job(conn, "queued")
        traced = seed_job(conn, "queued")
        conn.execute(
            "UPDATE pgq.jobs SET trace_context = %s WHERE id = %s",
            ['{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}', traced],
        )
        seed_job(conn, "succeeded")
        seed_job(conn, "dead")
    before = jobs_by_status(dsn)

    pgq.migrate.migrate(dsn, downgrade_to="0008")

    assert jobs_by_status(dsn) == before
    assert pgq.migrate.current_revision(dsn) == "0008"
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.UndefinedColumn):
        conn.execute("SELECT trace_context FROM pgq.jobs")

    pgq.migrate.migrate(dsn)

    assert jobs_by_status(dsn) == before
    with psycopg.connect(dsn) as conn:
        # The downgrade dropped the stored contexts: those jobs now run in traces of their own.
        rows = conn.execute("SELECT count(*) FROM pgq.jobs WHERE trace_context IS NOT NULL")
        assert rows.fetchone() == (0,)
        assert pgq.enqueue(conn, "after", {"n": 1}).created


def test_migrate_sql_adds_0009s_trace_context_column() -> None:
    script = run_pgq("migrate", "--sql")

    assert script.returncode == 0, output(script)
    assert "ALTER TABLE pgq.jobs ADD COLUMN trace_context jsonb;" in script.stdout
    assert "GRANT INSERT (trace_context) ON pgq.jobs TO pgq_producer;" in script.stdout
