"""The shop's HTTP API: an order and its shipping job commit together, or not at all.

Served with ``uvicorn storefront.api:api``; the database is ``$PGQ_DSN`` (or ``$DATABASE_URL``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import psycopg
import sqlalchemy
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import pgq
from pgq.config import resolve_dsn
from storefront.tasks import ship_order


def engine_url() -> sqlalchemy.engine.URL:
    """``$PGQ_DSN`` as a URL for SQLAlchemy's psycopg (3) driver, which pgq enqueues through."""
    parts = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(resolve_dsn()).items()}
    return sqlalchemy.engine.URL.create(
        "postgresql+psycopg",
        username=parts.get("user"),
        password=parts.get("password"),
        host=parts.get("host"),
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
    )


engine = sqlalchemy.create_engine(engine_url())


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, item text)"))
    yield


api = FastAPI(title="shop", lifespan=lifespan)


def session() -> Iterator[Session]:
    with Session(engine) as db:
        yield db


Db = Annotated[Session, Depends(session)]


class Order(BaseModel):
    id: int
    item: str


@api.post("/orders", status_code=201)
def place_order(order: Order, db: Db) -> dict[str, int]:
    """Write the order and enqueue its shipping in one transaction."""
    try:
        with db.begin():
            db.execute(text("INSERT INTO orders VALUES (:id, :item)"), order.model_dump())
            job = ship_order.enqueue(db, {"order_id": order.id, "item": order.item})
    except IntegrityError:
        # Rolled back: no order, and no job either.
        raise HTTPException(409, f"order {order.id} exists") from None
    return {"order_id": order.id, "job_id": job.id}


@api.get("/jobs/{job_id}")
def job_status(job_id: int, db: Db) -> dict[str, Any]:
    """A job's status, attempts, result and last error, as pgq.get_job reads them."""
    try:
        job = pgq.get_job(db, job_id)
    except pgq.JobNotFoundError:
        raise HTTPException(404, f"no job {job_id}") from None
    return {
        "id": job.id,
        "status": job.status.value,
        "attempts": job.attempts,
        "result": job.result,
        "last_error": job.last_error,
    }
