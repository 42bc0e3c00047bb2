"""Loads queries.sql and hands out its statements by name, bound to a schema.

Statements are composed once per (name, schema) and cached: composing is cheap
but the worker's hot path runs the same few statements thousands of times a second.
"""

from __future__ import annotations

import functools
import re
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
def query(name: str, schema: str, database: str | None = None) -> sql.Composed:
    """The statement called ``name`` in queries.sql, for pgq's ``schema``."""
    try:
        text = QUERIES[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None
    return sql.SQL(text).format(
        schema=sql.Identifier(schema),
        channel=sql.Identifier(wakeup_channel(schema)),
        database=sql.Identifier(database or "unused"),
    )
