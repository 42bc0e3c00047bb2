"""An application that already uses Alembic applies pgq's revisions from one of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import psycopg.conninfo

from pgq.migrate import head_revision

APP_REVISION = '''
"""add pgq"""

from alembic import op

import pgq.migrate

revision = "app0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    pgq.migrate.upgrade(op.get_bind())
    # The app's revision goes on using op after pgq's revisions ran.
    op.execute("CREATE TABLE order_events (order_id int REFERENCES orders (id))")


def downgrade() -> None:
    pgq.migrate.downgrade(op.get_bind(), revision="base")
    op.execute("DROP TABLE order_events")
    op.execute("DROP TABLE orders")
'''

APP_ENV = """
import psycopg
import sqlalchemy
from alembic import context

DSN = {dsn!r}

engine = sqlalchemy.create_engine(
    "postgresql+psycopg://", creator=lambda: psycopg.connect(DSN), poolclass=sqlalchemy.NullPool
)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""


def make_alembic_project(root: Path, dsn: str) -> None:
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(textwrap.dedent(APP_ENV.format(dsn=dsn)))
    (root / "migrations" / "script.py.mako").write_text("")
    (root / "migrations" / "versions" / "app0001_add_pgq.py").write_text(APP_REVISION)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")


def run_alembic(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=root, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables"
            " WHERE schemaname IN ('public', 'pgq')"
        ).fetchall()
    return {row[0] for row in rows}


def test_app_revision_applies_pgq_and_keeps_using_op(empty_dsn: str, tmp_path: Path) -> None:
    make_alembic_project(tmp_path, empty_dsn)
    result = run_alembic(tmp_path, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert {"public.orders", "public.order_events", "pgq.jobs"} <= tables(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        app_version = conn.execute("SELECT version_num FROM public.alembic_version").fetchall()
        pgq_version = conn.execute("SELECT version_num FROM pgq.alembic_version").fetchall()
    assert app_version == [("app0001",)]
    assert pgq_version == [(head_revision(),)]


def test_app_revision_downgrade_removes_pgq_and_its_own_tables(
    empty_dsn: str, tmp_path: Path
) -> None:
    make_alembic_project(tmp_path, empty_dsn)
    assert run_alembic(tmp_path, "upgrade", "head").returncode == 0
    result = run_alembic(tmp_path, "downgrade", "base")
    assert result.returncode == 0, result.stderr
    remaining = tables(empty_dsn)
    assert "pgq.jobs" not in remaining
    assert "public.orders" not in remaining
