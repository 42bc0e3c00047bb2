"""The `pgq` command. Thin: each command parses options and calls a function elsewhere."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import psycopg
import typer
from rich.console import Console

from pgq.config import describe_dsn, redact, resolve_dsn, resolve_schema
from pgq.errors import PgqError

app = typer.Typer(
    name="pgq",
    help="pgq: a PostgreSQL-native background job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="PostgreSQL connection string. Default: $PGQ_DSN, else $DATABASE_URL.",
        show_default=False,
    ),
]
SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", help="pgq's schema. Default: $PGQ_SCHEMA, else 'pgq'.", show_default=False),
]


@app.callback()
def root() -> None:
    """pgq: a PostgreSQL-native background job queue."""


def fail(message: str, dsn: str | None = None) -> NoReturn:
    """Print a one-line error (with any password masked) and exit 1."""
    err.print(f"[bold red]error:[/] {redact(message, dsn)}", highlight=False, markup=True)
    raise typer.Exit(1)


@app.command()
def migrate(
    dsn: DsnOption = None,
    schema: SchemaOption = None,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the upgrade as SQL instead of applying it; needs no database.")
    ] = False,
    current: Annotated[
        bool, typer.Option("--current", help="Show the database's revision and the newest one, change nothing.")
    ] = False,
    downgrade: Annotated[
        str | None,
        typer.Option("--downgrade", metavar="REVISION", help="Revert to REVISION ('base' removes pgq)."),
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
        out.print(f"pgq schema {schema!r}: {before or 'none'} -> {after or 'none'}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
