"""The `pgq` command. Thin: each command parses options and calls a function elsewhere."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer

from pgq.cli_admin import admin_commands
from pgq.cli_fleet import fleet_commands
from pgq.cli_shared import (
    Commands,
    DryRunOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    YesOption,
    confirm,
    database,
    err,
    fail,
    out,
)
from pgq.cli_web import web_commands
from pgq.cli_work import work_commands
from pgq.config import describe_dsn, resolve_dsn, resolve_schema
from pgq.errors import PgqError
from pgq.job import FINISHED_STATUSES, JobStatus
from pgq.logs import LOG_LEVELS, configure_logging, plural

if TYPE_CHECKING:
    from pgq.migrate import DowngradePlan

app = Commands(
    name="pgq",
    help="pgq: a PostgreSQL-native background job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(work_commands)
app.add_typer(admin_commands)
app.add_typer(fleet_commands)
app.add_typer(web_commands)


def _print_version(wanted: bool) -> None:
    if wanted:
        from pgq import __version__

        typer.echo(f"pgq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print pgq's version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """pgq: a PostgreSQL-native background job queue."""


@app.command()
def migrate(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    sql: Annotated[
        bool,
        typer.Option(
            "--sql",
            help="Print the SQL instead of applying it; needs no database. With --downgrade, "
            "from the newest revision.",
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
            "--downgrade",
            metavar="REVISION",
            help="Revert to REVISION ('base' removes pgq and its jobs); asks first.",
        ),
    ] = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Bring pgq's schema up to date. Safe to run from several processes at once."""
    from pgq import migrate as migrations

    try:
        schema = resolve_schema(schema)
        if sql:  # prints only: nothing to ask, nothing to dry-run
            sys.stdout.write(migrations.offline_sql(downgrade_to=downgrade, schema=schema))
            return
        dsn = resolve_dsn(dsn)
        head = migrations.head_revision()
        if current or (dry_run and downgrade is None):
            found = migrations.current_revision(dsn, schema=schema)
            state = "up to date" if found == head else "needs `pgq migrate`"
            out.print(f"database: {describe_dsn(dsn)}\nschema: {schema}\n"
                      f"current revision: {found or 'none'}\nnewest revision: {head} ({state})",
                      highlight=False)  # fmt: skip
            return
        if downgrade is not None:
            plan = migrations.plan_downgrade(dsn, downgrade, schema=schema)
            if plan.reverted:
                _ask_to_downgrade(plan, dry_run=dry_run, yes=yes)
        before, after = migrations.migrate(dsn, schema=schema, downgrade_to=downgrade)
    except PgqError as error:
        fail(str(error), dsn)
    except psycopg.OperationalError as error:
        fail(f"cannot connect to {describe_dsn(dsn or '')}: {error}", dsn)
    except psycopg.ProgrammingError as error:
        # A DSN libpq cannot parse has no SQLSTATE; an error from the server
        # (permission denied, ...) is one, and must not be blamed on the DSN.
        fail(f"invalid DSN: {error}" if error.sqlstate is None else f"cannot migrate: {error}", dsn)
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


def _ask_to_downgrade(plan: DowngradePlan, *, dry_run: bool, yes: bool) -> None:
    """Say what the downgrade drops; return only if it is to go ahead."""
    from pgq.migrate import REVISIONS, required_revision

    action = (
        f"downgrade pgq's schema {plan.schema!r} from {plan.current} to {plan.target or 'base'}"
    )
    if plan.drops_jobs:
        by_kind: dict[str, dict[str, int]] = {"unfinished": {}, "finished": {}}
        for status, count in plan.jobs_by_status.items():
            kind = "finished" if JobStatus(status) in FINISHED_STATUSES else "unfinished"
            by_kind[kind][status] = count
        held = [
            f"{plural(sum(counts.values()), f'{kind} job')} ("
            + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")"
            for kind, counts in by_kind.items() if counts
        ]  # fmt: skip
        warning = (
            f"This drops {plan.schema}.jobs holding {' and '.join(held)}: they are lost."
            if held
            else f"This drops {plan.schema}.jobs, which is empty."
        )
    else:
        warning = "Jobs are kept."
        needed = required_revision()
        if plan.target in REVISIONS[: REVISIONS.index(needed)]:
            warning += f" This pgq needs {needed}: it refuses to run until migrated again."
    if dry_run:
        reverted = ", ".join(plan.reverted)
        out.print(f"dry run: would {action}, reverting {reverted}. {warning} Nothing changed.",
                  highlight=False)  # fmt: skip
        raise typer.Exit()
    confirm(action, warning=warning, yes=yes)


@app.command()
def roles(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the statements instead of applying them.")
    ] = False,
) -> None:
    """Create the roles <schema>_producer, _worker and _operator.

    Each gets only the privileges its work needs. They are group roles (NOLOGIN):
    grant them to your login roles. Applying needs CREATEROLE and ownership of
    pgq's schema; safe to run again after `pgq migrate`.
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
        int, typer.Option(min=1, metavar="N", help="Jobs enqueued one per transaction.")
    ] = 1_000,
    bulk_jobs: Annotated[
        int, typer.Option(min=1, metavar="N", help="Jobs enqueued in bulk, then drained.")
    ] = 50_000,
    latency_jobs: Annotated[
        int, typer.Option(min=1, metavar="N", help="Jobs timed from commit to start.")
    ] = 200,
    rate: Annotated[
        float, typer.Option(min=0.1, metavar="PER_SECOND", help="Latency jobs enqueued per second.")
    ] = 20.0,
    concurrency: Annotated[
        int, typer.Option(min=1, metavar="N", help="Worker concurrency for the drain.")
    ] = 100,
    as_json: JsonOption = False,
) -> None:
    """Measure enqueue, drain and pickup latency on your database.

    It works in a temporary schema, created, used and dropped. The load is real,
    so choose the moment.
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
    log_level: Annotated[
        str, typer.Option(metavar="LEVEL", help="debug, info, warning or error.")
    ] = "warning",
) -> None:
    """Run pgq end to end on a real database and print what happened.

    With no DSN configured it looks for a local PostgreSQL as psql does (your
    PG* settings, then the user postgres), else starts an embedded one (pip
    install 'pgq-jobs[embedded]').
    """
    from pgq.demo import run_demo

    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    configure_logging(log_level)
    run_demo(out, dsn)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
