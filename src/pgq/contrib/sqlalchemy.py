"""SQLAlchemy sessions and connections as psycopg connections, in their open transaction.

``pgq.enqueue()`` and the other enqueue functions take a SQLAlchemy ``Session`` or
``Connection`` (``AsyncSession`` or ``AsyncConnection`` for the async ones)
wherever they take a psycopg connection. The job is written on the psycopg
connection under it, in the transaction SQLAlchemy has open (a session begins
one if it has none), so it commits or rolls back with the session's other
writes. Only SQLAlchemy's psycopg 3 driver (``postgresql+psycopg://``) has one.

SQLAlchemy is imported only when such an object is passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import psycopg

from pgq.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

#: What the sync enqueue functions take.
SyncConnection: TypeAlias = "psycopg.Connection[Any] | Session | SAConnection"
#: What the async enqueue functions take.
AsyncConnection: TypeAlias = "psycopg.AsyncConnection[Any] | AsyncSession | SAAsyncConnection"

Driver = TypeVar("Driver", psycopg.Connection[Any], psycopg.AsyncConnection[Any])


def psycopg_connection(conn: SyncConnection) -> psycopg.Connection[Any]:
    """``conn`` itself, or the psycopg connection under a SQLAlchemy Session or Connection."""
    if isinstance(conn, psycopg.Connection):
        return conn
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        conn = conn.connection()  # the session's transaction, begun if need be
    if isinstance(conn, Connection):
        return _driver(conn.connection.driver_connection, psycopg.Connection)
    raise _not_a_connection(conn, "a psycopg Connection or a SQLAlchemy Session or Connection")


async def psycopg_async_connection(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """``conn`` itself, or the psycopg connection under an AsyncSession or AsyncConnection."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsync
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, SAAsync):
        raw = await conn.get_raw_connection()
        return _driver(raw.driver_connection, psycopg.AsyncConnection)
    raise _not_a_connection(
        conn, "a psycopg AsyncConnection or a SQLAlchemy AsyncSession or AsyncConnection"
    )


def _driver(found: object, wanted: type[Driver]) -> Driver:
    if isinstance(found, wanted):
        return found
    module = type(found).__module__.partition(".")[0]
    raise ConfigError(
        f"pgq writes jobs through psycopg 3, and this SQLAlchemy engine uses {module}: "
        "create it with a postgresql+psycopg:// URL"
    )


def _not_a_connection(conn: object, wanted: str) -> TypeError:
    return TypeError(f"expected {wanted}, got {type(conn).__module__}.{type(conn).__qualname__}")
