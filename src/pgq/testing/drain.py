"""``drain``: run a test's due jobs through the worker's own claim and finish statements.

It claims on the test's connection, runs each handler in this thread, through
the app's and its task's middleware as a worker does (pgq.middleware), decides
each outcome as a worker does and writes it with the worker's fenced finish
statements, all inside the test's transaction: what a test drains is rolled
back with it. What it does not do: timeouts (a handler runs to its end), and
retries or snoozes (they are due later than now, and ``now()`` stands still in
a transaction).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from pgq.config import resolve_schema
from pgq.errors import ConfigError, shown
from pgq.job import ClaimedJob
from pgq.middleware import Middleware, run_async, run_sync
from pgq.queries import array_literal, query
from pgq.tasks import App, JobContext
from pgq.worker import outcome as outcomes
from pgq.worker.executor import handler_kwargs, job_context
from pgq.worker.outcome import Outcome
from pgq.worker.outcome_writer import finish_statements
from pgq.worker.producer import claimed_job

WORKER_NAME = "pgq.testing"
CLAIM_BATCH = 100


def drain(
    conn: psycopg.Connection[Any],
    app: App,
    *,
    max_jobs: int = 1_000,
    schema: str | None = None,
) -> Counter[str]:
    """Run every due job of ``app``'s tasks, in claim order, until none is due.

    Returns how many ended each way (``succeeded``, ``retried``, ``dead``,
    ``gave_up``, ``snoozed``...). Jobs enqueued by handlers run too, if due.
    At most ``max_jobs`` runs, so that a job that keeps snoozing for 0 s cannot
    loop forever.
    """
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
        raise ConfigError(f"max_jobs must be a whole number >= 1, got {shown(max_jobs)}")
    schema = resolve_schema(schema)
    params = {
        "tasks": array_literal(sorted(app.tasks)),
        "limit": CLAIM_BATCH,
        "lease_seconds": 300,
        "worker": WORKER_NAME,
    }
    counts: Counter[str] = Counter()
    while counts.total() < max_jobs:
        with conn.cursor(row_factory=tuple_row) as cursor:
            rows = cursor.execute(query("claim_jobs", schema), params).fetchall()
        if not rows:
            break
        results = [_run(app, row) for row in rows]
        with conn.cursor(row_factory=tuple_row) as cursor:
            for statement, statement_params in finish_statements(results, schema):
                cursor.execute(statement, statement_params)
        counts.update(result.kind for result in results)
    return counts


def _run(app: App, row: tuple[Any, ...]) -> Outcome:
    job, problem = claimed_job(row)
    if problem is not None:
        return outcomes.refused(job, problem)
    task = app.tasks[job.task]
    chain = app.chain(task)
    context = job_context(job, WORKER_NAME) if chain or task.wants_context else None
    kwargs = handler_kwargs(job, task, context)
    if isinstance(kwargs, Outcome):
        return kwargs
    try:
        if task.is_async:
            value = _run_coroutine(_in_task(job, chain, context, task.handler(**kwargs)))
        else:
            value = run_sync(job, chain, context, task.handler, kwargs)
    except KeyboardInterrupt:
        raise  # Ctrl-C stops the test run, as anywhere else in a test
    except BaseException as error:  # as a worker does: one job is the unit of failure
        return outcomes.decided(job, error, task.retry)
    return outcomes.decided(job, None, task.retry, outcomes.encode_result(value))


async def _in_task(
    job: ClaimedJob, chain: tuple[Middleware, ...], context: JobContext | None, call: Any
) -> Any:
    # run_async sets the job for the task it is called in: the loop's, not this thread.
    return await run_async(job, chain, context, call)


def _run_coroutine(awaitable: Awaitable[Any]) -> Any:
    """Run an async handler to its end, from sync code or from inside a running loop."""

    async def run() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    # Called from an async test: its loop is busy running the test, so use another.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()
