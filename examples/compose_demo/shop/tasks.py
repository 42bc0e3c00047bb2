"""The shop's tasks: what `pgq work shop.tasks:app` runs.

Handlers open their own connections to the database in ``$PGQ_DSN``, as real
ones would, and write into the shop's ``shop_orders`` table (``shop.orders``
creates it). Some of them fail on purpose, so that the dashboard has retries
and a dead job to show:

- ``charge_card`` times out on the first attempt of every 4th order, then
  succeeds on the retry;
- ``send_confirmation`` gives up on every 10th order, whose address is not an
  email address: the job goes straight to ``dead``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import psycopg

import pgq

app = pgq.App()

# Retries a second or so apart, so that a newcomer sees them in the log at once.
QUICK_RETRY = pgq.Retry(base_seconds=0.5, cap_seconds=5.0)

MARK_CHARGED = """
UPDATE shop_orders SET charged_at = coalesce(charged_at, now()) WHERE id = %(order_id)s
"""
MARK_CONFIRMATION_SENT = """
UPDATE shop_orders
SET confirmation_sent_at = coalesce(confirmation_sent_at, now())
WHERE id = %(order_id)s
"""


def database_url() -> str:
    """The database the shop and its workers share: ``$PGQ_DSN``, as compose.yaml sets it."""
    dsn = os.environ.get("PGQ_DSN")
    if not dsn:
        raise pgq.ConfigError(
            "PGQ_DSN is not set: the shop needs the database's URL, "
            "e.g. PGQ_DSN='postgresql://pgq:pgq@postgres:5432/pgq'"
        )
    return dsn


@app.task(max_attempts=5, retry=QUICK_RETRY)
async def charge_card(order_id: int, ctx: pgq.JobContext) -> None:
    """An async handler: it runs on the worker's event loop."""
    await asyncio.sleep(random.uniform(0.05, 0.3))  # the payment gateway's latency
    if order_id % 4 == 0 and ctx.attempt == 1:
        raise ConnectionError(f"payment gateway timed out charging order {order_id}")
    async with await psycopg.AsyncConnection.connect(database_url()) as conn:
        # coalesce: a job that runs twice (at-least-once delivery) does not charge twice.
        await conn.execute(MARK_CHARGED, {"order_id": order_id})


@app.task(max_attempts=3, retry=QUICK_RETRY)
def send_confirmation(order_id: int, to: str) -> None:
    """A plain def: it runs in the worker's thread pool, never blocking the event loop."""
    if "@" not in to:
        raise pgq.GiveUp(f"not an email address: {to!r}; retrying cannot fix it")
    time.sleep(random.uniform(0.02, 0.1))  # the mail server's latency
    with psycopg.connect(database_url()) as conn:
        conn.execute(MARK_CONFIRMATION_SENT, {"order_id": order_id})
