"""What every `pgq` command shares: plain help, the DSN and schema options, output, errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import psycopg
import psycopg.errors
import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from typer.core import TyperCommand

from pgq.config import describe_dsn, redact, resolve_dsn, resolve_schema
from pgq.errors import PgqError
from pgq.job import MAX_JOB_ID

if TYPE_CHECKING:
    from collections.abc import Callable

    from typer._click import Context, HelpFormatter, Parameter
    from typer.models import CommandFunctionType

#: How wide `pgq`'s tables and messages are when stdout is no terminal (a pipe, a
#: log, CI) and $COLUMNS says nothing: wide enough that a cell or a sentence is
#: rarely cut, where rich's default (80) cut task names and wrapped sentences.
WIDE_OUTPUT_COLUMNS = 200


class Output(Console):
    """A console that fits a terminal, and is WIDE_OUTPUT_COLUMNS wide anywhere else.

    Rich measures any terminal it finds, stdin's included, so `pgq jobs | grep x`
    would be cut to the width of a terminal it does not print on. $COLUMNS, when
    set, wins everywhere. Decided at each print: tests swap stdout in-process.
    """

    @property
    def size(self) -> ConsoleDimensions:
        measured = super().size
        if self._width is None and "COLUMNS" not in os.environ and not self.is_terminal:
            return ConsoleDimensions(WIDE_OUTPUT_COLUMNS, measured.height)
        return measured

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


err = Console(stderr=True)
out = Output()


class PlainHelpCommand(TyperCommand):
    """A command whose help reads like most CLIs': ``pgq cancel [OPTIONS] ID...``.

    Typer's own help shows every parameter's Python type (``--help <bool>``, ``ID...
    <list[int]>``), an id's whole range, and a required list as ``{ID...}...``. Here an
    argument shows its metavar and its help; options keep Typer's plain records, which
    name a value by the option's metavar and a flag by its name alone.
    """

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_usage_name(p) for p in _arguments(self.get_params(ctx))]

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        params = self.get_params(ctx)
        arguments = [(_usage_name(p), getattr(p, "help", None) or "") for p in _arguments(params)]
        options = [
            record
            for p in params
            if p.param_type_name == "option" and (record := p.get_help_record(ctx))
        ]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _arguments(params: list[Parameter]) -> list[Parameter]:
    return [
        p for p in params if p.param_type_name == "argument" and not getattr(p, "hidden", False)
    ]


def _usage_name(argument: Parameter) -> str:
    """``ID``, ``[ID]`` when optional, then ``...`` when it takes several."""
    name = argument.metavar or (argument.name or "").upper()
    name = name if argument.required else f"[{name}]"
    return f"{name}..." if argument.nargs != 1 else name


class Commands(typer.Typer):
    """A Typer whose commands print plain help (see PlainHelpCommand), without rich's boxes."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(rich_markup_mode=None, **settings)

    def command(
        self, name: str | None = None, **settings: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=PlainHelpCommand, **settings)


DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL connection string. Default: $PGQ_DSN, else $DATABASE_URL.",
        show_default=False,
    ),
]
SchemaOption = Annotated[
    str | None,
    typer.Option(
        "--schema",
        metavar="SCHEMA",
        help="pgq's schema. Default: $PGQ_SCHEMA, else 'pgq'.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
YesOption = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Go ahead without asking (for scripts)."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
]


def parse_job_id(text: str) -> int:
    """An ID argument as typed: a whole number from 1 (a bigint), else a usage error naming it."""
    # ASCII digits only: int() would also take "1_000", " 7" and other scripts' digits.
    number = int(text) if text.isascii() and text.isdigit() else 0
    if number < 1:
        raise typer.BadParameter(f"{text!r} is not a job id (a whole number from 1)")
    if number > MAX_JOB_ID:
        raise typer.BadParameter(f"{text!r} is not a job id: ids end at {MAX_JOB_ID}")
    return number


def confirm(action: str, *, warning: str = "", yes: bool) -> None:
    """Ask "Action? warning [y/N]" on the terminal, and exit 1 unless the answer is yes.

    ``yes`` (``--yes``) answers for a script. With no terminal to ask on (cron, a
    pipe, CI) and no ``--yes``, refuse and exit 1: a destructive command must neither
    hang on a question no one sees nor go ahead without an answer.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        fail(
            f"refusing to {action} without confirmation: stdin is not a terminal, so pgq "
            f"cannot ask. {warning + ' ' if warning else ''}Add --yes to go ahead, or "
            "--dry-run to see what would change"
        )
    question = action[:1].upper() + action[1:] + "?" + (f" {warning}" if warning else "")
    # On stderr, and read by hand: typer.confirm's input() would print to stdout.
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        err.print("not confirmed: nothing changed", highlight=False)
        raise typer.Exit(1)


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


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (times in ISO 8601): the admin commands' --json."""
    # Plain text, not rich's: a script reading it wants no colours or wrapping.
    typer.echo(json.dumps(value, default=_json_default, indent=2, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def ago(moment: datetime | None) -> str:
    """How long ago ``moment`` was, as the admin tables show it (``""`` for none)."""
    if moment is None:
        return ""
    seconds = max(0.0, (datetime.now(UTC) - moment).total_seconds())
    return duration_text(seconds) + " ago"


def duration_text(seconds: float) -> str:
    """``seconds`` in the largest unit that fits: 12.5s, 3.2m, 1.5h, 2.0d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"
