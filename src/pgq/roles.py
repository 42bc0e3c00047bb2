"""Least-privilege roles: a producer that can only enqueue, a worker, and an operator.

They are group roles (NOLOGIN): grant them to your login roles, e.g.
``GRANT pgq_producer TO web_app;``. `pgq roles --sql` prints the statements for
a DBA to apply; `pgq roles` applies them (it needs CREATEROLE and ownership of
pgq's schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgq.config import resolve_schema
from pgq.queries import QUERIES


@dataclass(frozen=True, slots=True)
class RoleNames:
    producer: str
    worker: str
    operator: str


def role_names(schema: str | None = None) -> RoleNames:
    """``<schema>_producer``, ``<schema>_worker`` and ``<schema>_operator``."""
    schema = resolve_schema(schema)
    return RoleNames(f"{schema}_producer", f"{schema}_worker", f"{schema}_operator")


def roles_sql(schema: str | None = None) -> sql.Composed:
    """The statements that create the roles and grant their privileges."""
    schema = resolve_schema(schema)
    names = role_names(schema)
    return sql.SQL(QUERIES["grant_roles"]).format(
        schema=sql.Identifier(schema),
        producer=sql.Identifier(names.producer),
        worker=sql.Identifier(names.worker),
        operator=sql.Identifier(names.operator),
        producer_name=sql.Literal(names.producer),
        worker_name=sql.Literal(names.worker),
        operator_name=sql.Literal(names.operator),
    )


def grant_roles(conn: psycopg.Connection[Any], schema: str | None = None) -> RoleNames:
    """Create (if missing) the three roles and grant their privileges, in one transaction."""
    with conn.transaction():
        conn.execute(roles_sql(schema))
    return role_names(schema)
