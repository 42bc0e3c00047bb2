"""The `pgq` command. Thin: each command parses options and calls a function elsewhere."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Annotated

import psycopg
import typer

from pgq.cli_admin import admin_commands
from pgq.cli_shared import DsnOption, SchemaOption, fail, out
from pgq.config import describe_dsn, resolve_dsn, resolve_schema
from pgq.errors import ConfigError, PgqError

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
    if before == after:
        out.print(f"pgq schema {schema!r} already at revision {after or 'none'}", highlight=False)
    else:
        out.print(
            f"pgq schema {schema!r}: {before or 'none'} -> {after or 'none'}", highlight=False
        )


def parse_queues(values: list[str] | None) -> dict[str, int | None] | None:
    """``["default", "emails=5"]`` (or comma-separated) to ``{"default": None, "emails": 5}``."""
    if not values:
        return None
    queues: dict[str, int | None] = {}
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, limit = item.partition("=")
            if not sep:
                queues[name] = None
                continue
            try:
                queues[name] = int(limit)
            except ValueError:
                raise ConfigError(
                    f"--queues {item!r}: the concurrency after '=' must be an integer"
                ) from None
    return queues


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )
    # Alembic logs its plugin set-up at INFO on every run: not news to a worker's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)


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
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run a worker: claim and run jobs until SIGTERM or SIGINT."""
    from pgq.supervisor import Supervisor, child_environment
    from pgq.tasks import load_app
    from pgq.worker import Worker

    setup_logging(log_level)
    try:
        dsn = resolve_dsn(dsn)
        parsed_queues = parse_queues(queues)
        app_object = load_app(app_path)  # fail here, not in N restarting children
        schema = resolve_schema(schema or app_object.schema)
        if processes < 1:
            raise ConfigError(f"--processes must be >= 1, got {processes}")
        if processes > 1:
            child = [sys.executable, "-m", "pgq", "work", app_path, "--schema", schema,
                     "--concurrency", str(concurrency), "--poll-seconds", str(poll_seconds),
                     "--lease-seconds", str(lease_seconds), "--log-level", log_level,
                     "--shutdown-grace-seconds", str(shutdown_grace_seconds)]  # fmt: skip
            for queue in queues or []:
                child += ["--queues", queue]
            if poll_only:
                child.append("--poll-only")
            supervisor = Supervisor(
                child, processes, env=child_environment(dsn), grace_seconds=shutdown_grace_seconds
            )
            raise typer.Exit(supervisor.run())
        worker = Worker(
            app_object, dsn, schema=schema, queues=parsed_queues, concurrency=concurrency,
            poll_seconds=poll_seconds, lease_seconds=lease_seconds, listen=not poll_only,
            shutdown_grace_seconds=shutdown_grace_seconds,
        )  # fmt: skip
        asyncio.run(worker.run(handle_signals=True))
    except PgqError as error:
        fail(str(error), dsn)
    if worker.stuck_threads:
        # Threads cannot be killed, and Python waits for them at exit: their jobs
        # are already handed back, so leave without them.
        logging.getLogger("pgq.worker").warning(
            "%d sync handlers are still running; exiting without them", worker.stuck_threads
        )
        logging.shutdown()
        os._exit(0)


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

    setup_logging(log_level)
    run_demo(dsn)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
