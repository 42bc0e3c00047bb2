"""The producer: the claim loop. It claims due jobs for the executor's free slots and prefetch.

A claim fills the free slots and the prefetch (pgq.worker.prefetch) in one
round trip, and waits until half a prefetch's worth of room is free, so that
under load each claim carries many jobs; with ``queues`` each queue is claimed
within its own limit (no prefetch past it), in a rotating order so that no
queue always goes first. The loop sleeps until a wake-up (an enqueue's NOTIFY,
a job finishing while more are due, a short retry coming due) or the poll
interval, and backs off while the database is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import sql

from pgq.connection import DATABASE_DOWN, Backoff
from pgq.job import ClaimedJob
from pgq.queries import array_literal, query
from pgq.worker.executor import Executor
from pgq.worker.outcome import describe_error
from pgq.worker.outcome_writer import OutcomeWriter
from pgq.worker.settings import WorkerSettings
from pgq.worker.stats import WorkerStats

log = logging.getLogger("pgq.worker")


def claimed_job(row: tuple[Any, ...]) -> tuple[ClaimedJob, str | None]:
    """A claim_jobs row as a ClaimedJob, and why it cannot run (None: it can).

    Args arrive as JSON text (see claim_jobs). Text that Python cannot decode (a
    number of 5,000 digits, 3,000 levels of nesting: jsonb holds both, and a row
    written straight into the table skips pgq's checks) makes one job dead, never
    the claim of its batch or the worker.
    """
    job_id, queue, task, args_json, attempt, max_attempts, lease_token, created_at, trace = row
    try:
        args, problem = json.loads(args_json), None
    except (ValueError, RecursionError) as error:
        args, problem = {}, f"its args cannot be decoded by Python: {describe_error(error)}"
    job = ClaimedJob(
        job_id, queue, task, args, attempt, max_attempts, lease_token, created_at, trace
    )
    return job, problem


def _hint(error: psycopg.Error) -> str:
    """What to do about a claim error that only a misconfiguration explains ("" if none)."""
    # A statement prepared on one claim and gone at the next: the connection is
    # pooled per transaction, and only --poll-only prepares nothing.
    if isinstance(error, psycopg.errors.InvalidSqlStatementName):
        return " (behind PgBouncer in transaction mode? start the worker with --poll-only)"
    return ""


def weighted_shares(capacity: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``capacity`` split in proportion to ``weights``, in whole jobs that add up to it.

    The largest remainders get the jobs that rounding down leaves over, so no queue
    is favoured by rounding; and every queue gets at least one, so none starves
    while its weight is small against the capacity.
    """
    total = sum(weights.values())
    exact = {queue: capacity * weight / total for queue, weight in weights.items()}
    shares = {queue: math.floor(value) for queue, value in exact.items()}
    by_remainder = sorted(exact, key=lambda queue: shares[queue] - exact[queue])
    for queue in by_remainder[: capacity - sum(shares.values())]:
        shares[queue] += 1
    for queue in shares:
        if shares[queue] == 0:
            shares[queue] = 1
            largest = max(shares, key=shares.__getitem__)
            if shares[largest] > 1:
                shares[largest] -= 1
    return shares


class Producer:
    """Claims jobs for the executor until ``stop()``."""

    def __init__(
        self,
        settings: WorkerSettings,
        task_names: list[str],
        executor: Executor,
        stats: WorkerStats,
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.stats = stats
        self.stopping = False
        self._tasks_literal = array_literal(task_names)
        self._wakeup = asyncio.Event()
        self._backlog = True  # the last claim filled its batch: more may be due
        self._writer: OutcomeWriter | None = None  # while running
        self._claim_rounds = 0

    # -- wake-ups ----------------------------------------------------------------

    def wake(self) -> None:
        """Claim now rather than at the next poll (slots held by unwritten outcomes are free)."""
        self._wakeup.set()

    def wake_for_due_job(self) -> None:
        """A job is due (enqueued, or a short retry): claim even after a short claim."""
        self._backlog = True
        self._wakeup.set()

    def job_done(self) -> None:
        """A job left its slot: claim again if the last claim suggested more are due."""
        if self._backlog and self._claim_size() > 0:
            self._wakeup.set()

    def serves(self, queue: str) -> bool:
        return self.settings.queues is None or queue in self.settings.queues

    def stop(self) -> None:
        """Stop claiming; the loop returns at its next turn."""
        self.stopping = True
        self._wakeup.set()

    # -- the loop ----------------------------------------------------------------

    async def run(self, pool: psycopg_pool.AsyncConnectionPool[Any], writer: OutcomeWriter) -> None:
        """Claim until ``stop()``; outcomes waiting in ``writer`` still hold their slots."""
        self._writer = writer
        backoff = Backoff()
        while not self.stopping:
            self.executor.shed()
            try:
                more_due = await self._claim(pool, writer)
                if backoff.succeeded():
                    log.info("database reachable again; claiming resumed")
            except DATABASE_DOWN as error:
                with contextlib.suppress(Exception):
                    await pool.check()  # drop every connection the server closed
                delay = backoff.failed(at_once=True)
                log.warning(
                    "claim failed, database unreachable (%s); retrying in %.1fs", error, delay
                )
                await self._sleep_unless_stopping(delay)
                continue
            except psycopg.Error as error:
                # Not an outage (a dropped table, a revoked grant): say so loudly,
                # but stay alive for when an operator fixes it.
                delay = backoff.failed()
                log.error("claim failed: %s; retrying in %.1fs%s", error, delay, _hint(error))
                await self._sleep_unless_stopping(delay)
                continue
            if more_due and self._claim_size() > 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.settings.poll_seconds)
            self._wakeup.clear()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        # Only a stop cuts a backoff short: job wake-ups (a handler ending, a short
        # retry coming due) would turn it into a retry storm, each failure doubling
        # the next delay, up to the 10 s cap within a second.
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.1))

    # -- capacity ----------------------------------------------------------------

    def free_slots(self) -> int:
        """Jobs this worker may claim now: free slots, plus the prefetch."""
        writer = self._writer
        assert writer is not None
        # Outcomes not yet written still hold their leases. Past one claim's worth,
        # claim no more: a worker whose writes stall (outage, deadlock retry) would
        # otherwise keep claiming, and hold thousands of leases for a concurrency of 4.
        held = self.settings.concurrency + self.executor.extra()
        unwritten = len(writer.pending) + writer.in_flight
        return held - self.executor.busy() - max(0, unwritten - held)

    def _claim_size(self) -> int:
        """How many to claim now: 0 until half a prefetch's worth of room is free."""
        if self._writer is None:
            return 0
        free = self.free_slots()
        return free if free >= max(1, self.executor.extra() // 2) else 0

    def _queue_room(self, queue: str, limit: int | None) -> int:
        free = self.free_slots()
        if limit is None:
            return free
        return min(free, limit - self.executor.running_in(queue))

    # -- claiming ----------------------------------------------------------------

    async def _claim(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], writer: OutcomeWriter
    ) -> bool:
        """Claim into free slots; True if some queue filled its batch (more may be due)."""
        size = self._claim_size()
        if size <= 0:
            return self._backlog
        settings = self.settings
        params: dict[str, Any] = {
            "tasks": self._tasks_literal,
            "lease_seconds": settings.lease_seconds,
            "worker": settings.name,
        }
        more_due = False
        async with pool.connection() as conn:
            if settings.queues is None:
                params["limit"] = size
                claim = query("claim_jobs", settings.schema)
                more_due = await self._claim_batch(conn, claim, params) == size
            else:
                more_due = await self._claim_queues(conn, params)
        self._backlog = more_due
        return more_due

    async def _claim_queues(
        self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any]
    ) -> bool:
        """Claim from each served queue in turn; True if some queue filled its batch.

        Room is recomputed after each queue's claim, so all queues together never
        exceed the total. Unweighted queues take turns going first. Weighted ones,
        lightest first, claim up to their share of what this worker may hold
        (counting what it holds of each), then, if a queue had fewer due jobs than its share, the
        rest goes to the others, heaviest first: no capacity idles while jobs wait,
        and a light queue's share is never taken from it. In strict order, a queue
        is claimed from only when those before it had no more due jobs.
        """
        queues = self.settings.queues
        assert queues is not None
        claim = query("claim_jobs_from_queue", self.settings.schema)
        order = list(queues.items())
        weights = self.settings.queue_weights
        shares: dict[str, int] = {}
        if weights is None and not self.settings.strict_queue_order:
            shift = self._claim_rounds % len(order)
            self._claim_rounds += 1
            order = order[shift:] + order[:shift]
        elif weights is not None:
            held = Counter(run.job.queue for run in self.executor.running.values())
            capacity = self.settings.concurrency + self.executor.extra()
            for queue, share in weighted_shares(capacity, weights).items():
                shares[queue] = share - held[queue]
            # Lightest first: a heavy queue claiming first could take a light one's
            # single slot while the free room is smaller than the capacity.
            order.sort(key=lambda item: weights[item[0]])
        more_due = short = False
        for queue, limit in order:
            room = self._queue_room(queue, limit)
            if queue in shares:
                room = min(room, shares[queue])
            if room <= 0:
                continue
            claimed = await self._claim_batch(
                conn, claim, {**params, "queue": queue, "limit": room}
            )
            more_due = more_due or claimed == room
            short = short or claimed < room
            if self.settings.strict_queue_order and claimed == room:
                break  # the queues after this one wait until it runs dry
        if weights is not None and short:
            heaviest_first = sorted(order, key=lambda item: -weights[item[0]])
            for queue, limit in heaviest_first:
                room = self._queue_room(queue, limit)
                if room > 0:
                    claimed = await self._claim_batch(
                        conn, claim, {**params, "queue": queue, "limit": room}
                    )
                    more_due = more_due or claimed == room
        return more_due

    async def _claim_batch(
        self, conn: psycopg.AsyncConnection[Any], claim: sql.SQL, params: dict[str, Any]
    ) -> int:
        """Run one claim statement and start its jobs; how many it claimed."""
        cursor = await conn.execute(claim, params)
        claimed = [claimed_job(row) for row in await cursor.fetchall()]
        self.stats.claimed([job for job, _ in claimed])
        for job, problem in claimed:
            if problem is None:
                self.executor.start(job)
            else:
                self.executor.refuse(job, problem)
        return len(claimed)
