"""Django's databases as pgq uses them: the live psycopg connection, and a DSN.

Enqueue and ``get_result`` run on Django's own connection for the alias, so a job
enqueued inside ``transaction.atomic()`` commits or rolls back with it. The schema
migration and the worker open connections of their own, so they need a DSN: it is
built from the same settings Django connects with.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pgq.errors import ConfigError

# Keyword arguments of psycopg.connect() that Django adds to its connection parameters:
# they are Python objects or client-side choices, not libpq's connection settings.
_NOT_LIBPQ = frozenset({"context", "cursor_factory", "prepare_threshold", "row_factory"})


def connection_wrapper(alias: str) -> Any:
    """Django's connection handler for ``alias`` (not yet connected), or ConfigError."""
    from django.db import connections

    if alias not in connections:
        raise ConfigError(f"the pgq task backend's database {alias!r} is not in settings.DATABASES")
    wrapper: Any = connections[alias]
    if wrapper.vendor != "postgresql":
        raise ConfigError(
            f"the pgq task backend's database {alias!r} is {wrapper.vendor}, not PostgreSQL"
        )
    if wrapper.Database.__name__ != "psycopg":  # the DB-API module Django connects with
        raise ConfigError(
            f"Django's database {alias!r} runs on psycopg2, but pgq needs psycopg 3: "
            "`pip install 'psycopg[binary]'` (Django prefers it to psycopg2)"
        )
    return wrapper


def psycopg_connection(alias: str) -> psycopg.Connection[Any]:
    """Django's open psycopg 3 connection for ``alias``, in whatever transaction Django has.

    In autocommit (Django's default outside ``atomic()``) each statement commits at once.
    """
    wrapper = connection_wrapper(alias)
    wrapper.ensure_connection()
    raw: psycopg.Connection[Any] = wrapper.connection
    return raw


def dsn(alias: str) -> str:
    """A libpq connection string for ``alias``, from the settings Django connects with."""
    params = connection_wrapper(alias).get_connection_params()
    return make_conninfo(
        "", **{key: value for key, value in params.items()
               if key not in _NOT_LIBPQ and value is not None and value != ""}
    )  # fmt: skip
