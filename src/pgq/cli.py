"""The `pgq` command. Thin: each command parses options and calls a function elsewhere."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Annotated, Any

import psycopg
import typer

from pgq.cli_admin import admin_commands
from pgq.cli_shared import DsnOption, SchemaOption, database, err, fail, out
from pgq.config import describe_dsn, parse_duration, resolve_dsn, resolve_schema
from pgq.enqueue import QUEUE_NAME
from pgq.errors import ConfigError, PgqError
from pgq.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from pgq.retention import Retention

app = typer.Typer(
    name="pgq",
    help="pgq: a PostgreSQL-native background job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(admin_commands)


@app.callback()
def root() -> None:
    """pgq: a PostgreSQL-native background job queue."""


@app.command()
def migrate(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    sql: Annotated[
        bool,
        typer.Option(
            "--sql", help="Print the upgrade as SQL instead of applying it; needs no database."
        ),
    ] = False,
    current: Annotated[
        bool,
        typer.Option(
            "--current", help="Show the database's revision and the newest one, change nothing."
        ),
    ] = False,
    downgrade: Annotated[
        str | None,
        typer.Option(
            "--downgrade", metavar="REVISION", help="Revert to REVISION ('base' removes pgq)."
        ),
    ] = None,
) -> None:
    """Bring pgq's schema up to date (safe to run from several processes at once)."""
    from pgq import migrate as migrations

    try:
        schema = resolve_schema(schema)
        if sql:
            sys.stdout.write(migrations.offline_sql(schema=schema))
            return
        dsn = resolve_dsn(dsn)
        head = migrations.head_revision()
        if current:
            found = migrations.current_revision(dsn, schema=schema)
            state = "up to date" if found == head else "needs `pgq migrate`"
            out.print(f"database: {describe_dsn(dsn)}\nschema: {schema}\n"
                      f"current revision: {found or 'none'}\nnewest revision: {head} ({state})",
                      highlight=False)  # fmt: skip
            return
        before, after = migrations.migrate(dsn, schema=schema, downgrade_to=downgrade)
    except PgqError as error:
        fail(str(error), dsn)
    except psycopg.OperationalError as error:
        fail(f"cannot connect to {describe_dsn(dsn or '')}: {error}", dsn)
    except psycopg.ProgrammingError as error:
        fail(f"invalid DSN: {error}", dsn)
    except Exception as error:
        from alembic.util import CommandError

        if not isinstance(error, CommandError):
            raise
        fail(f"cannot migrate: {error}", dsn)
    if before == after:
        out.print(f"pgq schema {schema!r} already at revision {after or 'none'}", highlight=False)
    else:
        out.print(
            f"pgq schema {schema!r}: {before or 'none'} -> {after or 'none'}", highlight=False
        )


MAX_PROCESSES = 256
ASCII_SPACE = " \t\n\r\f\v"


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


@app.command()
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
            help="Queues to serve, each optionally NAME=CONCURRENCY; "
            "repeat or separate with commas. Default: all queues.",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Jobs run at once per process.")
    ] = 10,
    processes: Annotated[
        int, typer.Option("--processes", "-p", help="Worker processes under one supervisor.")
    ] = 1,
    poll_seconds: Annotated[
        float, typer.Option(help="Poll interval when no wake-up arrives.")
    ] = 1.0,
    lease_seconds: Annotated[
        float, typer.Option(help="How long a claim holds a job without a heartbeat.")
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
            help="On SIGTERM, how long running jobs may take before they are handed back."
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
        typer.Option(help="Serve Prometheus metrics on /metrics and a health check on /health."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address for the metrics server; 0.0.0.0 exposes it.")
    ] = "127.0.0.1",
    keep_succeeded: Annotated[
        str, typer.Option(help="Prune succeeded jobs older than this (7d, 12h...) or 'forever'.")
    ] = "1d",
    keep_cancelled: Annotated[
        str, typer.Option(help="Prune cancelled jobs older than this, or 'forever'.")
    ] = "7d",
    keep_dead: Annotated[
        str, typer.Option(help="Prune dead jobs older than this, or 'forever' (operators decide).")
    ] = "forever",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text, or json: one object per line.")] = "text",
) -> None:
    """Run a worker: claim and run jobs until SIGTERM or SIGINT."""
    from pgq.supervisor import Supervisor, child_environment
    from pgq.tasks import load_app
    from pgq.worker import Worker

    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be text or json, got {log_format!r}")
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    configure_logging(log_level, log_format)
    try:
        retention = Retention(
            succeeded_seconds=parse_retention(keep_succeeded, "--keep-succeeded"),
            cancelled_seconds=parse_retention(keep_cancelled, "--keep-cancelled"),
            dead_seconds=parse_retention(keep_dead, "--keep-dead"),
        )
        dsn = resolve_dsn(dsn)
        parsed_queues = parse_queues(queues)
        app_object = load_app(app_path)  # fail here, not in N restarting children
        schema = resolve_schema(schema or app_object.schema)
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {metrics_port}: a port is 0 to 65535")
        if processes < 1:
            raise ConfigError(f"--processes must be >= 1, got {processes}")
        if processes > MAX_PROCESSES:
            raise ConfigError(f"--processes must be <= {MAX_PROCESSES}, got {processes}")
        # Built (and so checked) here even when children run it: a bad option
        # fails once, not in N children restarted forever.
        worker = Worker(
            app_object, dsn, schema=schema, queues=parsed_queues, concurrency=concurrency,
            poll_seconds=poll_seconds, lease_seconds=lease_seconds, listen=not poll_only,
            shutdown_grace_seconds=shutdown_grace_seconds, retention=retention,
            metrics_port=metrics_port, metrics_host=metrics_host,
            synchronous_commit=synchronous_commit,
        )  # fmt: skip
        if processes > 1:
            worker.check_schema_now()
            child = [sys.executable, "-m", "pgq", "work", app_path, "--schema", schema,
                     "--concurrency", str(concurrency), "--poll-seconds", str(poll_seconds),
                     "--lease-seconds", str(lease_seconds), "--log-level", log_level,
                     "--log-format", log_format, "--keep-succeeded", keep_succeeded,
                     "--keep-cancelled", keep_cancelled, "--keep-dead", keep_dead,
                     "--shutdown-grace-seconds", str(shutdown_grace_seconds)]  # fmt: skip
            child += ["--metrics-host", metrics_host]
            for queue in queues or []:
                child += ["--queues", queue]
            if poll_only:
                child.append("--poll-only")
            if synchronous_commit:
                child.append("--synchronous-commit")

            def child_argv(slot: int) -> list[str]:
                # One metrics port per process: child N serves on --metrics-port + N.
                if metrics_port is None:
                    return child
                return [*child, "--metrics-port", str(metrics_port + slot)]

            supervisor = Supervisor(
                child_argv, processes, env=child_environment(dsn),
                grace_seconds=shutdown_grace_seconds,
            )  # fmt: skip
            raise typer.Exit(supervisor.run())
        asyncio.run(worker.run(handle_signals=True))
    except PgqError as error:
        fail(str(error), dsn, as_json=log_format == "json")
    except psycopg.OperationalError as error:
        fail(f"cannot connect to {describe_dsn(dsn or '')}: {error}", dsn,
             as_json=log_format == "json")  # fmt: skip
    if worker.stuck_threads:
        # Threads cannot be killed, and Python waits for them at exit: their jobs
        # are already handed back, so leave without them.
        logging.getLogger("pgq.worker").warning(
            "%d sync handlers are still running; exiting without them", worker.stuck_threads
        )
        logging.shutdown()
        os._exit(0)


@app.command()
def roles(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the statements instead of applying them.")
    ] = False,
) -> None:
    """Create the least-privilege roles <schema>_producer, _worker and _operator.

    Group roles (NOLOGIN): grant them to your login roles. Applying needs
    CREATEROLE and ownership of pgq's schema; safe to run again after `pgq migrate`.
    """
    from pgq import roles as least_privilege

    try:
        if sql:
            schema = resolve_schema(schema)
            sys.stdout.write(least_privilege.roles_sql(schema).as_string(None) + ";\n")
            return
        with database(dsn, schema) as (conn, schema_name):
            names = least_privilege.grant_roles(conn, schema_name)
    except PgqError as error:
        fail(str(error), dsn)
    except psycopg.errors.InsufficientPrivilege as error:
        fail(f"not allowed to create roles or grant on schema: {error}", dsn)
    out.print(
        f"roles ready: {names.producer}, {names.worker}, {names.operator}; "
        f"grant them to login roles, e.g. GRANT {names.producer} TO my_web_app;",
        highlight=False,
    )


@app.command()
def bench(
    dsn: DsnOption = None,
    single_jobs: Annotated[
        int, typer.Option(min=1, help="Jobs enqueued one per transaction.")
    ] = 1_000,
    bulk_jobs: Annotated[
        int, typer.Option(min=1, help="Jobs enqueued in bulk, then drained.")
    ] = 50_000,
    latency_jobs: Annotated[
        int, typer.Option(min=1, help="Jobs timed from commit to start.")
    ] = 200,
    rate: Annotated[float, typer.Option(min=0.1, help="Latency jobs enqueued per second.")] = 20.0,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Worker concurrency for the drain.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Measure enqueue, drain and pickup latency on your database (a temporary schema).

    The schema is created, used and dropped; the load is real, so choose the moment.
    """
    import json

    from rich.progress import Progress as RichProgress
    from rich.table import Table

    from pgq.bench import BenchSettings, describe, run_bench

    settings = BenchSettings(single_jobs, bulk_jobs, latency_jobs, rate, concurrency)
    logging.getLogger("pgq").setLevel(logging.WARNING)
    try:
        target = resolve_dsn(dsn)
        with RichProgress(console=err, transient=True) as bars:
            tasks: dict[str, Any] = {}

            def progress(scenario: str, done: int, total: int) -> None:
                if scenario not in tasks:
                    tasks[scenario] = bars.add_task(scenario, total=total)
                bars.update(tasks[scenario], completed=done)

            result = run_bench(target, settings, progress)
    except PgqError as error:
        fail(str(error), dsn)
    except psycopg.OperationalError as error:
        fail(f"cannot connect to {describe_dsn(target)}: {error}", target)
    if as_json:
        typer.echo(json.dumps({"settings": describe(settings), "figures": result.figures}))
        return
    table = Table(title=f"pgq bench on {describe_dsn(target)}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.figures.items():
        table.add_row(name, f"{value:,.1f}")
    out.print(table)


@app.command()
def demo(
    dsn: DsnOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Run pgq end to end on a real database and print what happened.

    With no DSN configured it uses a local PostgreSQL on 127.0.0.1:5432 if one
    answers, else an embedded one (pip install 'pgq-jobs\\[embedded]').
    """
    from pgq.demo import run_demo

    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    configure_logging(log_level)
    run_demo(dsn)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
