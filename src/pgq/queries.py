"""Loads queries.sql and hands out its statements by name, bound to a schema.

Statements are rendered once per (name, schema) and cached as plain SQL text:
the worker's hot path runs the same few statements thousands of times a second,
and a ``Composed`` would be rendered again, identifier quoting and all, at every
execute (about 15 µs each, measured).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from typing import Final

from psycopg import sql

from pgq.config import wakeup_channel

_BLOCK_START = re.compile(r"^-- (?P<name>[a-z_]+): ", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    starts = list(_BLOCK_START.finditer(text))
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        body_lines = [
            line for line in text[match.start() : end].splitlines() if not line.startswith("--")
        ]
        body = "\n".join(body_lines).strip().rstrip(";")
        if body:
            blocks[match.group("name")] = body
    return blocks


QUERIES: Final[dict[str, str]] = _parse(
    resources.files("pgq").joinpath("queries.sql").read_text(encoding="utf-8")
)


@functools.cache
def query(name: str, schema: str, database: str | None = None) -> sql.SQL:
    """The statement called ``name`` in queries.sql, for pgq's ``schema``."""
    try:
        text = QUERIES[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None
    composed = sql.SQL(text).format(
        schema=sql.Identifier(schema),
        channel=sql.Identifier(wakeup_channel(schema)),
        database=sql.Identifier(database or "unused"),
    )
    # Identifiers are quoted by psycopg here; the result is SQL, not data.
    return sql.SQL(composed.as_string(None))


def array_literal(values: Iterable[object]) -> str:
    """A PostgreSQL array literal (``{"1","2"}``) for a ``%s::bigint[]``-style parameter.

    psycopg dumps a list parameter element by element in Python, which a profile
    of the worker showed as its largest cost after waiting for the server. One
    string is dumped at C speed. Only for values whose text holds no ``"``, ``\\``
    or ``{}``: integers, UUIDs and validated task names. Each element is quoted,
    so a task named ``null`` stays a name.
    """
    return "{" + ",".join([f'"{value}"' for value in values]) + "}"
