"""Loads named SQL blocks from a .sql file of the package and hands them out by name.

``query`` serves queries.sql, every statement pgq runs at runtime. The demo and
``pgq bench`` keep their own statements beside them (demo.sql, bench.sql) and
load them the same way.

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

from psycopg import sql

from pgq.config import wakeup_channel

_BLOCK_START = re.compile(r"^-- (?P<name>[a-z_]+): ", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    """``-- name: purpose`` blocks of a .sql file, by name, without their comment lines."""
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


class Statements:
    """The named statements of one .sql file in the pgq package.

    Blocks may name ``{schema}`` (pgq's schema) and ``{channel}`` (its wake-up
    channel); any other ``{identifier}`` is passed by the caller. All are quoted
    as identifiers by psycopg.
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        text = resources.files("pgq").joinpath(filename).read_text(encoding="utf-8")
        self.blocks = parse_blocks(text)
        self._render = functools.lru_cache(maxsize=None)(self._compose)

    def __call__(self, name: str, schema: str, **identifiers: str) -> sql.SQL:
        """The statement called ``name``, for pgq's ``schema``."""
        return self._render(name, schema, tuple(sorted(identifiers.items())))

    def _compose(self, name: str, schema: str, identifiers: tuple[tuple[str, str], ...]) -> sql.SQL:
        try:
            text = self.blocks[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {self.filename}") from None
        composed = sql.SQL(text).format(
            schema=sql.Identifier(schema),
            channel=sql.Identifier(wakeup_channel(schema)),
            **{key: sql.Identifier(value) for key, value in identifiers},
        )
        # Identifiers are quoted by psycopg here; the result is SQL, not data.
        return sql.SQL(composed.as_string(None))


query = Statements("queries.sql")
QUERIES = query.blocks


def array_literal(values: Iterable[object]) -> str:
    """A PostgreSQL array literal (``{"1","2"}``) for a ``%s::bigint[]``-style parameter.

    psycopg dumps a list parameter element by element in Python, which a profile
    of the worker showed as its largest cost after waiting for the server. One
    string is dumped at C speed. Only for values whose text holds no ``"``, ``\\``
    or ``{}``: integers, UUIDs and validated task names. Each element is quoted,
    so a task named ``null`` stays a name.
    """
    return "{" + ",".join([f'"{value}"' for value in values]) + "}"
