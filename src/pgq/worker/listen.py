"""Wake-ups: a dedicated connection LISTENs for enqueues, so idle workers claim at once.

Polling stays as the fallback (``poll_seconds``): a notification sent while this
connection was down is never redelivered, so every reconnect wakes the worker,
and correctness never depends on a notification arriving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from pgq.config import wakeup_channel
from pgq.connection import Backoff
from pgq.queries import query

log = logging.getLogger("pgq.worker")


async def listen_for_wakeups(
    dsn: str, schema: str, wanted: Callable[[str], bool], wake: Callable[[], None]
) -> None:
    """Call ``wake()`` for each enqueue into a queue that ``wanted(queue)`` serves; forever."""
    channel = wakeup_channel(schema)
    backoff = Backoff()
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(query("listen_for_jobs", schema))
                backoff.succeeded()
                wake()  # notifications may have been missed while away
                async for notify in conn.notifies():
                    if notify.channel == channel and wanted(notify.payload):
                        wake()
        except psycopg.Error as error:
            delay = backoff.failed()
            log.warning(
                "listen connection lost (%s); polling meanwhile, retrying in %.1fs", error, delay
            )
            await asyncio.sleep(delay)
