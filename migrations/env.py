"""Alembic environment for pgq's own revisions.

pgq's revision history is its own: the version table lives in pgq's schema, so
it never mixes with an application's ``alembic_version``. The schema name comes
from ``config.attributes["pgq_schema"]`` (set by ``pgq.migrate``).
"""

from __future__ import annotations

from alembic import context

from pgq.migrate import VERSION_TABLE, ensure_schema_sql

config = context.config
schema: str = config.attributes["pgq_schema"]


def run_offline() -> None:
    context.configure(
        url="postgresql://",
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        transactional_ddl=True,
        # Named binds: with the default pyformat, every % in the SQL would be
        # doubled (a RAISE's "got %" became "got %%").
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        # The version table lives in the schema, so the schema comes first.
        context.execute(ensure_schema_sql(schema))
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.execute(ensure_schema_sql(schema))
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
