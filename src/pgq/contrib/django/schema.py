"""pgq's schema in a Django project: what its Django migrations run.

Each of pgq's Django migrations moves the schema of every pgq task backend on the
database being migrated to one of pgq's own Alembic revisions, through
``pgq.migrate`` (the same lock and steps as ``pgq migrate``, on a connection of its
own), and back again when reversed. There is no second copy of the schema.
"""

from __future__ import annotations

from typing import Any

from pgq import migrate
from pgq.contrib.django import database
from pgq.contrib.django.compat import task_backends


def _schemas_on(alias: str) -> list[str]:
    """The schemas of the pgq task backends that use the database ``alias``."""
    from pgq.contrib.django.backend import PgqBackend

    return sorted({backend.schema for backend in task_backends.all()
                   if isinstance(backend, PgqBackend) and backend.database == alias})  # fmt: skip


def _is_at_or_past(current: str | None, revision: str) -> bool:
    if current is None:
        return False
    if current not in migrate.REVISIONS:  # newer than this pgq: `pgq migrate` of a later pgq
        return True
    return migrate.REVISIONS.index(current) >= migrate.REVISIONS.index(revision)


def upgrade_to(revision: str, schema_editor: Any) -> None:
    """Upgrade the schemas on this migration's database to ``revision``, unless past it."""
    alias = schema_editor.connection.alias
    for schema in _schemas_on(alias):
        dsn = database.dsn(alias)
        if not _is_at_or_past(migrate.current_revision(dsn, schema=schema), revision):
            migrate.migrate(dsn, revision=revision, schema=schema)


def downgrade_to(revision: str, schema_editor: Any) -> None:
    """Revert the schemas on this migration's database to ``revision`` (``base``: drop all)."""
    alias = schema_editor.connection.alias
    for schema in _schemas_on(alias):
        migrate.migrate(database.dsn(alias), downgrade_to=revision, schema=schema)
