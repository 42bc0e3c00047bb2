"""What every `pgq` command shares: the DSN and schema options, output, and failing clearly."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import psycopg
import psycopg.errors
import typer
from rich.console import Console
from rich.markup import escape

from pgq.config import describe_dsn, redact, resolve_dsn, resolve_schema
from pgq.errors import PgqError

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
    typer.Option(
        "--schema", help="pgq's schema. Default: $PGQ_SCHEMA, else 'pgq'.", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, dsn: str | None = None, *, as_json: bool = False) -> NoReturn:
    """Print a one-line error (with any password masked) and exit 1.

    ``as_json``: one JSON object, for a worker whose log pipeline reads JSON lines.
    """
    message = redact(message, dsn)
    if as_json:
        entry = {"level": "error", "logger": "pgq.cli", "message": message}
        sys.stderr.write(json.dumps(entry) + "\n")
    else:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def database(
    dsn_option: str | None, schema_option: str | None
) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """A connection to a migrated pgq schema, or a clear error and exit 1.

    Bad DSN, unreachable server and unmigrated schema each get their own message.
    """
    from pgq.migrate import check_schema

    dsn: str | None = dsn_option
    try:
        dsn = resolve_dsn(dsn_option)
        schema = resolve_schema(schema_option)
        try:
            # No prepared statements: behind PgBouncer in transaction mode (< 1.21) the
            # next transaction may reach a server connection that never saw them, and a
            # requeue of many pages repeats its statements past psycopg's threshold.
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, prepare_threshold=None)
        except psycopg.ProgrammingError as error:
            fail(f"invalid DSN: {error}", dsn)
        except psycopg.OperationalError as error:
            fail(f"cannot connect to {describe_dsn(dsn)}: {error}", dsn)
        with conn:
            check_schema(conn, schema=schema)
            yield conn, schema
    except PgqError as error:
        fail(str(error), dsn)
    except psycopg.errors.InsufficientPrivilege as error:
        fail(
            f"permission denied ({error.diag.message_primary}): this command needs the "
            f"operator role; ask for `GRANT {schema_option or resolve_schema(None)}_operator "
            "TO <your login>` (see `pgq roles`)",
            dsn,
        )
    except psycopg.OperationalError as error:
        fail(f"lost the database connection: {error}", dsn)
