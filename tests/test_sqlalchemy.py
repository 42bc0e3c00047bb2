"""Enqueue on SQLAlchemy's Session, Connection, AsyncSession and AsyncConnection: the job commits
and rolls back with the session's own writes (psycopg driver, a real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgq
import pgq.admin


def url(dsn: str) -> sqlalchemy.engine.URL:
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    return sqlalchemy.engine.URL.create(
        "postgresql+psycopg", username=str(parts.get("user")), host=str(parts.get("host")),
        port=int(str(parts.get("port", 5432))), database=str(parts.get("dbname")),
    )  # fmt: skip


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    engine = sqlalchemy.create_engine(url(dsn))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id int PRIMARY KEY)"))
    yield engine
    engine.dispose()


@pytest.fixture
def async_engine(engine: Engine, dsn: str) -> Iterator[AsyncEngine]:
    async_engine = create_async_engine(url(dsn))
    yield async_engine
    asyncio.run(async_engine.dispose())


def stored(dsn: str) -> list[tuple[Any, ...]]:
    """Committed orders and jobs, as another connection sees them."""
    with psycopg.connect(dsn) as conn:
        orders = conn.execute("SELECT id FROM orders ORDER BY id").fetchall()
        jobs = conn.execute("SELECT task, args FROM pgq.jobs ORDER BY id").fetchall()
    return [*orders, *jobs]


def test_a_session_commits_the_job_with_its_own_writes(engine: Engine, dsn: str) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO orders VALUES (1)"))
        job = pgq.enqueue(session, "ship", {"order_id": 1})
        assert stored(dsn) == [], "nothing is visible before the session commits"
        session.commit()

    assert job.created
    assert stored(dsn) == [(1,), ("ship", {"order_id": 1})]


def test_a_session_that_rolls_back_leaves_no_job(engine: Engine, dsn: str) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO orders VALUES (1)"))
        pgq.enqueue_many(session, [pgq.JobSpec("ship", {"order_id": 1})] * 3)
        session.rollback()

    assert stored(dsn) == []


def test_a_session_with_no_transaction_yet_begins_one_for_the_job(engine: Engine, dsn: str) -> None:
    with Session(engine) as session:
        pgq.enqueue(session, "ship", {"order_id": 2})
        session.rollback()
        pgq.enqueue(session, "ship", {"order_id": 3})
        session.commit()

    assert stored(dsn) == [("ship", {"order_id": 3})]


def test_an_engine_connection_commits_and_rolls_back_the_job(engine: Engine, dsn: str) -> None:
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text("INSERT INTO orders VALUES (1)"))
            pgq.enqueue(conn, "ship", {"order_id": 1})
        transaction = conn.begin()
        pgq.enqueue(conn, "ship", {"order_id": 2})
        transaction.rollback()

    assert stored(dsn) == [(1,), ("ship", {"order_id": 1})]


def test_an_async_session_commits_and_rolls_back_the_job(
    async_engine: AsyncEngine, dsn: str
) -> None:
    async def scenario() -> None:
        async with AsyncSession(async_engine) as session:
            await session.execute(text("INSERT INTO orders VALUES (1)"))
            await pgq.enqueue_async(session, "ship", {"order_id": 1})
            await session.commit()
        async with AsyncSession(async_engine) as session:
            await session.execute(text("INSERT INTO orders VALUES (2)"))
            await pgq.enqueue_many_async(session, [pgq.JobSpec("ship", {"order_id": 2})])
            await session.rollback()
        async with async_engine.begin() as conn:  # an AsyncConnection
            await pgq.enqueue_async(conn, "ship", {"order_id": 3})

    asyncio.run(scenario())

    assert stored(dsn) == [(1,), ("ship", {"order_id": 1}), ("ship", {"order_id": 3})]


def test_something_else_than_a_connection_is_a_type_error(engine: Engine) -> None:
    with pytest.raises(TypeError, match="expected a psycopg Connection or a SQLAlchemy Session"):
        pgq.enqueue(engine, "ship", {})  # type: ignore[arg-type]


def test_the_operators_functions_take_a_session_too(engine: Engine, dsn: str) -> None:
    with Session(engine) as session:
        job = pgq.enqueue(session, "ship", {"order_id": 9})
        session.commit()
        pgq.cancel(session, job.id)
        session.commit()
        assert pgq.get_job(session, job.id).status is pgq.JobStatus.CANCELLED
        pgq.admin.requeue(session, job.id)
        pgq.admin.retry_now(session, job.id)
        session.commit()

    with psycopg.connect(dsn) as conn:
        assert pgq.get_job(conn, job.id).status is pgq.JobStatus.QUEUED
