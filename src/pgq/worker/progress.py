"""Progress: what handlers report with ``ctx.progress()``, written in fenced batches.

A report never waits for the database: a handler may report in a tight loop, and
a sync handler's thread must not block on a round trip (nor on the event loop).
Reports land in ``ProgressBuffer``, the latest per job wins, and one asyncio task
writes them every ``FLUSH_SECONDS`` with one statement (``record_progress``)
fenced by each job's lease token, as outcomes are. The outcome writer takes a
finishing job's last report first (``take``), so that the final value is written
before its finish rather than refused after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import psycopg
import psycopg_pool

from pgq.job import ClaimedJob
from pgq.queries import array_literal, query

log = logging.getLogger("pgq.worker")

#: How often reported progress is written: how stale a reader's view may be.
FLUSH_SECONDS = 0.25

Report = tuple[int, uuid.UUID, str]  # job id, lease token, progress as JSON text


class ProgressBuffer:
    """The latest unwritten report of each running job, shared by handler threads and the loop."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._pending: dict[uuid.UUID, Report] = {}
        self._lock = threading.Lock()

    def record(self, job: ClaimedJob, progress_json: str) -> None:
        """Keep ``job``'s latest report (from any thread)."""
        with self._lock:
            self._pending[job.lease_token] = (job.id, job.lease_token, progress_json)

    def take(self, lease_tokens: Iterable[uuid.UUID]) -> list[Report]:
        """Remove and return the unwritten reports of these jobs (they are finishing)."""
        if not self._pending:  # nearly always: no handler reports progress
            return []
        with self._lock:
            return [r for t in lease_tokens if (r := self._pending.pop(t, None)) is not None]

    def take_all(self) -> list[Report]:
        with self._lock:
            reports, self._pending = list(self._pending.values()), {}
        return reports

    async def write(self, conn: psycopg.AsyncConnection[Any], reports: list[Report]) -> None:
        """Store ``reports`` in one fenced statement on ``conn``."""
        params = {
            "ids": array_literal(job_id for job_id, _, _ in reports),
            "lease_tokens": array_literal(token for _, token, _ in reports),
            "progress": [text for _, _, text in reports],
        }
        await conn.execute(query("record_progress", self.schema), params)

    async def run(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        """Write what handlers reported, every FLUSH_SECONDS, forever; cancel the task to stop."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            reports = self.take_all()
            if not reports:
                continue
            try:
                async with pool.connection() as conn:
                    await self.write(conn, reports)
            except psycopg.Error as error:
                # Progress is a view, not a fact: the next report replaces what is lost.
                log.warning("could not record the progress of %d jobs: %s", len(reports), error)
