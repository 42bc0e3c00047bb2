"""`pgq work`: run a worker in this process, or N of them under a supervisor.

With ``--processes N`` the supervisor starts N children with ``pgq work-child``
(hidden), each finding its settings, already checked here, in its environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated

import psycopg
import typer

from pgq.cli_shared import Commands, DsnOption, SchemaOption, fail
from pgq.config import describe_dsn, parse_duration, resolve_dsn
from pgq.errors import ConfigError, PgqError
from pgq.job import QUEUE_NAME
from pgq.logs import LOG_FORMATS, LOG_LEVELS, configure_logging, plural
from pgq.retention import Retention

if TYPE_CHECKING:
    from pgq.worker import Worker

work_commands = Commands()

MAX_PROCESSES = 256
ASCII_SPACE = " \t\n\r\f\v"
# Where a `--processes` child finds what to run: a ChildSpec as JSON.
CHILD_SPEC_ENV_VAR = "PGQ_WORKER_CHILD"


def parse_retention(value: str, option: str) -> float | None:
    """``"forever"`` (keep) or a duration in seconds."""
    if value.strip().lower() == "forever":
        return None
    try:
        return parse_duration(value)
    except ConfigError as error:
        raise ConfigError(f"{option}: {error}, or 'forever'") from None


def parse_queues(values: list[str] | None) -> dict[str, int | None] | None:
    """``["default", "emails=5"]`` (or comma-separated) to ``{"default": None, "emails": 5}``."""
    if not values:
        return None
    queues: dict[str, int | None] = {}
    for value in values:
        for item in filter(None, (part.strip(ASCII_SPACE) for part in value.split(","))):
            name, sep, limit = item.partition("=")
            name = name.strip(ASCII_SPACE)  # "emails = 5" is "emails"; int() trims the limit
            if not QUEUE_NAME.match(name):
                raise ConfigError(
                    f"--queues {item!r}: invalid queue name {name!r}: use 1 to 128 letters, "
                    "digits, '_', '.', ':' or '-'"
                )
            if name in queues:
                raise ConfigError(f"--queues names {name!r} twice: name each queue once")
            if not sep:
                queues[name] = None
                continue
            try:
                queues[name] = int(limit)
            except ValueError:
                raise ConfigError(
                    f"--queues {item!r}: the concurrency after '=' must be an integer"
                ) from None
    if not queues:
        raise ConfigError("--queues names no queue: leave it out to serve every queue")
    return queues


def parse_queue_weights(values: list[str] | None) -> dict[str, int] | None:
    """``["critical=6,default=3"]`` to ``{"critical": 6, "default": 3}``."""
    if not values:
        return None
    weights: dict[str, int] = {}
    for value in values:
        for item in filter(None, (part.strip(ASCII_SPACE) for part in value.split(","))):
            name, _, weight = item.partition("=")
            name = name.strip(ASCII_SPACE)
            if name in weights:
                raise ConfigError(f"--queue-weights names {name!r} twice: weigh each queue once")
            try:
                weights[name] = int(weight)
            except ValueError:
                raise ConfigError(
                    f"--queue-weights {item!r}: write QUEUE=W with a whole weight, e.g. low=1"
                ) from None
    return weights


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What one `--processes` child runs: the app, the checked settings, how to log."""

    app_path: str
    settings_json: str
    log_level: str
    log_format: str

    def environment(self, dsn: str) -> dict[str, str]:
        """This process's environment plus the spec (which holds the DSN: never in argv).

        PGQ_DSN is set too, as a single ``pgq work`` finds it, for handlers that read it.
        """
        return {**os.environ, "PGQ_DSN": dsn, CHILD_SPEC_ENV_VAR: json.dumps(asdict(self))}

    @classmethod
    def from_environment(cls) -> ChildSpec:
        text = os.environ.get(CHILD_SPEC_ENV_VAR)
        if not text:
            raise ConfigError(f"${CHILD_SPEC_ENV_VAR} is not set: run `pgq work --processes N`")
        return cls(**json.loads(text))


@work_commands.command()
def work(
    app_path: Annotated[
        str, typer.Argument(metavar="APP", help="Your pgq.App, as 'package.module:app'.")
    ],
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queues",
            "-q",
            metavar="QUEUE[=N]",
            help="Queues to serve; with =N, at most N of a queue's jobs run at once. "
            "Repeat or separate with commas. Default: all queues.",
        ),
    ] = None,
    queue_weights: Annotated[
        list[str] | None,
        typer.Option(
            "--queue-weights",
            metavar="QUEUE=W",
            help="Share the capacity among queues that all have jobs, by weight "
            "(critical=6,default=3,low=1); a served queue left out weighs 1.",
        ),
    ] = None,
    strict_queue_order: Annotated[
        bool,
        typer.Option(
            "--strict-queue-order",
            help="Take a queue only when those listed before it in --queues have no due job.",
        ),
    ] = False,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-c", metavar="N", help="Jobs run at once per process."),
    ] = 10,
    processes: Annotated[
        int,
        typer.Option(
            "--processes", "-p", metavar="N", help="Worker processes under one supervisor."
        ),
    ] = 1,
    poll_seconds: Annotated[
        float, typer.Option(metavar="SECONDS", help="Poll interval when no wake-up arrives.")
    ] = 1.0,
    lease_seconds: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="How long a claim holds a job without a heartbeat."),
    ] = 30.0,
    poll_only: Annotated[
        bool,
        typer.Option(
            "--poll-only", help="No LISTEN and no prepared statements (PgBouncer transaction mode)."
        ),
    ] = False,
    shutdown_grace_seconds: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="On SIGTERM, how long running jobs may take before they are handed back.",
        ),
    ] = 30.0,
    synchronous_commit: Annotated[
        bool,
        typer.Option(
            "--synchronous-commit",
            help="Wait for the WAL flush on every claim and outcome write. Off by default: "
            "after a database crash a lost write only re-runs a job.",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            help="Serve Prometheus metrics on /metrics and a health check on /health.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(metavar="HOST", help="Address for the metrics server; 0.0.0.0 exposes it."),
    ] = "127.0.0.1",
    keep_succeeded: Annotated[
        str,
        typer.Option(
            metavar="AGE", help="Prune succeeded jobs older than this (7d, 12h...) or 'forever'."
        ),
    ] = "1d",
    keep_cancelled: Annotated[
        str, typer.Option(metavar="AGE", help="Prune cancelled jobs older than this, or 'forever'.")
    ] = "7d",
    keep_dead: Annotated[
        str,
        typer.Option(
            metavar="AGE", help="Prune dead jobs older than this, or 'forever' (operators decide)."
        ),
    ] = "forever",
    log_level: Annotated[
        str, typer.Option(metavar="LEVEL", help="debug, info, warning or error.")
    ] = "info",
    log_format: Annotated[
        str, typer.Option(metavar="FORMAT", help="text, or json: one object per line.")
    ] = "text",
) -> None:
    """Run a worker: claim and run jobs until SIGTERM or SIGINT."""
    from pgq.tasks import load_app
    from pgq.worker import Worker
    from pgq.worker.supervisor import Supervisor

    _configure_logging(log_level, log_format)
    try:
        retention = Retention(
            succeeded_seconds=parse_retention(keep_succeeded, "--keep-succeeded"),
            cancelled_seconds=parse_retention(keep_cancelled, "--keep-cancelled"),
            dead_seconds=parse_retention(keep_dead, "--keep-dead"),
        )
        dsn = resolve_dsn(dsn)
        parsed_queues = parse_queues(queues)
        weights = parse_queue_weights(queue_weights)
        app = load_app(app_path)  # fail here, not in N restarting children
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {metrics_port}: a port is 0 to 65535")
        if processes < 1:
            raise ConfigError(f"--processes must be >= 1, got {processes}")
        if processes > MAX_PROCESSES:
            raise ConfigError(f"--processes must be <= {MAX_PROCESSES}, got {processes}")
        if metrics_port and metrics_port + processes - 1 > 65535:
            raise ConfigError(
                f"--metrics-port {metrics_port} with --processes {processes}: child N serves "
                f"on --metrics-port + N, and {metrics_port + processes - 1} is past 65535"
            )
        # Built (and so checked) here even when children run it: a bad option
        # fails once, not in N children restarted forever.
        worker = Worker(
            app, dsn, schema=schema, queues=parsed_queues, concurrency=concurrency,
            poll_seconds=poll_seconds, lease_seconds=lease_seconds, poll_only=poll_only,
            shutdown_grace_seconds=shutdown_grace_seconds, retention=retention,
            metrics_port=metrics_port, metrics_host=metrics_host,
            synchronous_commit=synchronous_commit, queue_weights=weights,
            strict_queue_order=strict_queue_order,
        )  # fmt: skip
        if processes > 1:
            worker.check_schema_now()
            settings = worker.settings

            def child_environment(slot: int) -> dict[str, str]:
                # One metrics port per process: child N serves on --metrics-port + N.
                child = settings.for_child(slot).to_json()
                return ChildSpec(app_path, child, log_level, log_format).environment(dsn)

            supervisor = Supervisor(
                [sys.executable, "-m", "pgq", "work-child"], child_environment, processes,
                grace_seconds=shutdown_grace_seconds,
            )  # fmt: skip
            raise typer.Exit(supervisor.run())
    except PgqError as error:
        fail(str(error), dsn, as_json=log_format == "json")
    _run_worker(worker, dsn, log_format)


@work_commands.command("work-child", hidden=True)
def work_child() -> None:
    """One worker process of `pgq work --processes N` (started by its supervisor)."""
    from pgq.tasks import load_app
    from pgq.worker import Worker
    from pgq.worker.settings import WorkerSettings

    try:
        spec = ChildSpec.from_environment()
        settings = WorkerSettings.from_json(spec.settings_json)
    except (ConfigError, ValueError, TypeError, KeyError) as error:
        fail(f"cannot start a worker process: {error}")
    _configure_logging(spec.log_level, spec.log_format)
    try:
        worker = Worker.from_settings(load_app(spec.app_path), settings)
    except PgqError as error:
        fail(str(error), settings.dsn, as_json=spec.log_format == "json")
    _run_worker(worker, settings.dsn, spec.log_format)


def _configure_logging(log_level: str, log_format: str) -> None:
    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be text or json, got {log_format!r}")
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    configure_logging(log_level, log_format)


def _run_worker(worker: Worker, dsn: str, log_format: str) -> None:
    """Run ``worker`` in this process until a signal stops it; errors as one clear line."""
    try:
        asyncio.run(worker.run(handle_signals=True))
    except PgqError as error:
        fail(str(error), dsn, as_json=log_format == "json")
    except psycopg.OperationalError as error:
        fail(f"cannot connect to {describe_dsn(dsn)}: {error}", dsn, as_json=log_format == "json")
    if worker.stuck_threads:
        # Threads cannot be killed, and Python waits for them at exit: their jobs
        # are already handed back, so leave without them.
        logging.getLogger("pgq.worker").warning(
            "%s still running; exiting without waiting",
            plural(worker.stuck_threads, "sync handler"),
        )
        logging.shutdown()
        os._exit(0)
