"""Wake-ups and cancels: a dedicated connection LISTENs for enqueues and for cancelled jobs.

Enqueues wake idle workers, so that they claim at once; ``pgq.cancel()`` of a
running job names it (``"<id> <lease token>"``), so that the worker holding it
stops its handler within a moment. Neither is needed for correctness: polling
(``poll_seconds``) finds new jobs, and the heartbeat finds a cancelled job's
lease gone. A notification sent while this connection was down is never
redelivered, so every reconnect wakes the worker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import psycopg

from pgq.config import cancel_channel, wakeup_channel
from pgq.connection import Backoff
from pgq.queries import query

log = logging.getLogger("pgq.worker")


def parse_cancel(payload: str) -> tuple[int, uuid.UUID] | None:
    """``"<id> <lease token>"`` as (id, token); None for anything else."""
    job_id, _, token = payload.partition(" ")
    try:
        return int(job_id), uuid.UUID(token)
    except ValueError:
        return None


async def listen_for_wakeups(
    dsn: str,
    schema: str,
    wanted: Callable[[str], bool],
    wake: Callable[[], None],
    cancel: Callable[[int, uuid.UUID], None],
) -> None:
    """Call ``wake()`` for each enqueue into a queue that ``wanted(queue)`` serves, and
    ``cancel(id, lease token)`` for each running job an operator cancels; forever."""
    channel, cancels = wakeup_channel(schema), cancel_channel(schema)
    backoff = Backoff()
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(query("listen_for_jobs", schema))
                await conn.execute(query("listen_for_cancels", schema, cancel_channel=cancels))
                backoff.succeeded()
                wake()  # notifications may have been missed while away
                async for notify in conn.notifies():
                    if notify.channel == channel:
                        if wanted(notify.payload):
                            wake()
                    elif notify.channel == cancels and (job := parse_cancel(notify.payload)):
                        cancel(*job)
        except psycopg.Error as error:
            delay = backoff.failed()
            log.warning(
                "listen connection lost (%s); polling meanwhile, retrying in %.1fs", error, delay
            )
            await asyncio.sleep(delay)
