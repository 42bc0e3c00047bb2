"""Tasks: the app object that registers handlers, and the context a handler receives."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeAlias, Unpack, overload

from pgq.config import resolve_schema
from pgq.contrib.sqlalchemy import AsyncConnection, SyncConnection
from pgq.enqueue import EnqueueOptions, EnqueueResult, encode_value, enqueue, enqueue_async
from pgq.errors import ConfigError, GiveUp, Snooze, shown
from pgq.job import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    MAX_ATTEMPTS_LIMIT,
    MAX_DELAY_SECONDS,
    MAX_PRIORITY,
    MAX_PROGRESS_BYTES,
    QUEUE_NAME,
    TASK_NAME,
)
from pgq.retry import DEFAULT_RETRY, Retry
from pgq.schedule import Misfire, Schedule
from pgq.signature import HandlerSignature

Handler = Callable[..., Any] | Callable[..., Awaitable[Any]]


class JobControl:
    """What the worker and a running handler tell each other: stop, and how far it got.

    Shared by a handler's thread and the event loop: ``cancelled`` is a plain flag
    (the loop only ever sets it, the handler only reads it; a threading.Event per
    job cost 2 µs to make, for a wait nobody does), and ``report`` (the worker's
    progress buffer) takes JSON text.
    """

    __slots__ = ("cancelled", "report")

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.cancelled = False
        self.report = report


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler knows about the job it runs. Declare a ``ctx`` parameter to get it.

    Example::

        @app.task()
        def charge(order_id: int, ctx: pgq.JobContext) -> None:
            if ctx.attempt > 1:
                log.info("retrying order %s", order_id)
    """

    job_id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    worker: str
    enqueued_at: datetime
    control: JobControl = field(default_factory=JobControl, repr=False, compare=False)
    #: The enqueuer's W3C trace context (``traceparent``...), stored with the job
    #: when it was enqueued under pgq.contrib.otel; None otherwise.
    trace_context: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def cancel_requested(self) -> bool:
        """True once this job should stop: an operator cancelled it (``pgq cancel``), or
        this worker lost its lease. The job is no longer this handler's to finish:
        whatever it returns or raises from then on is discarded.

        An async handler is cancelled (``asyncio.CancelledError``) instead; a plain
        ``def`` handler cannot be interrupted, so it checks this between steps::

            for chunk in chunks:
                if ctx.cancel_requested:
                    return
                process(chunk)
        """
        return self.control.cancelled

    def progress(self, value: Any) -> None:
        """Record how far the job got: any JSON value up to 64 KiB, the latest one wins.

        It never waits for the database: the worker writes the latest value of each
        job in batches, within about a quarter of a second, fenced by the job's lease
        like its outcome. Read it with ``pgq.get_job``, ``pgq job ID`` or the view
        ``pgq.job_results``. A value that cannot be stored raises InvalidJobError here.
        Outside a worker (a test calling the handler) it only checks the value::

            ctx.progress({"done": 40, "total": 100})
        """
        text = encode_value(value, "progress", MAX_PROGRESS_BYTES)
        # Once the job is cancelled its row is no longer this handler's: nothing to write.
        if self.control.report is not None and not self.control.cancelled:
            self.control.report(text)

    def snooze(self, seconds: float) -> NoReturn:
        """Run this job again in ``seconds`` without using up an attempt."""
        raise Snooze(seconds)

    def give_up(self, reason: str) -> NoReturn:
        """Fail this job for good: it goes to ``dead`` now, whatever attempts remain."""
        raise GiveUp(reason)


#: Code around every run of a handler: a generator function of the job's context that
#: yields once, where the handler runs (pgq.middleware runs it; docs/howto/middleware.md).
#: Annotate one as returning ``Iterator[None]``, as for contextlib.contextmanager.
Middleware: TypeAlias = Callable[[JobContext], Iterator[None]]


def middleware_name(middleware: object) -> str:
    """How an error message names ``middleware``: its qualified name."""
    return str(getattr(middleware, "__qualname__", None) or shown(middleware))


def _check_middleware(middleware: object, where: str) -> None:
    if not inspect.isgeneratorfunction(middleware):
        raise ConfigError(
            f"{where}: middleware {middleware_name(middleware)} is not a generator function: "
            "write it as `def name(ctx): ...; result = yield; ...` (see docs/howto/middleware.md)"
        )


def _checked_middleware(middleware: Sequence[Middleware], where: str) -> tuple[Middleware, ...]:
    """``middleware`` as a tuple, or ConfigError naming the one that is not a generator function."""
    if isinstance(middleware, str) or not isinstance(middleware, Sequence):
        raise ConfigError(f"{where}: middleware must be a list, got {shown(middleware)}")
    for item in middleware:
        _check_middleware(item, where)
    return tuple(middleware)


@dataclass(frozen=True, slots=True)
class Task:
    """A registered handler and its defaults. Calling it calls the handler directly.

    Its workers store the defaults in the database at start (``pgq.task_defaults``),
    so that every way of enqueueing it, by name and from SQL too, uses them.
    """

    name: str
    handler: Handler
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_seconds: float | None = None
    retry: Retry = DEFAULT_RETRY
    is_async: bool = False
    #: The app's schema, if it names one; else PGQ_SCHEMA or "pgq".
    schema: str | None = None
    #: This task's own middleware, inside the app's (``App.chain``).
    middleware: tuple[Middleware, ...] = ()
    #: The names the handler takes, read once: every enqueue checks the args against it.
    signature: HandlerSignature = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", HandlerSignature.read(self.name, self.handler))

    @property
    def wants_context(self) -> bool:
        """The handler has a ``ctx`` parameter, which receives the JobContext."""
        return self.signature.takes_context

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

    def enqueue(
        self,
        conn: SyncConnection,
        args: Mapping[str, Any] | None = None,
        *,
        schema: str | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> EnqueueResult:
        """``pgq.enqueue`` for this task: its args are checked against the handler's."""
        return enqueue(conn, self, args, schema=schema or self.schema, **options)

    async def enqueue_async(
        self,
        conn: AsyncConnection,
        args: Mapping[str, Any] | None = None,
        *,
        schema: str | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> EnqueueResult:
        """``enqueue`` for an ``AsyncConnection``."""
        return await enqueue_async(conn, self, args, schema=schema or self.schema, **options)


class App:
    """The registry of tasks a worker can run.

    Example::

        app = pgq.App()

        @app.task(max_attempts=3, timeout=60)
        async def send_email(to: str) -> None: ...

    Run it with ``pgq work myproject.tasks:app``. The database is not part of the
    app: it comes from ``--dsn``, ``$PGQ_DSN`` or ``$DATABASE_URL`` when the worker runs.
    """

    def __init__(self, *, schema: str | None = None) -> None:
        self.schema = None if schema is None else resolve_schema(schema)
        self.tasks: dict[str, Task] = {}
        self._middleware: list[Middleware] = []
        #: Every schedule declared with ``@app.periodic`` or ``app.schedule``.
        self.schedules: list[Schedule] = []

    @overload
    def task(self, handler: Handler) -> Task: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        retry: Retry | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[Handler], Task]: ...

    def task(
        self,
        handler: Handler | None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        retry: Retry | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Task | Callable[[Handler], Task]:
        """Register a handler; usable as ``@app.task`` or ``@app.task(...)``.

        ``name`` defaults to the function's name (stable when you move the code
        between modules). ``timeout`` is in seconds. ``retry`` sets the backoff.
        ``queue``, ``priority`` and ``max_attempts`` are the defaults of every job
        of this task that does not choose its own, however it is enqueued (by
        ``Task.enqueue``, by name, or from SQL): its workers register them.
        ``middleware`` wraps this task's runs, inside the app's (see ``App.middleware``).
        """
        own_middleware: tuple[Middleware, ...] = ()
        if middleware != ():
            label = name if name is not None else getattr(handler, "__name__", "?")
            own_middleware = _checked_middleware(middleware, f"task {shown(label)}")

        def register(function: Handler) -> Task:
            if name is not None and not name:
                raise ConfigError("invalid task name '': leave name out to use the function's name")
            task = Task(
                name=function.__name__ if name is None else name,
                handler=function,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                timeout_seconds=timeout,
                retry=retry or DEFAULT_RETRY,
                is_async=inspect.iscoroutinefunction(function),
                schema=self.schema,
                middleware=own_middleware,
            )
            self._check(task)
            self.tasks[task.name] = task
            return task

        return register(handler) if handler is not None else register

    def middleware(self, function: Middleware, *, outermost: bool = False) -> Middleware:
        """Wrap every run of every task of this app with ``function``; usable as a decorator.

        ``function`` is a generator function of the job's ``JobContext`` that yields
        once, where the handler runs: ``yield`` gives back what the handler returned,
        and raises what it raised. App middleware wraps each task's own
        (``@app.task(middleware=[...])``), in the order registered, the first
        outermost; ``outermost=True`` puts it before those registered already.
        docs/howto/middleware.md has the rules (a middleware that raises fails its
        job with ``MiddlewareError``; it cannot swallow the handler's exception).

        Example::

            @app.middleware
            def tenant(ctx: pgq.JobContext) -> Iterator[None]:
                token = current_tenant.set(ctx.queue)
                try:
                    yield
                finally:
                    current_tenant.reset(token)
        """
        _check_middleware(function, "app.middleware")
        if outermost:
            self._middleware.insert(0, function)
        else:
            self._middleware.append(function)
        return function

    def chain(self, task: Task) -> tuple[Middleware, ...]:
        """The middleware around ``task``'s runs, outermost first: the app's, then its own."""
        return (*self._middleware, *task.middleware)

    def periodic(
        self,
        cron: str,
        *,
        tz: str = "UTC",
        args: Mapping[str, Any] | None = None,
        name: str | None = None,
        misfire: Misfire = "skip",
        queue: str = DEFAULT_QUEUE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> Callable[[Handler], Task]:
        """Register a task and run it at every tick of ``cron`` in time zone ``tz``.

        ``cron`` has 5 fields (minute hour day-of-month month day-of-week), or 6
        with seconds first. ``args`` are the args of every job it makes.
        ``misfire`` says what a worker does with a tick it is more than a minute
        late for (no worker ran): "skip" it, or "run_latest" (one job, however
        late). The other options are @app.task's. docs/howto/periodic.md has the rules.

        Example::

            @app.periodic("0 3 * * *", tz="Europe/Berlin")
            def nightly_report() -> None: ...
        """

        def register(function: Handler) -> Task:
            task = self.task(
                name=name, queue=queue, max_attempts=max_attempts, timeout=timeout, retry=retry
            )(function)
            try:
                self.schedule(task, cron=cron, tz=tz, args=args, misfire=misfire)
            except ConfigError:
                del self.tasks[task.name]  # a task half declared would run unscheduled
                raise
            return task

        return register

    def schedule(
        self,
        task_or_name: Task | str,
        *,
        cron: str,
        tz: str = "UTC",
        args: Mapping[str, Any] | None = None,
        misfire: Misfire = "skip",
    ) -> Schedule:
        """Add a schedule to a task registered on this app; a task may have several.

        Example::

            app.schedule(sync_account, cron="*/15 * * * *", args={"account": 42})
        """
        name = task_or_name.name if isinstance(task_or_name, Task) else task_or_name
        task = self.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            raise ConfigError(
                f"cannot schedule {shown(name)}: no such task on this app; register it with "
                "@app.task first, or declare both at once with @app.periodic"
            )
        schedule = Schedule.create(task.name, cron, tz=tz, args=args, misfire=misfire)
        problem = task.signature.problem_with(schedule.decoded_args)
        if problem is not None:
            raise ConfigError(f"schedule of task {task.name!r}: {problem}")
        if any(s.identity == schedule.identity for s in self.schedules):
            raise ConfigError(f"schedule {schedule.describe()} is declared twice")
        self.schedules.append(schedule)
        return schedule

    def _check(self, task: Task) -> None:
        if not isinstance(task.name, str) or not TASK_NAME.match(task.name):
            raise ConfigError(
                f"invalid task name {shown(task.name)}: use letters, digits, '_', '.', ':' or '-'"
            )
        if task.name in self.tasks:
            raise ConfigError(f"two handlers are registered as task {task.name!r}: pass name=")
        if not isinstance(task.queue, str) or not QUEUE_NAME.match(task.queue):
            raise ConfigError(f"task {task.name!r}: invalid queue name {shown(task.queue)}")
        if isinstance(task.priority, bool) or not (
            isinstance(task.priority, int) and 0 <= task.priority <= MAX_PRIORITY
        ):
            raise ConfigError(
                f"task {task.name!r}: priority must be an int from 0 to {MAX_PRIORITY}, "
                f"got {shown(task.priority)}"
            )
        if isinstance(task.max_attempts, bool) or not (
            isinstance(task.max_attempts, int) and 1 <= task.max_attempts <= MAX_ATTEMPTS_LIMIT
        ):
            raise ConfigError(
                f"task {task.name!r}: max_attempts must be an int >= 1 and <= {MAX_ATTEMPTS_LIMIT}"
            )
        timeout = task.timeout_seconds
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_DELAY_SECONDS
        ):
            raise ConfigError(
                f"task {task.name!r}: timeout must be > 0 seconds, got {shown(timeout)}"
            )
        if not isinstance(task.retry, Retry):
            raise ConfigError(
                f"task {task.name!r}: retry must be a pgq.Retry, got {type(task.retry).__name__}"
            )


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (like ``myproject.tasks:app``) and return the App."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"APP must look like 'package.module:app', got {spec!r}")
    if "/" in module_name or "\\" in module_name or module_name.endswith(".py"):
        # A file path, as a shell completes it: Python imports modules, not files.
        raise ConfigError(
            f"APP {spec!r} names a file: use a dotted module path, as in "
            f"'{_dotted(module_name)}:{attribute}'"
        )
    # Like uvicorn and celery: the current directory is importable.
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    module = _import_app_module(module_name, spec)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise ConfigError(_not_an_app(spec, module, attribute))
    if not app.tasks:
        raise ConfigError(f"{spec!r} has no tasks registered")
    return app


def _import_app_module(module_name: str, spec: str) -> ModuleType:
    """The module APP names, or an error that tells a wrong path from a missing dependency."""
    cannot_import = f"cannot import {module_name!r} for APP {spec!r}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name == missing or module_name.startswith(f"{missing}."):
            close = _close_module(missing)
            meant = f"; did you mean '{close}{spec[len(missing) :]}'?" if close else ""
            raise ConfigError(
                f"{cannot_import}: no module named {missing!r} in {Path.cwd()} "
                f"or the installed packages{meant}"
            ) from error
        # The path is right: the module itself imports something that is not there.
        raise ConfigError(
            f"{cannot_import}: it imports {missing!r}, which is not installed here"
        ) from error
    except (ImportError, TypeError) as error:  # TypeError: a relative name such as "..x"
        raise ConfigError(f"{cannot_import}: {error}") from error


def _close_module(missing: str) -> str | None:
    """A module named like ``missing`` (a typo: ``myproject.task``), if there is one.

    Only siblings are searched: the modules of the package that did import, or of
    the current directory for a top-level name. The installed packages would be
    slow to list, and a near name among them is rarely the one meant.
    """
    package, _, name = missing.rpartition(".")
    if package:
        places = getattr(sys.modules.get(package), "__path__", None)
        if places is None:
            return None
    else:
        places = [str(Path.cwd())]
    siblings = [module.name for module in pkgutil.iter_modules(places)]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.8)
    if not close:
        return None
    return f"{package}.{close[0]}" if package else close[0]


def _dotted(path_text: str) -> str:
    """``myproject/tasks.py`` (or its absolute path, in this directory) as ``myproject.tasks``."""
    path = Path(path_text.replace("\\", "/").removesuffix(".py"))
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return ".".join(part for part in path.parts if part not in (".", path.anchor))


def _not_an_app(spec: str, module: ModuleType, attribute: str) -> str:
    """Why ``module.attribute`` is no App, and the module's Apps to try instead."""
    if hasattr(module, attribute):
        found = type(getattr(module, attribute)).__name__
        problem = f"{spec!r} is not a pgq.App (found {found})"
    else:
        problem = f"module {module.__name__!r} has no attribute {attribute!r}"
    apps = [f"{module.__name__}:{name}" for name, value in vars(module).items()
            if isinstance(value, App)]  # fmt: skip
    if not apps:
        return f"{problem}; module {module.__name__!r} has no pgq.App at all"
    return f"{problem}; try {' or '.join(map(repr, apps))}"
