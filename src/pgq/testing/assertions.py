"""What a test enqueued: the queued jobs matching a task, a queue and part of the args."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from pgq.admin import JobDetail, get_job
from pgq.config import resolve_schema
from pgq.queries import query
from pgq.tasks import Task


def enqueued_jobs(
    conn: psycopg.Connection[Any],
    task: str | Task | None = None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    schema: str | None = None,
) -> list[JobDetail]:
    """The queued jobs (due or not) that match every filter given, oldest first.

    ``args`` matches jobs whose args contain these keys with these values (JSON
    containment, as ``args @> ...`` in SQL): ``args={"order_id": 42}`` matches a
    job enqueued with ``{"order_id": 42, "notify": True}``.
    """
    name = task.name if isinstance(task, Task) else task
    params = {
        "task": name,
        "queue": queue,
        "args": None if args is None else json.dumps(dict(args)),
    }
    with conn.cursor(row_factory=tuple_row) as cursor:
        rows = cursor.execute(query("find_enqueued_jobs", resolve_schema(schema)), params)
        ids = [int(row[0]) for row in rows.fetchall()]
    return [get_job(conn, job_id, schema=schema) for job_id in ids]


def assert_enqueued(
    conn: psycopg.Connection[Any],
    task: str | Task,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    count: int | None = None,
    schema: str | None = None,
) -> list[JobDetail]:
    """Fail unless a queued job matches (exactly ``count`` of them, if given); return them."""
    found = enqueued_jobs(conn, task, args=args, queue=queue, schema=schema)
    if (not found and count is None) or (count is not None and len(found) != count):
        wanted = "a job" if count is None else f"{count} job(s)"
        raise AssertionError(
            f"expected {wanted} of {_described(task, args, queue)} queued, found {len(found)}"
            + _others(conn, task, schema)
        )
    return found


def refute_enqueued(
    conn: psycopg.Connection[Any],
    task: str | Task,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    schema: str | None = None,
) -> None:
    """Fail if a queued job matches."""
    found = enqueued_jobs(conn, task, args=args, queue=queue, schema=schema)
    if found:
        shown = ", ".join(f"#{job.id} args={job.args!r} queue={job.queue}" for job in found[:5])
        wanted = _described(task, args, queue)
        raise AssertionError(f"expected no job of {wanted} queued, found {len(found)}: {shown}")


def _described(task: str | Task, args: Mapping[str, Any] | None, queue: str | None) -> str:
    name = task.name if isinstance(task, Task) else task
    text = repr(name)
    if args is not None:
        text += f" with args containing {dict(args)!r}"
    if queue is not None:
        text += f" in queue {queue!r}"
    return text


def _others(conn: psycopg.Connection[Any], task: str | Task, schema: str | None) -> str:
    """What was queued for the task instead, so a failed assertion shows the near misses."""
    others = enqueued_jobs(conn, task, schema=schema)
    if not others:
        return "; no job of this task is queued"
    shown = "; ".join(f"#{job.id} args={job.args!r} queue={job.queue}" for job in others[:5])
    more = f" (and {len(others) - 5} more)" if len(others) > 5 else ""
    return f"; queued for this task: {shown}{more}"
