"""Jobs written straight into pgq.jobs, in any state, for the operations tests.

The operators' views and functions act on jobs in every state; getting a job
into a state through a real worker is slow and imprecise (when exactly did it
die?). So these tests INSERT rows as workers would have left them, with times
relative to the database's ``now()``.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[tuple[Any, ...]]

FINISHED = ("succeeded", "dead", "cancelled")
WORKER_NAME = "worker-host:4242:abcdef"


def seed_job(
    conn: Conn,
    status: str = "queued",
    *,
    task: str = "task",
    queue: str = "default",
    args: dict[str, Any] | None = None,
    due_in: float = 0.0,
    created_ago: float = 0.0,
    finished_ago: float | None = None,
    lease_in: float = 30.0,
    attempts: int | None = None,
    max_attempts: int = 5,
    last_error: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    dedupe_key: str | None = None,
    priority: int = 0,
    result: Any = None,
    progress: Any = None,
) -> int:
    """Insert one job in ``status``; returns its id. Times are seconds relative to now().

    ``due_in``: run_at = now() + due_in (negative: due since). ``finished_ago``:
    finished_at of a finished job (default 60 s ago). ``lease_in``: a running
    job's locked_until = now() + lease_in (negative: expired). A dead job gets,
    unless told otherwise, one error entry per attempt and that error as its last.
    ``result`` and ``progress``: JSON values as a handler left them (None: NULL).
    """
    running = status == "running"
    if attempts is None:
        attempts = {"running": 1, "dead": max_attempts}.get(status, 0)
    if status in FINISHED and finished_ago is None:
        finished_ago = 60.0
    if status == "dead":
        last_error = last_error or "RuntimeError: boom"
        if errors is None:
            errors = [
                {"attempt": n, "at": "2030-01-01T00:00:00+00:00", "worker": WORKER_NAME,
                 "error": last_error, "traceback": "Traceback: ..."}
                for n in range(1, attempts + 1)
            ]  # fmt: skip
    # Revision 0008's columns only when asked for: the migration tests seed older schemas.
    extra_columns = ", result, progress" if result is not None or progress is not None else ""
    extra_values = ", %(result)s, %(progress)s" if extra_columns else ""
    row = conn.execute(
        f"""
        INSERT INTO pgq.jobs (task, queue, args, status, priority, attempts, max_attempts,
                              run_at, created_at, finished_at, started_at,
                              locked_until, locked_by, lease_token, last_error, errors, dedupe_key
                              {extra_columns})
        VALUES (%(task)s, %(queue)s, %(args)s, %(status)s::pgq.job_status, %(priority)s,
                %(attempts)s, %(max_attempts)s,
                now() + %(due_in)s::float8 * interval '1 second',
                now() - %(created_ago)s::float8 * interval '1 second',
                now() - %(finished_ago)s::float8 * interval '1 second',
                CASE WHEN %(running)s THEN now() - interval '5 seconds' END,
                CASE WHEN %(running)s THEN now() + %(lease_in)s::float8 * interval '1 second' END,
                CASE WHEN %(running)s THEN %(worker)s END,
                CASE WHEN %(running)s THEN gen_random_uuid() END,
                %(last_error)s, %(errors)s, %(dedupe_key)s {extra_values})
        RETURNING id
        """,  # noqa: S608 (two constant column lists, no input)
        {
            "task": task, "queue": queue, "args": Jsonb(args or {}), "status": status,
            "priority": priority, "attempts": attempts, "max_attempts": max_attempts,
            "due_in": due_in, "created_ago": created_ago, "finished_ago": finished_ago,
            "running": running, "lease_in": lease_in, "worker": WORKER_NAME,
            "last_error": last_error, "errors": Jsonb(errors or []), "dedupe_key": dedupe_key,
            "result": None if result is None else Jsonb(result),
            "progress": None if progress is None else Jsonb(progress),
        },
    ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def fetch_job(conn: Conn, job_id: int) -> dict[str, Any]:
    """The job's row as a dict (status as text), plus the database's now() as ``db_now``."""
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            "SELECT *, status::text AS status, now() AS db_now FROM pgq.jobs WHERE id = %s",
            [job_id],
        ).fetchone()
    assert row is not None, f"job {job_id} not found"
    return row


def job_statuses(conn: Conn) -> dict[int, str]:
    """Every job's status by id."""
    rows = conn.execute("SELECT id, status::text FROM pgq.jobs").fetchall()
    return {int(job_id): str(status) for job_id, status in rows}


def job_ids(conn: Conn) -> set[int]:
    return {int(row[0]) for row in conn.execute("SELECT id FROM pgq.jobs").fetchall()}
