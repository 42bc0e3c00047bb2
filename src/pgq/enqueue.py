"""Transactional enqueue: jobs written on the caller's own connection, in its transaction.

If the caller's transaction rolls back, the job never existed; if it commits, the
job is stored and idle workers are woken at that commit. pgq never commits or
rolls back the caller's connection.

One path serves every way in (``enqueue``, ``enqueue_async``, ``Task.enqueue``,
``JobSpec`` with ``enqueue_many``): the options are declared once
(``EnqueueOptions``), one pure step validates a job and plans its statement
(``plan_job``), and the sync and async drivers only run what was planned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Final, Literal, NamedTuple, Protocol, TypedDict, Unpack, overload

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.rows import tuple_row

from pgq.config import resolve_schema, wakeup_channel
from pgq.contrib.sqlalchemy import (
    AsyncConnection,
    SyncConnection,
    psycopg_async_connection,
    psycopg_connection,
)
from pgq.errors import InvalidJobError, SchemaError, shown
from pgq.job import (
    DEFAULT_QUEUE,
    MAX_ARGS_BYTES,
    MAX_ARGS_DEPTH,
    MAX_ATTEMPTS_LIMIT,
    MAX_DEDUPE_KEY_LENGTH,
    MAX_DELAY_SECONDS,
    MAX_PRIORITY,
    QUEUE_NAME,
    RUN_AT_MAX,
    RUN_AT_MIN,
    TASK_NAME,
)
from pgq.queries import query
from pgq.signature import HandlerSignature

# enqueue_many validates and COPYs this many jobs, then moves them into the
# table in one statement: memory stays bounded for a generator of any length.
ENQUEUE_MANY_CHUNK = 10_000


class EnqueueOptions(TypedDict, total=False):
    """How to enqueue a job: the keyword arguments of every enqueue function and of ``JobSpec``.

    ``queue``, ``priority`` and ``max_attempts`` left out (or None) are the task's:
    the defaults its workers registered (``pgq.task_defaults``), else a registered
    ``pgq.Task``'s own, else ``default``, 0 and 5. ``priority``: higher runs first
    (0 to 2**31-1).
    ``run_at`` (timezone-aware) or ``delay`` (seconds or a timedelta) schedule it
    later. ``dedupe_key``: while a job with this key is queued or running,
    enqueueing another returns that job instead.
    """

    queue: str | None
    priority: int | None
    run_at: datetime | None
    delay: timedelta | float | None
    max_attempts: int | None
    dedupe_key: str | None


_OPTION_NAMES = EnqueueOptions.__optional_keys__


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What ``enqueue`` did: the job's id, and whether it was created now.

    ``created`` is False when an unfinished job already held the dedupe key:
    ``id`` is then that existing job's.
    """

    id: int
    created: bool


class TaskDefaults(Protocol):
    """What enqueue reads from a registered task (``pgq.Task``) passed instead of a name."""

    @property
    def name(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def signature(self) -> HandlerSignature: ...


@dataclass(frozen=True, slots=True, init=False)
class JobSpec:
    """One job for ``enqueue_many``: a task, its args, and ``enqueue``'s options.

    Options may be given as keywords, or as one ``options`` mapping (an
    ``EnqueueOptions``), or both. Options given as None are not kept, so
    ``JobSpec("t") == JobSpec("t", {}, queue=None)``; ``priority=0`` is kept, since a
    chosen value wins over the task's default.

    Example: ``pgq.JobSpec("resize", {"id": 7}, queue="images", delay=60)``.
    """

    task: str | TaskDefaults
    args: Mapping[str, Any]
    options: EnqueueOptions

    def __init__(
        self,
        task: str | TaskDefaults,
        args: Mapping[str, Any] | None = None,
        *,
        options: EnqueueOptions | None = None,
        **more_options: Unpack[EnqueueOptions],
    ) -> None:
        given = {**(options or {}), **more_options}
        _check_option_names(given, "JobSpec")
        chosen = {key: value for key, value in given.items() if value is not None}
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "args", {} if args is None else args)
        object.__setattr__(self, "options", chosen)


class PlannedJob(NamedTuple):
    """A validated job, ready to be bound as parameters (a tuple: cheap in bulk).

    ``queue``, ``priority`` and ``max_attempts`` are None when the caller left them
    to the task; ``declared_queue`` and ``declared_priority`` are then used if no
    worker registered the task yet (a registered Task's own, else the defaults).
    """

    task: str
    args_json: str
    queue: str | None
    priority: int | None
    run_at: datetime | None
    delay_seconds: float
    max_attempts: int | None
    dedupe_key: str | None
    declared_queue: str
    declared_priority: int

    def statement(self, schema: str) -> tuple[sql.SQL, dict[str, Any]]:
        """The single-job enqueue statement for this job, and its parameters.

        One statement either way: the task's registered defaults are read by it.
        """
        params = {
            "task": self.task,
            "args": self.args_json,
            "queue": self.queue,
            "priority": self.priority,
            "run_at": self.run_at,
            "delay_seconds": self.delay_seconds,
            "max_attempts": self.max_attempts,
            "dedupe_key": self.dedupe_key,
            "declared_queue": self.declared_queue,
            "declared_priority": self.declared_priority,
        }
        if self.dedupe_key is None:
            params["channel"] = wakeup_channel(schema)
            params["trace_context"] = None  # set by tracing (_traced), if on
            return query("insert_job", schema), params
        return query("enqueue_job", schema), params


# One encoder for every job: json.dumps() with options builds a new one per call.
# allow_nan=False: NaN and Infinity are not JSON, and jsonb refuses them.
_JSON_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


@contextmanager
def _schema_errors(schema: str | None) -> Iterator[None]:
    """A database without pgq's schema (or function) gets pgq's error, which says what to do."""
    try:
        yield
    except (
        psycopg.errors.InvalidSchemaName,
        psycopg.errors.UndefinedTable,
        psycopg.errors.UndefinedFunction,
    ) as error:
        raise SchemaError(
            f"pgq's schema {resolve_schema(schema)!r} is missing or incomplete in this database "
            f"({error.diag.message_primary}): run `pgq migrate`"
        ) from error


def encode_args(args: Mapping[str, Any] | None) -> str:
    """Job args as JSON text, or InvalidJobError naming what cannot be stored."""
    if args is None:
        return "{}"
    if type(args) is not dict and not isinstance(args, Mapping):
        raise InvalidJobError(
            f"job args must be a dict of keyword arguments, got {type(args).__name__}"
        )
    try:
        for key in args:
            # json would quietly turn 1 into "1": refuse instead.
            if type(key) is not str:
                raise InvalidJobError(f"job args keys must be strings, got {shown(key)}")
        text = _JSON_ENCODER.encode(dict(args) if type(args) is not dict else args)
        size = len(text.encode())  # a lone surrogate ("\ud800") is not UTF-8: refused here
    except InvalidJobError:
        raise
    except RecursionError:  # nested deeper than this thread's stack, so past the limit too
        raise InvalidJobError(_TOO_DEEP) from None
    except Exception as error:  # TypeError, ValueError, or a Mapping's own
        raise InvalidJobError(f"job args must be JSON-serialisable: {_reason(error)}") from None
    if size > MAX_ARGS_BYTES:
        raise InvalidJobError(
            f"job args are {size:,} bytes of JSON, over the {MAX_ARGS_BYTES:,}-byte limit: "
            "store large payloads elsewhere and pass their key"
        )
    # JSON escapes control characters, so a NUL shows up as \u0000; confirm on the
    # (rare) hit, since an escaped backslash followed by "u0000" looks the same.
    if "\\u0000" in text and _contains_nul(args):
        raise InvalidJobError("job args contain a NUL character, which jsonb cannot store")
    # A worker must be able to decode the args on its own stack. Fewer brackets than
    # the limit cannot nest that deep, so most args are never walked.
    if text.count("[") + text.count("{") >= MAX_ARGS_DEPTH and _depth(args) > MAX_ARGS_DEPTH:
        raise InvalidJobError(_TOO_DEEP)
    return text


def encode_value(value: object, what: str, max_bytes: int) -> str:
    """Any JSON value (a result, a progress report) as JSON text, or InvalidJobError.

    The rules of args, but for any value: JSON types only, at most ``max_bytes``,
    no NUL, at most MAX_ARGS_DEPTH levels (every reader decodes it on its stack).
    """
    try:
        text = _JSON_ENCODER.encode(value)
        size = len(text.encode())  # a lone surrogate ("\ud800") is not UTF-8: refused here
    except RecursionError:
        raise InvalidJobError(f"{what} nests too deep to store") from None
    except Exception as error:  # TypeError, ValueError, or an object's own
        raise InvalidJobError(f"{what} must be JSON-serialisable: {_reason(error)}") from None
    if size > max_bytes:
        raise InvalidJobError(
            f"{what} is {size:,} bytes of JSON, over the {max_bytes:,}-byte limit: "
            "store large documents elsewhere and return their key"
        )
    if "\\u0000" in text and _contains_nul(value):
        raise InvalidJobError(f"{what} contains a NUL character, which jsonb cannot store")
    if text.count("[") + text.count("{") >= MAX_ARGS_DEPTH and _depth(value) > MAX_ARGS_DEPTH:
        raise InvalidJobError(f"{what} nests more than {MAX_ARGS_DEPTH} levels deep")
    return text


_TOO_DEEP = (
    f"job args nest more than {MAX_ARGS_DEPTH} levels deep: flatten them, or store the "
    "document elsewhere and pass its key"
)


def _depth(value: object) -> int:
    """How deep ``value`` nests, itself at level 1 (iterative: any depth is safe to measure)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        deepest = max(deepest, level)
        if isinstance(item, Mapping):
            pending.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            pending.extend((child, level + 1) for child in item)
    return deepest


def _reason(error: BaseException) -> str:
    """``str(error)`` for a message; never raises."""
    try:
        return str(error) or type(error).__name__
    except Exception:
        return type(error).__name__


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    return False


# Names seen valid before: bulk enqueues repeat a handful of names many times.
_VALID_NAMES: set[tuple[str, str]] = set()


def _check_name(kind: str, value: object, pattern: re.Pattern[str], limit: int) -> str:
    # Only plain str is cached: a subclass may hash as it likes, or not at all.
    if type(value) is str and (kind, value) in _VALID_NAMES:
        return value
    if isinstance(value, str) and pattern.match(value):
        if type(value) is str and len(_VALID_NAMES) < 10_000:
            _VALID_NAMES.add((kind, value))
        return value
    raise InvalidJobError(
        f"invalid {kind} name {shown(value)}: use 1 to {limit} letters, digits, '_', '.', "
        "':' or '-'"
    )


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise InvalidJobError(f"{name} must be an int, got {shown(value)}")
    if not low <= value <= high:
        raise InvalidJobError(f"{name} must be between {low} and {high}, got {shown(value)}")
    return value


def _check_run_at(run_at: object) -> None:
    """InvalidJobError unless ``run_at`` is an aware datetime in [RUN_AT_MIN, RUN_AT_MAX)."""
    if not isinstance(run_at, datetime):
        raise InvalidJobError(f"run_at must be a datetime, got {shown(run_at)}")
    try:
        aware = run_at.utcoffset() is not None
    except Exception as error:  # a tzinfo of the caller's own that fails
        raise InvalidJobError(f"run_at's timezone failed: {_reason(error)}") from None
    if not aware:
        raise InvalidJobError(
            f"run_at must be timezone-aware, got naive {run_at.isoformat()}: "
            "use datetime.now(timezone.utc) or attach a tzinfo"
        )
    try:
        in_range = RUN_AT_MIN <= run_at < RUN_AT_MAX
    except OverflowError:  # datetime(1, 1, 1, tzinfo=UTC+14) is before year 1 in UTC
        in_range = False
    if not in_range:
        raise InvalidJobError(
            f"run_at must be from {RUN_AT_MIN:%Y-%m-%d} to before {RUN_AT_MAX:%Y-%m-%d} (UTC), "
            f"got {shown(run_at)}"
        )


def _is_utf8(text: str) -> bool:
    """False for text with a lone surrogate ("\\ud800"), which PostgreSQL cannot store."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _delay_seconds(delay: timedelta | float | None) -> float:
    if delay is None:
        return 0.0
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidJobError(
            f"delay must be a timedelta or a number of seconds, got {shown(delay)}"
        )
    if not 0 <= seconds <= MAX_DELAY_SECONDS:
        raise InvalidJobError(
            f"delay must be between 0 and {MAX_DELAY_SECONDS:g} seconds (ten years), "
            f"got {shown(delay)}"
        )
    return float(seconds)


def _check_option_names(options: Mapping[str, object], caller: str) -> None:
    # Keyword arguments typed by EnqueueOptions are checked by type checkers only:
    # refuse a misspelt one here as Python refuses one in a plain signature.
    if not options.keys() <= _OPTION_NAMES:
        unknown = sorted(options.keys() - _OPTION_NAMES)[0]
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown!r}")


def plan_job(
    task: str | TaskDefaults, args: Mapping[str, Any] | None, options: EnqueueOptions
) -> PlannedJob:
    """Validate one job and resolve its defaults; InvalidJobError names what is wrong.

    With a registered Task, the args must also fit its handler's parameters, as the
    worker will pass them (``HandlerSignature``); a task name alone cannot be checked.
    Pure: no database, no I/O. Every enqueue function goes through here.
    """
    queue = options.get("queue")
    priority = options.get("priority")
    max_attempts = options.get("max_attempts")
    signature = None  # a name alone says nothing about the handler's parameters
    declared_queue, declared_priority = DEFAULT_QUEUE, 0
    if isinstance(task, str):
        task_name = task
    elif isinstance(getattr(task, "name", None), str):
        # A registered Task: its own declaration counts until a worker registers it.
        task_name, signature = task.name, task.signature
        declared_queue, declared_priority = task.queue, task.priority
    else:
        raise InvalidJobError(
            f"task must be a task name or a registered pgq.Task, got {shown(task)}"
        )
    run_at = options.get("run_at")
    delay = options.get("delay")
    if run_at is not None:
        if delay is not None:
            raise InvalidJobError("pass run_at or delay, not both")
        _check_run_at(run_at)
    dedupe_key = options.get("dedupe_key")
    if dedupe_key is not None and not (
        isinstance(dedupe_key, str)
        and 1 <= len(dedupe_key) <= MAX_DEDUPE_KEY_LENGTH
        and "\x00" not in dedupe_key
        and _is_utf8(dedupe_key)
    ):
        raise InvalidJobError(
            f"dedupe_key must be a string of 1 to {MAX_DEDUPE_KEY_LENGTH} characters "
            f"without NUL or lone surrogates, got {shown(dedupe_key)}"
        )
    planned = PlannedJob(
        _check_name("task", task_name, TASK_NAME, 200),
        encode_args(args),
        None if queue is None else _check_name("queue", queue, QUEUE_NAME, 128),
        None if priority is None else _check_int("priority", priority, 0, MAX_PRIORITY),
        run_at,
        _delay_seconds(delay),
        None
        if max_attempts is None
        else _check_int("max_attempts", max_attempts, 1, MAX_ATTEMPTS_LIMIT),
        dedupe_key,
        declared_queue,
        declared_priority,
    )
    # After encode_args: args are now known to be a mapping with str keys.
    if signature is not None and (problem := signature.problem_with(args or {})) is not None:
        raise InvalidJobError(problem)
    return planned


def _plan_enqueue(
    task: str | TaskDefaults,
    args: Mapping[str, Any] | None,
    options: EnqueueOptions,
    schema: str | None,
    caller: str,
) -> tuple[sql.SQL, dict[str, Any]]:
    _check_option_names(options, caller)
    return plan_job(task, args, options).statement(resolve_schema(schema))


class TracedEnqueue(Protocol):
    """One single enqueue, traced: its span is current until ``end``."""

    #: The trace context to store with the job (JSON text), or None.
    trace_context: str | None

    def end(self, result: EnqueueResult | None, error: BaseException | None) -> None: ...


class EnqueueTracing(Protocol):
    """What pgq.contrib.otel plugs in (``set_tracing``) to trace each single enqueue."""

    def start(self, task: str, queue: str) -> TracedEnqueue: ...


# None (the default): enqueue does not trace, and pays one check for it.
_tracing: EnqueueTracing | None = None


def set_tracing(tracing: EnqueueTracing | None) -> None:
    """Trace every ``enqueue`` and ``enqueue_async`` in this process with ``tracing``.

    Only a job without a dedupe key stores its trace context: the dedupe path runs
    the SQL function ``enqueue()``, whose signature is public and has no place for it.
    """
    global _tracing
    _tracing = tracing


def _traced(params: dict[str, Any]) -> TracedEnqueue | None:
    """Start tracing this enqueue, if tracing is on, and put its context in ``params``."""
    if _tracing is None:
        return None
    traced = _tracing.start(params["task"], params["queue"] or params["declared_queue"])
    if "trace_context" in params:  # insert_job's: enqueue_job has no place for it
        params["trace_context"] = traced.trace_context
    return traced


def _result(row: tuple[Any, ...] | None) -> EnqueueResult:
    assert row is not None, "pgq.enqueue() always returns a row"
    return EnqueueResult(id=int(row[0]), created=bool(row[1]))


def enqueue(
    conn: SyncConnection,
    task: str | TaskDefaults,
    args: Mapping[str, Any] | None = None,
    *,
    schema: str | None = None,
    **options: Unpack[EnqueueOptions],
) -> EnqueueResult:
    """Enqueue one job in ``conn``'s current transaction; never commits.

    ``task`` is a task name, or a registered ``pgq.Task`` (whose handler then
    checks the args). Options left out are the task's defaults, as its workers
    registered them (see ``EnqueueOptions``). The options (``queue``, ``priority``,
    ``run_at`` or ``delay``, ``max_attempts``, ``dedupe_key``) are described
    under ``EnqueueOptions``.

    Example::

        with conn.transaction():
            conn.execute("INSERT INTO orders (id) VALUES (%s)", [order_id])
            pgq.enqueue(conn, "send_confirmation", {"order_id": order_id})
    """
    statement, params = _plan_enqueue(task, args, options, schema, "enqueue")
    traced = _traced(params)
    try:
        # A cursor of our own: the caller's connection may use dict_row or another factory.
        with (
            _schema_errors(schema),
            psycopg_connection(conn).cursor(row_factory=tuple_row) as cursor,
        ):
            result = _result(cursor.execute(statement, params).fetchone())
    except BaseException as error:
        if traced is not None:
            traced.end(None, error)
        raise
    if traced is not None:
        traced.end(result, None)
    return result


async def enqueue_async(
    conn: AsyncConnection,
    task: str | TaskDefaults,
    args: Mapping[str, Any] | None = None,
    *,
    schema: str | None = None,
    **options: Unpack[EnqueueOptions],
) -> EnqueueResult:
    """``enqueue`` for an ``AsyncConnection``: same arguments, same contract."""
    statement, params = _plan_enqueue(task, args, options, schema, "enqueue_async")
    aconn = await psycopg_async_connection(conn)
    traced = _traced(params)
    try:
        with _schema_errors(schema):
            async with aconn.cursor(row_factory=tuple_row) as cursor:
                await cursor.execute(statement, params)
                result = _result(await cursor.fetchone())
    except BaseException as error:
        if traced is not None:
            traced.end(None, error)
        raise
    if traced is not None:
        traced.end(result, None)
    return result


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One chunk of an enqueue_many: COPY its rows, then run ``move`` (if any)."""

    copy: sql.SQL
    rows: Iterable[tuple[Any, ...]]
    #: Moves the staged rows into jobs; None when the COPY wrote into jobs itself.
    move: sql.SQL | None


class _BulkEnqueue:
    """Everything enqueue_many does but talk to the database, for both drivers.

    Validates jobs a chunk at a time (all of them or none are written: the
    drivers run the chunks in one savepoint), resolves the options they leave to
    their task from the registry read once per call (``registered``), chooses
    each chunk's path, and counts what was created.
    """

    def __init__(self, jobs: Iterable[JobSpec], schema: str | None, return_ids: bool) -> None:
        self.schema = resolve_schema(schema)
        self.return_ids = return_ids
        self.ids: list[int] = []
        self.created = 0
        self.queues: set[str] = set()
        self._jobs = jobs
        #: task name -> (queue, priority), as registered in task_defaults.
        self._registered: dict[str, tuple[str, int]] = {}

    def read_registered(self) -> sql.SQL:
        """The statement that reads the registered queue and priority of every task."""
        return query("read_task_queues", self.schema)

    def registered(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Keep what read_registered read, for the chunks to come."""
        self._registered = {name: (queue, priority) for name, queue, priority in rows}

    def staging(self, autocommit: bool) -> tuple[sql.SQL | None, sql.SQL | None]:
        """Where the staging table is created: (before the savepoint, inside it).

        Outside autocommit, before: that statement opens the caller's transaction if
        none is open yet, so that conn.transaction() is a savepoint (on an idle
        connection it would BEGIN and COMMIT a transaction of its own, behind the
        caller's back). In autocommit, inside: the table then exists in the same
        transaction as the COPY, as PgBouncer in transaction mode needs (the next
        transaction may be served by another server connection).
        """
        create = query("create_enqueue_staging", self.schema)
        return (create, None) if not autocommit else (None, create)

    def chunks(self) -> Iterator[_Chunk]:
        planned = map(self._resolve, map(_plan_spec, self._jobs))
        while chunk := list(islice(planned, ENQUEUE_MANY_CHUNK)):
            self.queues.update(job[_QUEUE] for job in chunk)
            if not self.return_ids and _copies_straight(chunk):
                self.created += len(chunk)
                yield _Chunk(query("copy_to_jobs", self.schema), map(_straight_row, chunk), None)
            else:
                staging = query("copy_to_enqueue_staging", self.schema)
                yield _Chunk(staging, chunk, query("enqueue_staged_jobs", self.schema))

    def _resolve(self, job: PlannedJob) -> _StagedRow:
        """The job as the staging table's row: options it left out resolved, and marked."""
        queue, priority = job.queue, job.priority
        if queue is None or priority is None:
            declared = (job.declared_queue, job.declared_priority)
            default_queue, default_priority = self._registered.get(job.task, declared)
            queue = default_queue if queue is None else queue
            priority = default_priority if priority is None else priority
        return (
            job.task, job.args_json, queue, priority, job.run_at, job.delay_seconds,
            job.max_attempts, job.dedupe_key, job.queue is None, job.priority is None,
        )  # fmt: skip

    def moved(self, created: list[tuple[Any, ...]] | int) -> None:
        """Record what a chunk's move created: its rows (ids wanted) or their count."""
        if isinstance(created, int):
            self.created += created
        else:
            self.ids.extend(row[0] for row in created)

    def notify(self) -> tuple[sql.SQL, dict[str, Any]] | None:
        """One wake-up per queue written to, sent at commit; None if nothing was."""
        if not self.queues:
            return None
        params = {"channel": wakeup_channel(self.schema), "queues": sorted(self.queues)}
        return query("notify_queues", self.schema), params

    def result(self) -> list[int] | int:
        return self.ids if self.return_ids else self.created


def _plan_spec(spec: JobSpec) -> PlannedJob:
    if not isinstance(spec, JobSpec):
        raise InvalidJobError(f"enqueue_many takes JobSpec items, got {type(spec).__name__}")
    return plan_job(spec.task, spec.args, spec.options)


#: A job as the staging table's columns, in order (create_enqueue_staging).
_StagedRow = tuple[str, str, str, int, datetime | None, float, int | None, str | None, bool, bool]
_QUEUE: Final = 2
_RUN_AT: Final = 4
_DELAY: Final = 5
_DEDUPE_KEY: Final = 7


def _copies_straight(chunk: list[_StagedRow]) -> bool:
    """Can this chunk be COPYed into jobs as it is (no ids wanted)?

    A dedupe key needs ON CONFLICT, and a delay needs the server's clock: both
    go through the staging table. So do explicit run_at values, to keep one
    column list (PostgreSQL 15's COPY has no per-row DEFAULT).
    """
    return all(
        job[_DEDUPE_KEY] is None and job[_RUN_AT] is None and job[_DELAY] == 0 for job in chunk
    )


def _straight_row(job: _StagedRow) -> tuple[Any, ...]:
    """The columns copy_to_jobs writes."""
    task, args_json, queue, priority, _, _, max_attempts, _, queue_from, priority_from = job
    return (task, args_json, queue, priority, max_attempts, queue_from, priority_from)


@overload
def enqueue_many(
    conn: SyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: Literal[True] = True,
) -> list[int]: ...
@overload
def enqueue_many(
    conn: SyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: Literal[False],
) -> int: ...
@overload
def enqueue_many(
    conn: SyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: bool,
) -> list[int] | int: ...
def enqueue_many(
    conn: SyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: bool = True,
) -> list[int] | int:
    """Enqueue many jobs in ``conn``'s current transaction; never commits.

    Jobs are validated, streamed with COPY into a session-local staging table, and
    moved into the jobs table in chunks, so ``jobs`` may be a generator of any
    length. Returns the ids of the jobs created; a job whose dedupe key is held by
    an unfinished job is skipped. Workers get one wake-up per queue, not per job.

    ``return_ids=False`` returns how many jobs were created instead, and keeps no
    list: memory stays flat however many jobs stream through. Chunks without
    dedupe keys, ``run_at`` or ``delay`` are then COPYed straight into the jobs
    table, with no staging: the server stores each chunk while the next one is
    encoded (about 40 % faster, measured in docs/benchmarks.md).

    All or nothing: if any job is invalid, InvalidJobError is raised and none of
    this call's jobs is written (the caller's own earlier writes stay). On an
    autocommit connection the call is one transaction of its own.

    Example::

        with conn.transaction():
            pgq.enqueue_many(conn, (pgq.JobSpec("resize", {"id": i}) for i in ids))
    """
    bulk = _BulkEnqueue(jobs, schema, return_ids)
    pconn = psycopg_connection(conn)
    before, inside = bulk.staging(pconn.autocommit)
    with _schema_errors(schema), pconn.cursor(row_factory=tuple_row) as cursor:
        if before is not None:
            cursor.execute(before)
        with pconn.transaction():
            if inside is not None:
                cursor.execute(inside)
            bulk.registered(cursor.execute(bulk.read_registered()).fetchall())
            for chunk in bulk.chunks():
                with cursor.copy(chunk.copy) as copy:
                    for row in chunk.rows:
                        copy.write_row(row)
                if chunk.move is not None:
                    cursor.execute(chunk.move)
                    bulk.moved(cursor.fetchall() if return_ids else cursor.rowcount)
            if (notify := bulk.notify()) is not None:
                cursor.execute(*notify)
    return bulk.result()


@overload
async def enqueue_many_async(
    conn: AsyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: Literal[True] = True,
) -> list[int]: ...
@overload
async def enqueue_many_async(
    conn: AsyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: Literal[False],
) -> int: ...
@overload
async def enqueue_many_async(
    conn: AsyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: bool,
) -> list[int] | int: ...
async def enqueue_many_async(
    conn: AsyncConnection,
    jobs: Iterable[JobSpec],
    *,
    schema: str | None = None,
    return_ids: bool = True,
) -> list[int] | int:
    """``enqueue_many`` for an ``AsyncConnection``: the same steps, awaited."""
    bulk = _BulkEnqueue(jobs, schema, return_ids)
    aconn = await psycopg_async_connection(conn)
    before, inside = bulk.staging(aconn.autocommit)
    with _schema_errors(schema):
        async with aconn.cursor(row_factory=tuple_row) as cursor:
            if before is not None:
                await cursor.execute(before)
            async with aconn.transaction():
                if inside is not None:
                    await cursor.execute(inside)
                await cursor.execute(bulk.read_registered())
                bulk.registered(await cursor.fetchall())
                for chunk in bulk.chunks():
                    async with cursor.copy(chunk.copy) as copy:
                        for row in chunk.rows:
                            await copy.write_row(row)
                    if chunk.move is not None:
                        await cursor.execute(chunk.move)
                        bulk.moved(await cursor.fetchall() if return_ids else cursor.rowcount)
                if (notify := bulk.notify()) is not None:
                    await cursor.execute(*notify)
    return bulk.result()
