"""The outcome writer: one asyncio task batches every finished job into fenced statements.

Outcomes pile up while the previous write is in flight, so the batch size
follows the load by itself: one job per write when idle, hundreds when busy,
and no timer adds latency. Every row matches the lease token of the claim that
ran it (``finish_jobs``): a worker that lost its lease changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import psycopg_pool
from psycopg import sql

from pgq.config import finished_channel
from pgq.connection import DATABASE_DOWN, Backoff
from pgq.job import JobStatus
from pgq.logs import plural
from pgq.queries import array_literal, query
from pgq.tasks import Task
from pgq.worker import outcome as outcomes
from pgq.worker.outcome import Outcome
from pgq.worker.progress import ProgressBuffer

log = logging.getLogger("pgq.worker")


class OutcomeWriter:
    """Writes outcomes in batches from one asyncio task (``run``)."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        schema: str,
        tasks: Mapping[str, Task],
        progress: ProgressBuffer,
        *,
        release: Callable[[list[uuid.UUID]], None],
        applied: Callable[[Outcome], None],
        discarded: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.tasks = tasks
        self.progress = progress
        self.release = release  # stop extending these leases
        self.applied = applied  # one outcome now stored
        self.discarded = discarded  # one result refused by the fence
        self.pending: list[Outcome] = []
        self.in_flight = 0
        self.wakeup = asyncio.Event()

    def add(self, result: Outcome) -> None:
        self.pending.append(result)
        self.wakeup.set()

    async def run(self) -> None:
        """Write whatever is pending, forever; cancel the task to stop."""
        backoff = Backoff()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            self.in_flight = len(batch)
            try:
                await self._write(batch)
                backoff.succeeded()
            except DATABASE_DOWN as error:
                self.pending[:0] = batch  # kept for the retry
                # A pooled connection the server closed (restart, terminate) fails on
                # first use: drop every such idle connection, then retry at once.
                try:
                    await self.pool.check()
                except Exception:
                    pass
                delay = backoff.failed(at_once=True)
                log.warning(
                    "recording %s failed, database unreachable (%s); retrying in %.1fs",
                    plural(len(self.pending), "outcome"), error, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                self.wakeup.set()
            except asyncio.CancelledError:
                self.pending[:0] = batch
                raise
            except Exception as error:
                # One outcome the database refuses must not sink the others
                # of its batch: write them one by one.
                log.error("recording %s failed (%s); retrying one by one",
                          plural(len(batch), "outcome"), error)  # fmt: skip
                await self._write_one_by_one(batch)
            finally:
                self.in_flight = 0

    async def finish(self, flusher: asyncio.Task[None], timeout_seconds: float) -> None:
        """At shutdown: wait (up to the timeout) until everything is written, then stop."""
        deadline = time.monotonic() + timeout_seconds
        self.wakeup.set()
        while (self.pending or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        flusher.cancel()
        try:
            await flusher
        except (asyncio.CancelledError, Exception):  # stopping anyway; pending is reported
            pass
        if self.pending:
            log.error(
                "could not record %s before exiting; their leases will expire and "
                "rescue will return them to the queue", plural(len(self.pending), "outcome"),
            )  # fmt: skip

    async def _write_one_by_one(self, batch: list[Outcome]) -> None:
        for index, result in enumerate(batch):
            try:
                await self._write([result])
                continue
            except DATABASE_DOWN:
                self.pending[:0] = batch[index:]
                self.wakeup.set()
                return
            except Exception as error:
                problem = error
            # Record a plain failure instead, so the job is retried (or dead)
            # rather than left running until its lease expires.
            fallback = outcomes.failed(
                result.job,
                RuntimeError(f"pgq could not record this job's {result.kind} outcome: {problem}"),
                self.tasks[result.job.task].retry,
            )
            try:
                await self._write([fallback])
            except Exception as error:
                self.release([result.job.lease_token])
                log.error(
                    "job %s: could not record any outcome (%s); rescue will return it "
                    "when its lease expires", result.job.id, error,
                )  # fmt: skip

    async def _write(self, batch: list[Outcome]) -> None:
        """Write outcomes in fenced batch statements; log those the fence refused."""
        statements = finish_statements(batch, self.schema)
        # By id and lease token: a job rescued from this worker and claimed by it again can
        # have its fenced old outcome and its stored new one in the same batch.
        applied: set[tuple[int, uuid.UUID]] = set()
        # A finishing job's last progress report goes first: after the finish, the fence refuses it.
        reports = self.progress.take(o.job.lease_token for o in batch)
        async with self.pool.connection() as conn:
            if reports:
                await self.progress.write(conn, reports)
            for statement, params in statements:
                cursor = await conn.execute(statement, params)
                applied.update((row[0], row[1]) for row in await cursor.fetchall())
        self.release([o.job.lease_token for o in batch])
        for o in batch:
            if (o.job.id, o.job.lease_token) in applied:
                self.applied(o)
            else:
                self.discarded()
                log.warning(
                    "job %s: result discarded, this worker no longer holds its lease "
                    "(it was rescued or finished elsewhere)", o.job.id,
                )  # fmt: skip


def finish_statements(batch: list[Outcome], schema: str) -> list[tuple[sql.SQL, dict[str, Any]]]:
    """The fenced statements that store ``batch``: one for successes, one for the rest."""
    # Successes, nearly every outcome under load, take a statement with three
    # parameters; the rest (retries, dead, snoozes, hand-backs) the full one.
    successes = [o for o in batch if o.status is JobStatus.SUCCEEDED]
    others = [o for o in batch if o.status is not JobStatus.SUCCEEDED]
    # One NOTIFY per statement wakes pgq.wait callers; its payload is the ids' range.
    ids = [o.job.id for o in batch]
    notify = {
        "finished_channel": finished_channel(schema),
        "finished_ids": f"{min(ids)}-{max(ids)}",
    }
    statements: list[tuple[sql.SQL, dict[str, Any]]] = []
    if successes:
        params = {**_fence(successes), "results": _results(successes), **notify}
        statements.append((query("finish_succeeded_jobs", schema), params))
    if others:
        params = {**_fence(others), **_details(others), **notify}
        statements.append((query("finish_jobs", schema), params))
    return statements


def _fence(batch: list[Outcome]) -> dict[str, str]:
    """Which rows to write: each job's id and the lease token of the claim that ran it."""
    return {
        "ids": array_literal(o.job.id for o in batch),
        "lease_tokens": array_literal(o.job.lease_token for o in batch),
    }


def _results(successes: list[Outcome]) -> list[str | None] | None:
    """Each success's result as JSON text; None (one NULL array) when every one is None."""
    results = [o.result for o in successes]
    return None if results.count(None) == len(results) else results


def _details(batch: list[Outcome]) -> dict[str, Any]:
    """What finish_jobs writes beyond a success: status, delay, refund, error."""
    return {
        "statuses": array_literal(o.status.value for o in batch),
        "delays_seconds": [o.delay_seconds for o in batch],
        "refund_attempts": [o.refund_attempt for o in batch],
        "errors": [o.error for o in batch],
        "tracebacks": [o.traceback for o in batch],
    }
