"""Inspect, wait for and repair jobs: the functions behind `pgq stats`, `pgq job`, `pgq cancel`...

Each one wraps a documented view or SQL function (migrations/versions/0002,
0003 and 0008), so the CLI, Python callers and an operator in psql all do the
same thing. ``get_job`` and ``wait`` have async twins for an AsyncConnection:
the logic is in pure steps (``_job_detail``, ``_Waiting``), the drivers are short.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import tuple_row

from pgq.config import MAX_DURATION_SECONDS, finished_channel, resolve_schema
from pgq.contrib.sqlalchemy import (
    AsyncConnection,
    SyncConnection,
    psycopg_async_connection,
    psycopg_connection,
)
from pgq.errors import InvalidJobError, JobNotFoundError, JobStateError, WaitTimeout, shown
from pgq.job import FINISHED_STATUSES, MAX_JOB_ID, JobStatus
from pgq.queries import query
from pgq.retention import PRUNE_BATCH
from pgq.schedule import DECLARE_INTERVAL_SECONDS, Schedule

REQUEUE_BATCH = 500
#: How often ``wait`` reads its job again without a notification: one can be missed
#: (a reconnect), and behind PgBouncer in transaction mode LISTEN hears nothing.
WAIT_RECHECK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    due: int
    scheduled: int
    running: int
    lease_expired: int
    lag_seconds: float


@dataclass(frozen=True, slots=True)
class QueueOverview:
    """One queue's live numbers (pgq.queue_stats) with its dead jobs (pgq.dead_jobs).

    A queue with dead jobs only has no row in queue_stats: zeros here.
    """

    queue: str
    due: int
    scheduled: int
    running: int
    lease_expired: int
    lag_seconds: float
    dead: int
    last_died_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class MinuteActivity:
    """Jobs that finished in one minute, and how long they waited from due to start.

    Read from the jobs still in the table: pruned jobs no longer count.
    """

    minute: datetime
    succeeded: int
    dead: int
    #: Mean and largest wait, due (run_at) to the start of the last attempt, in seconds.
    mean_wait_seconds: float
    max_wait_seconds: float


@dataclass(frozen=True, slots=True)
class DeadJobCount:
    """A queue's dead jobs: how many, and when the last one died."""

    queue: str
    dead: int
    last_died_at: datetime


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What a prune would delete: per status, the jobs that finished before one moment.

    ``finished_before`` is the database's ``now()`` minus the age, when counted;
    ``prune_as_planned`` deletes up to that same moment, not up to a later one.
    """

    finished_before: datetime
    jobs: dict[JobStatus, int]

    @property
    def total(self) -> int:
        return sum(self.jobs.values())


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A periodic schedule as ``pgq schedules`` shows it (the view pgq.schedule_status, and more).

    ``next_run`` is its next tick after now, and after ``ticked_through``; None if
    the cron expression never matches again or its time zone is unknown here.
    ``declared`` is False when no running worker declared it lately (removed from
    the code, or no worker is up): its ticks are not being made.
    """

    id: int
    task: str
    cron: str
    tz: str
    args: dict[str, Any] | str
    misfire: str
    ticked_through: datetime
    last_tick: datetime | None
    last_job_id: int | None
    #: None when there is no last job, or it was pruned.
    last_job_status: str | None
    declared_at: datetime
    next_run: datetime | None
    declared: bool


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: int
    queue: str
    task: str
    status: JobStatus
    priority: int
    attempts: int
    #: None: left to the task, and no worker registered it yet (the first claim decides).
    max_attempts: int | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    locked_by: str | None
    last_error: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", JobStatus(self.status))  # the database says text

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class JobDetail(JobSummary):
    """One job as ``pgq.get_job`` and ``pgq.wait`` return it.

    Example::

        job = pgq.get_job(conn, job_id)
        job.status, job.attempts, job.progress, job.result, job.errors
    """

    #: The job's args; their JSON text when Python cannot decode it (a row written
    #: past pgq's checks, with a 5,000-digit number, say).
    args: dict[str, Any] | str
    #: History, oldest first: failed attempts and operators' actions.
    errors: list[dict[str, Any]]
    locked_until: datetime | None
    dedupe_key: str | None
    #: What the handler returned, once the job succeeded (None before, or for None).
    result: Any = None
    #: The latest value a handler reported with ``ctx.progress()`` (None: none yet).
    progress: Any = None

    @property
    def finished(self) -> bool:
        """Succeeded, dead or cancelled: ``wait`` returns."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True, slots=True)
class RegisteredTask:
    """A task's defaults as its most recently started worker registered them (task_defaults)."""

    task: str
    queue: str
    priority: int
    max_attempts: int
    timeout_seconds: float | None
    retry_base_seconds: float
    retry_cap_seconds: float
    registered_by: str
    registered_at: datetime


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker seen within its lease (live_workers). ``queues`` None: every queue."""

    name: str
    host: str
    pid: int
    version: str
    queues: list[str] | None
    tasks: list[str]
    concurrency: int
    running: int
    started_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class UnservedJobs:
    """Queued jobs of one task and queue that no live worker serves (unserved_jobs)."""

    task: str
    queue: str
    due: int
    scheduled: int
    oldest_run_at: datetime


@dataclass(frozen=True, slots=True)
class DeadJob:
    """A dead job as a requeue by filter sees it."""

    id: int
    queue: str
    task: str
    attempts: int
    died_at: datetime
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DeadJobFilter:
    """Which dead jobs a bulk requeue touches; None matches anything.

    ``error_pattern`` is an ILIKE pattern on the last error: ``%timeout%``.
    """

    task: str | None = None
    queue: str | None = None
    error_pattern: str | None = None
    died_after: datetime | None = None
    died_before: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("task", "queue", "error_pattern"):
            _check_text(name, getattr(self, name))
        _check_aware("died_after", self.died_after)
        _check_aware("died_before", self.died_before)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@contextmanager
def _job_errors(job_id: int) -> Iterator[None]:
    """Turn the operator functions' SQL errors into pgq's exceptions."""
    _check_id(job_id)
    try:
        yield
    except psycopg.errors.NoDataFound:
        raise JobNotFoundError(f"no job with id {job_id}") from None
    except (psycopg.errors.ObjectNotInPrerequisiteState, psycopg.errors.UniqueViolation) as error:
        message = error.diag.message_primary or str(error)
        raise JobStateError(message.removeprefix("pgq: ")) from None


def queue_stats(conn: psycopg.Connection[Any], *, schema: str | None = None) -> list[QueueStats]:
    """Jobs due, scheduled, running and the lag of every queue with unfinished jobs."""
    rows = _fetch(conn, "read_queue_stats", schema)
    return [QueueStats(*row) for row in rows]


def dead_job_counts(
    conn: psycopg.Connection[Any], *, schema: str | None = None
) -> list[DeadJobCount]:
    """Dead jobs per queue, read along the partial index of dead jobs (not the table)."""
    return [DeadJobCount(*row) for row in _fetch(conn, "count_dead_jobs_by_queue", schema)]


def queue_overview(
    conn: psycopg.Connection[Any], *, schema: str | None = None
) -> list[QueueOverview]:
    """Every queue with unfinished or dead jobs: ``queue_stats`` and ``dead_job_counts`` joined.

    Both are read along partial indexes: cheap however many jobs succeeded.
    """
    live = {q.queue: q for q in queue_stats(conn, schema=schema)}
    dead = {d.queue: d for d in dead_job_counts(conn, schema=schema)}
    return [_overview(name, live.get(name), dead.get(name)) for name in sorted(live | dead)]


def _overview(name: str, live: QueueStats | None, dead: DeadJobCount | None) -> QueueOverview:
    return QueueOverview(
        queue=name,
        due=live.due if live else 0,
        scheduled=live.scheduled if live else 0,
        running=live.running if live else 0,
        lease_expired=live.lease_expired if live else 0,
        lag_seconds=live.lag_seconds if live else 0.0,
        dead=dead.dead if dead else 0,
        last_died_at=dead.last_died_at if dead else None,
    )


def activity(
    conn: psycopg.Connection[Any], *, minutes: int = 60, schema: str | None = None
) -> list[MinuteActivity]:
    """Per minute over the last ``minutes``, oldest first, with a row for every minute.

    Read along jobs_finished_idx: its cost is the number of jobs finished in that
    window, not the table's history.
    """
    _check_count("minutes", minutes, high=24 * 60)
    rows = _fetch(conn, "count_finished_per_minute", schema, {"minutes": minutes})
    return [MinuteActivity(*row) for row in rows]


def job_counts(
    conn: psycopg.Connection[Any], *, schema: str | None = None
) -> list[tuple[str, str, int]]:
    """(queue, status, jobs) over the whole table, finished jobs included."""
    rows = _fetch(conn, "count_jobs", schema)
    return [(str(q), str(s), int(n)) for q, s, n in rows]


def schedules(
    conn: psycopg.Connection[Any], *, schema: str | None = None, now: datetime | None = None
) -> list[ScheduleStatus]:
    """Every periodic schedule: next run, last tick and its job's status.

    Example::

        for s in pgq.admin.schedules(conn):
            print(s.task, s.cron, s.next_run, s.last_job_status)
    """
    now = now or datetime.now(UTC)
    found = []
    for row in _fetch(conn, "read_schedule_status", schema):
        id_, task, cron, tz, args_text, misfire, ticked_through, *rest = row
        last_tick, last_job_id, last_job_status, declared_at = rest
        declared = (now - declared_at).total_seconds() <= 2 * DECLARE_INTERVAL_SECONDS
        found.append(ScheduleStatus(
            id=id_, task=task, cron=cron, tz=tz, args=_decoded(args_text), misfire=misfire,
            ticked_through=ticked_through, last_tick=last_tick, last_job_id=last_job_id,
            last_job_status=last_job_status, declared_at=declared_at,
            next_run=_next_run(task, cron, tz, max(ticked_through, now)), declared=declared,
        ))  # fmt: skip
    return found


def _next_run(task: str, cron: str, tz: str, after: datetime) -> datetime | None:
    try:
        return Schedule(task, cron, tz).next_tick(after)
    except (ValueError, OSError, LookupError):  # a zone this machine's tzdata lacks
        return None


def registered_tasks(
    conn: psycopg.Connection[Any], *, schema: str | None = None
) -> list[RegisteredTask]:
    """Every task a worker registered, with the defaults its jobs get (`pgq tasks`)."""
    return [RegisteredTask(*row) for row in _fetch(conn, "list_tasks", schema)]


def live_workers(conn: psycopg.Connection[Any], *, schema: str | None = None) -> list[LiveWorker]:
    """The workers alive now, oldest first (`pgq workers`)."""
    return [LiveWorker(*row) for row in _fetch(conn, "list_live_workers", schema)]


def unserved_jobs(
    conn: psycopg.Connection[Any], *, schema: str | None = None
) -> list[UnservedJobs]:
    """Queued jobs per task and queue that no live worker serves: a typo'd task, a missing worker.

    Reads every queued job (as queue_stats does), not the finished ones.
    """
    return [UnservedJobs(*row) for row in _fetch(conn, "read_unserved_jobs", schema)]


def list_jobs(
    conn: psycopg.Connection[Any],
    *,
    status: JobStatus | str | None = None,
    queue: str | None = None,
    task: str | None = None,
    since: datetime | None = None,
    search: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
    schema: str | None = None,
) -> list[JobSummary]:
    """The newest jobs matching every filter given, newest (highest id) first.

    ``search`` matches a job's id exactly, or finds the text (case-insensitive)
    in its task, args or last error; it reads every row the other filters let
    through. ``before_id`` pages on (keyset): pass the last id of the page before.
    """
    if status is not None:
        status = _status(status)
    _check_text("queue", queue)
    _check_text("task", task)
    _check_text("search", search)
    _check_aware("since", since)
    if before_id is not None:
        _check_count("before_id", before_id, high=MAX_JOB_ID)
    _check_count("limit", limit)
    params = {
        "status": status, "queue": queue, "task": task, "since": since, "limit": limit,
        "before_id": before_id,
        "search_id": int(search) if search and search.isascii() and search.isdigit()
        and int(search) <= MAX_JOB_ID else None,
        "search_pattern": None if not search else f"%{_escape_like(search)}%",
    }  # fmt: skip
    rows = _fetch(conn, "list_jobs", schema, params)
    return [JobSummary(*row) for row in rows]


def get_job(conn: SyncConnection, job_id: int, *, schema: str | None = None) -> JobDetail:
    """One job: status, attempts, args, result, progress, error history.

    ``conn`` may be a SQLAlchemy Session or Connection (psycopg driver), as for
    enqueue. JobNotFoundError if there is none. Example::

        job = pgq.get_job(conn, 42)
        if job.status is pgq.JobStatus.SUCCEEDED:
            print(job.result)
    """
    _check_id(job_id)
    rows = _fetch(psycopg_connection(conn), "get_job", schema, {"id": job_id})
    return _job_detail(job_id, rows)


async def get_job_async(
    conn: AsyncConnection, job_id: int, *, schema: str | None = None
) -> JobDetail:
    """``get_job`` for an AsyncConnection."""
    conn = await psycopg_async_connection(conn)
    _check_id(job_id)
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query("get_job", resolve_schema(schema)), {"id": job_id})
        return _job_detail(job_id, await cursor.fetchall())


def _job_detail(job_id: int, rows: list[tuple[Any, ...]]) -> JobDetail:
    if not rows:
        raise JobNotFoundError(f"no job with id {job_id}")
    *head, args_text, errors, locked_until, dedupe_key, result, progress = rows[0]
    summary = JobSummary(*head).as_dict()
    return JobDetail(
        **summary, args=_decoded(args_text), errors=_decoded(errors), locked_until=locked_until,
        dedupe_key=dedupe_key, result=_decoded(result), progress=_decoded(progress),
    )  # fmt: skip


def _escape_like(text: str) -> str:
    """``text`` matched literally by LIKE: its wildcards and the escape character escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _decoded(text: str | None) -> Any:
    """JSON text as Python, or the text itself when Python cannot decode it."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


class _Waiting:
    """What ``wait`` and ``wait_async`` decide, apart from their I/O."""

    def __init__(self, job_id: int, timeout: float | None, schema: str | None) -> None:
        _check_id(job_id)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout <= MAX_DURATION_SECONDS
            or math.isnan(timeout)
        ):
            raise InvalidJobError(
                f"timeout must be None or seconds >= 0 (at most 100 years), got {shown(timeout)}"
            )
        self.job_id, self.timeout = job_id, timeout
        self.schema = resolve_schema(schema)
        self.channel = finished_channel(self.schema)
        self.deadline = None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def check_connection(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        # Inside a transaction, LISTEN starts only at its commit, and a job enqueued
        # in it could never be claimed: waiting would hang.
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise InvalidJobError(
                "wait() needs a connection outside a transaction: commit first "
                "(a job enqueued in an open transaction cannot run until it commits)"
            )

    def seconds_to_listen(self, job: JobDetail) -> float:
        """How long to listen before reading the job again; WaitTimeout once past the deadline."""
        if self.deadline is None:
            return WAIT_RECHECK_SECONDS
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(
                f"job {self.job_id} did not finish within {self.timeout:g}s (it is {job.status})"
            )
        return min(left, WAIT_RECHECK_SECONDS)

    def concerns(self, payload: str) -> bool:
        """Does a finished batch (``"<lowest id>-<highest id>"``) perhaps hold this job?"""
        low, _, high = payload.partition("-")
        try:
            return int(low) <= self.job_id <= int(high)
        except ValueError:
            return True  # a payload pgq did not write: read the job again


def wait(
    conn: SyncConnection,
    job_id: int,
    *,
    timeout: float | None = None,
    schema: str | None = None,
) -> JobDetail:
    """Wait until the job finished (succeeded, dead or cancelled) and return it.

    It LISTENs on the connection for finished batches and reads the job again when
    one may hold it, and at least every second whatever it hears. ``timeout`` in
    seconds (None: no limit) raises ``pgq.WaitTimeout``. The connection must not
    be inside a transaction; each read is its own. Example::

        job_id = add.enqueue(conn, {"a": 1, "b": 2}).id
        conn.commit()
        job = pgq.wait(conn, job_id, timeout=30)
        job.result  # 3
    """
    conn = psycopg_connection(conn)
    waiting = _Waiting(job_id, timeout, schema)
    waiting.check_connection(conn)
    listen = query("listen_for_finishes", waiting.schema, finished_channel=waiting.channel)
    unlisten = query("unlisten_finishes", waiting.schema, finished_channel=waiting.channel)
    with conn.transaction():
        conn.execute(listen)
    try:
        while True:
            with conn.transaction():
                job = get_job(conn, job_id, schema=waiting.schema)
            if job.finished:
                return job
            seconds = waiting.seconds_to_listen(job)
            for notify in conn.notifies(timeout=seconds):
                if notify.channel == waiting.channel and waiting.concerns(notify.payload):
                    break
    finally:
        if not conn.closed:
            with conn.transaction():
                conn.execute(unlisten)


async def wait_async(
    conn: AsyncConnection,
    job_id: int,
    *,
    timeout: float | None = None,
    schema: str | None = None,
) -> JobDetail:
    """``wait`` for an AsyncConnection."""
    conn = await psycopg_async_connection(conn)
    waiting = _Waiting(job_id, timeout, schema)
    waiting.check_connection(conn)
    listen = query("listen_for_finishes", waiting.schema, finished_channel=waiting.channel)
    unlisten = query("unlisten_finishes", waiting.schema, finished_channel=waiting.channel)
    async with conn.transaction():
        await conn.execute(listen)
    try:
        while True:
            async with conn.transaction():
                job = await get_job_async(conn, job_id, schema=waiting.schema)
            if job.finished:
                return job
            seconds = waiting.seconds_to_listen(job)
            async for notify in conn.notifies(timeout=seconds):
                if notify.channel == waiting.channel and waiting.concerns(notify.payload):
                    break
    finally:
        if not conn.closed:
            async with conn.transaction():
                await conn.execute(unlisten)


def requeue(conn: SyncConnection, job_id: int, *, schema: str | None = None) -> None:
    """Requeue one dead or cancelled job (attempts restart; error history kept).

    Raises JobStateError for a job that is queued, running or succeeded: it
    would run twice.
    """
    conn = psycopg_connection(conn)
    with _job_errors(job_id), conn.transaction():
        _fetch(conn, "requeue_job", schema, {"id": job_id})


def requeue_refusal(
    conn: psycopg.Connection[Any], job: JobDetail, *, schema: str | None = None
) -> str | None:
    """Why ``requeue`` would refuse this job, or None if it would requeue it (a dry run)."""
    if job.status not in (JobStatus.DEAD, JobStatus.CANCELLED):
        return f"it is {job.status}: only dead or cancelled jobs can be requeued"
    if job.dedupe_key is not None:
        params = {"dedupe_key": job.dedupe_key, "id": job.id}
        holder = _fetch(conn, "find_dedupe_holder", schema, params)
        if holder:
            return f"unfinished job {holder[0][0]} holds its dedupe key"
    return None


def find_dead_jobs(
    conn: psycopg.Connection[Any],
    where: DeadJobFilter,
    *,
    limit: int | None = None,
    after_id: int = 0,
    schema: str | None = None,
) -> list[DeadJob]:
    """The dead jobs ``requeue_dead`` would requeue, in id order (its dry run)."""
    _check_filter(where)
    if limit is not None:
        _check_count("limit", limit)
    _check_count("after_id", after_id, low=0, high=MAX_JOB_ID)
    params = {**where.params(), "limit": limit, "after_id": after_id}
    return [DeadJob(*row) for row in _fetch(conn, "find_dead_jobs", schema, params)]


def count_dead_jobs(
    conn: psycopg.Connection[Any], where: DeadJobFilter, *, schema: str | None = None
) -> int:
    """How many dead jobs ``requeue_dead`` would requeue (those matching ``where`` whose
    dedupe key no unfinished job holds)."""
    _check_filter(where)
    return int(_fetch(conn, "count_dead_jobs", schema, where.params())[0][0])


def requeue_dead(
    conn: psycopg.Connection[Any],
    where: DeadJobFilter,
    *,
    batch_size: int = REQUEUE_BATCH,
    on_batch: Callable[[int], None] | None = None,
    schema: str | None = None,
) -> list[int]:
    """Requeue every dead job matching ``where``, one committed page of ids at a time.

    Pages keep locks short on a large dead-letter queue and move on past jobs
    that are skipped (their dedupe key is held by an unfinished job), which stay
    dead. ``on_batch`` gets each page's size (for a progress bar). Returns the
    ids requeued.
    """
    _check_filter(where)
    _check_count("batch_size", batch_size)
    schema = resolve_schema(schema)
    requeued: list[int] = []
    after_id = 0
    while True:
        page = [job.id for job in find_dead_jobs(
            conn, where, limit=batch_size, after_id=after_id, schema=schema
        )]  # fmt: skip
        if not page:
            return requeued
        params = {**where.params(), "job_ids": page}
        with conn.transaction():
            requeued += [row[0] for row in _fetch(conn, "requeue_dead_jobs", schema, params)]
        if on_batch is not None:
            on_batch(len(page))
        after_id = page[-1]
        if len(page) < batch_size:
            return requeued


def cancel(conn: SyncConnection, job_id: int, *, schema: str | None = None) -> None:
    """Cancel a queued or running job: it is ``cancelled`` at once (committed here).

    A running job's worker hears of it within a moment (a NOTIFY; behind PgBouncer
    ``--poll-only``, at its next heartbeat): an async handler is cancelled, a sync
    one sees ``ctx.cancel_requested``, and whatever the handler returns is
    discarded. JobStateError for a finished job. Example::

        pgq.cancel(conn, 42)
    """
    conn = psycopg_connection(conn)
    with _job_errors(job_id), conn.transaction():
        _fetch(conn, "cancel_job", schema, {"id": job_id})


def retry_now(conn: SyncConnection, job_id: int, *, schema: str | None = None) -> None:
    """Make a queued job (waiting for its backoff or schedule) due now."""
    conn = psycopg_connection(conn)
    with _job_errors(job_id), conn.transaction():
        _fetch(conn, "retry_job_now", schema, {"id": job_id})


@dataclass(frozen=True, slots=True)
class QueuedJobFilter:
    """Which queued jobs a bulk cancel or retry-now touches; None matches anything."""

    task: str | None = None
    queue: str | None = None

    def __post_init__(self) -> None:
        _check_text("task", self.task)
        _check_text("queue", self.queue)

    def params(self) -> dict[str, Any]:
        return {"task": self.task, "queue": self.queue}


_Rows = list[tuple[Any, ...]]


def _requeue_ids(conn: psycopg.Connection[Any], schema: str | None, ids: list[int]) -> _Rows:
    params = {**DeadJobFilter().params(), "job_ids": ids}  # no filter but the ids
    return _fetch(conn, "requeue_dead_jobs", schema, params)


def _cancel_ids(conn: psycopg.Connection[Any], schema: str | None, ids: list[int]) -> _Rows:
    return _fetch(conn, "cancel_queued_jobs", schema, {"ids": ids})


def _retry_ids_now(conn: psycopg.Connection[Any], schema: str | None, ids: list[int]) -> _Rows:
    return _fetch(conn, "retry_queued_jobs_now", schema, {"ids": ids})


def _delete_ids(conn: psycopg.Connection[Any], schema: str | None, ids: list[int]) -> _Rows:
    return _fetch(conn, "delete_finished_jobs", schema, {"ids": ids})


#: What each bulk action by id does, and to which jobs: the statuses it applies to.
#: Ids in another status are left alone (and not returned), as are rows a worker holds
#: locked at that moment: an operator acting on a page of jobs must not wait on a claim.
_BY_ID: dict[str, tuple[tuple[JobStatus, ...], Callable[..., _Rows]]] = {
    "requeue": ((JobStatus.DEAD,), _requeue_ids),
    "cancel": ((JobStatus.QUEUED,), _cancel_ids),
    "retry_now": ((JobStatus.QUEUED,), _retry_ids_now),
    "delete": (FINISHED_STATUSES, _delete_ids),
}
BULK_ACTIONS = tuple(_BY_ID)


def bulk_statuses(action: str) -> tuple[JobStatus, ...]:
    """The statuses a bulk ``action`` applies to (``requeue``: dead; ``delete``: finished...)."""
    return _BY_ID[_bulk_action(action)][0]


def count_for_bulk(
    conn: psycopg.Connection[Any],
    action: str,
    job_ids: Iterable[int],
    *,
    schema: str | None = None,
) -> int:
    """How many of ``job_ids`` a bulk ``action`` would touch now (the confirmation's count)."""
    statuses, _ = _BY_ID[_bulk_action(action)]
    params = {"ids": _check_ids(job_ids), "statuses": [s.value for s in statuses]}
    return int(_fetch(conn, "count_jobs_in_statuses", schema, params)[0][0])


def act_on_jobs(
    conn: psycopg.Connection[Any],
    action: str,
    job_ids: Iterable[int],
    *,
    schema: str | None = None,
) -> list[int]:
    """Run a bulk ``action`` (one of BULK_ACTIONS) on ``job_ids`` in one transaction.

    Each applies only to the jobs in its statuses (``bulk_statuses``); the others
    are skipped, and so is a dead job whose dedupe key an unfinished job holds.
    Returns the ids acted on. Example::

        admin.act_on_jobs(conn, "requeue", [12, 13])  # [12, 13] if both were dead
    """
    _, run = _BY_ID[_bulk_action(action)]
    ids = _check_ids(job_ids)
    with conn.transaction():
        return sorted(int(row[0]) for row in run(conn, schema, ids))


def find_queued_jobs(
    conn: psycopg.Connection[Any],
    where: QueuedJobFilter,
    *,
    limit: int,
    after_id: int = 0,
    schema: str | None = None,
) -> list[int]:
    """One page of the ids of queued jobs matching ``where``, in id order after ``after_id``."""
    if not isinstance(where, QueuedJobFilter):
        raise InvalidJobError(f"where must be a pgq.admin.QueuedJobFilter, got {shown(where)}")
    _check_count("limit", limit)
    _check_count("after_id", after_id, low=0, high=MAX_JOB_ID)
    params = {**where.params(), "limit": limit, "after_id": after_id}
    return [int(row[0]) for row in _fetch(conn, "find_queued_jobs", schema, params)]


def act_on_queued(
    conn: psycopg.Connection[Any],
    action: str,
    where: QueuedJobFilter,
    *,
    batch_size: int = REQUEUE_BATCH,
    schema: str | None = None,
) -> list[int]:
    """Cancel or retry now (``action``) every queued job matching ``where``, a committed page
    at a time, as ``requeue_dead`` pages. Returns the ids acted on."""
    if bulk_statuses(action) != (JobStatus.QUEUED,):
        raise InvalidJobError(f"only cancel and retry_now act on queued jobs, not {action!r}")
    _check_count("batch_size", batch_size)
    done: list[int] = []
    after_id = 0
    while page := find_queued_jobs(conn, where, limit=batch_size, after_id=after_id, schema=schema):
        done += act_on_jobs(conn, action, page, schema=schema)
        after_id = page[-1]
        if len(page) < batch_size:
            break
    return done


def _bulk_action(action: object) -> str:
    if action not in _BY_ID:
        raise InvalidJobError(
            f"unknown bulk action {shown(action)}: use one of {', '.join(BULK_ACTIONS)}"
        )
    return str(action)


def _check_ids(job_ids: Iterable[int]) -> list[int]:
    if isinstance(job_ids, str | bytes):
        raise InvalidJobError(f"job ids must be a list of integers, got {shown(job_ids)}")
    try:
        ids = list(job_ids)
    except TypeError:
        raise InvalidJobError(f"job ids must be a list of integers, got {shown(job_ids)}") from None
    for job_id in ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise InvalidJobError(f"a job id is an integer, got {shown(job_id)}")
    # An id past bigint names no job: drop it rather than let PostgreSQL refuse the cast.
    return sorted({job_id for job_id in ids if 1 <= job_id <= MAX_JOB_ID})


def prune(
    conn: psycopg.Connection[Any],
    status: JobStatus | str,
    older_than_seconds: float,
    *,
    batch_size: int = PRUNE_BATCH,
    schema: str | None = None,
) -> int:
    """Delete finished jobs of ``status`` older than the age, in small committed batches."""
    status = _finished_status(status)
    _check_age(older_than_seconds)
    _check_count("batch_size", batch_size)
    params = {"status": status.value, "older_than_seconds": older_than_seconds,
              "batch_size": batch_size}  # fmt: skip
    return _in_batches(conn, batch_size, lambda: _fetch(conn, "prune_jobs", schema, params))


def plan_prune(
    conn: psycopg.Connection[Any],
    statuses: Iterable[JobStatus | str],
    older_than_seconds: float,
    *,
    schema: str | None = None,
) -> PrunePlan:
    """Count what a prune of these statuses would delete (its dry run), locking nothing.

    ``pgq prune`` shows it and asks before ``prune_as_planned`` deletes::

        plan = plan_prune(conn, ["dead"], 7 * 86400)
        plan.jobs, plan.finished_before  # {JobStatus.DEAD: 12}, datetime(...)
    """
    if isinstance(statuses, str):  # one status is not a list of its letters
        statuses = [statuses]
    try:
        given = list(statuses)
    except TypeError:
        raise InvalidJobError(
            f"statuses must be a list of finished statuses, got {shown(statuses)}"
        ) from None
    wanted = list(dict.fromkeys(_finished_status(status) for status in given))
    _check_age(older_than_seconds)
    params = {"statuses": [s.value for s in wanted], "older_than_seconds": older_than_seconds}
    rows = _fetch(conn, "count_prunable_jobs", schema, params)
    finished_before = rows[0][0] if rows else None
    if finished_before is None:
        raise InvalidJobError("say which finished statuses to prune: none were given")
    return PrunePlan(finished_before, {JobStatus(status): int(n) for _, status, n in rows})


def prune_as_planned(
    conn: psycopg.Connection[Any],
    plan: PrunePlan,
    *,
    batch_size: int = PRUNE_BATCH,
    schema: str | None = None,
) -> dict[JobStatus, int]:
    """Delete what ``plan`` counted: each status's jobs finished before its moment.

    In small committed batches, as ``prune``. Returns how many were deleted per
    status: the counts, unless jobs were requeued or pruned meanwhile.
    """
    if not isinstance(plan, PrunePlan):
        raise InvalidJobError(f"plan must be a pgq.admin.PrunePlan, got {shown(plan)}")
    _check_count("batch_size", batch_size)
    return {
        status: _prune_finished_before(conn, status, plan.finished_before, batch_size, schema)
        for status in plan.jobs
    }


def _prune_finished_before(
    conn: psycopg.Connection[Any],
    status: JobStatus,
    finished_before: datetime,
    batch_size: int,
    schema: str | None,
) -> int:
    params = {"status": status.value, "finished_before": finished_before,
              "batch_size": batch_size}  # fmt: skip
    return _in_batches(
        conn, batch_size, lambda: _fetch(conn, "prune_jobs_finished_before", schema, params)
    )


def _in_batches(
    conn: psycopg.Connection[Any], batch_size: int, delete: Callable[[], list[tuple[Any, ...]]]
) -> int:
    """Run ``delete`` (one batch) in a transaction of its own until a batch comes back short."""
    total = 0
    while True:
        with conn.transaction():
            rows = delete()
        deleted = int(rows[0][0]) if rows else 0
        total += deleted
        if deleted < batch_size:
            return total


def _fetch(
    conn: psycopg.Connection[Any], name: str, schema: str | None, params: Any = None
) -> list[tuple[Any, ...]]:
    """Run a named query on a tuple-row cursor: the caller's connection may use dict_row."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        cursor.execute(query(name, resolve_schema(schema)), params)
        return cursor.fetchall() if cursor.description else []


def _check_id(job_id: int) -> None:
    # An id that is not a bigint names no job; say so before PostgreSQL refuses the cast.
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise InvalidJobError(f"a job id is an integer, got {shown(job_id)}")
    if not 1 <= job_id <= MAX_JOB_ID:
        raise JobNotFoundError(f"no job with id {shown(job_id)}")


def _status(value: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(value)
    except Exception:  # ValueError; TypeError for an unhashable value; a repr's own error
        names = ", ".join(s.value for s in JobStatus)
        raise InvalidJobError(f"unknown status {shown(value)}: use one of {names}") from None


def _finished_status(value: JobStatus | str) -> JobStatus:
    status = _status(value)
    if status not in FINISHED_STATUSES:
        raise InvalidJobError(
            f"only finished jobs can be pruned (succeeded, dead, cancelled), not {status}"
        )
    return status


def _check_age(age: object) -> None:
    # A bool is an int to isinstance, but never an age.
    if (
        isinstance(age, bool)
        or not isinstance(age, int | float)
        or not 0 <= age <= MAX_DURATION_SECONDS
    ):
        raise InvalidJobError(
            f"the age must be >= 0 seconds and at most 100 years, got {shown(age)}"
        )


def _check_count(name: str, value: object, low: int = 1, high: int = 2**31 - 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(f"{name} must be an int from {low} to {high}, got {shown(value)}")


def _check_text(name: str, value: object) -> None:
    """None, or text PostgreSQL can take as a parameter (no NUL, no lone surrogate)."""
    if value is None:
        return
    if isinstance(value, str) and "\x00" not in value:
        try:
            value.encode()
            return
        except UnicodeEncodeError:
            pass
    raise InvalidJobError(f"{name} must be text without NUL or lone surrogates, got {shown(value)}")


def _check_aware(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise InvalidJobError(f"{name} must be a datetime, got {shown(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidJobError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _check_filter(where: DeadJobFilter) -> None:
    if not isinstance(where, DeadJobFilter):
        raise InvalidJobError(f"where must be a pgq.admin.DeadJobFilter, got {shown(where)}")
