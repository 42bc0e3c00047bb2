"""Settings shared by the API, the worker and the CLI: where the database is, and pgq's schema."""

from __future__ import annotations

import os
import re

import psycopg.conninfo

from pgq.errors import ConfigError, shown
from pgq.job import DAY_SECONDS

DEFAULT_SCHEMA = "pgq"
DSN_ENV_VARS = ("PGQ_DSN", "DATABASE_URL")
SCHEMA_ENV_VAR = "PGQ_SCHEMA"

# The schema name is the only identifier pgq puts into SQL, and it also names
# the LISTEN channel: a plain lower-case identifier keeps both unambiguous.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}\Z")


def resolve_dsn(dsn: str | None = None) -> str:
    """The database to use: ``dsn`` if given, else ``$PGQ_DSN``, else ``$DATABASE_URL``."""
    if dsn:
        return dsn
    for name in DSN_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    raise ConfigError(
        "no database configured: pass --dsn, or set PGQ_DSN (or DATABASE_URL), "
        "for example PGQ_DSN='postgresql://user@localhost:5432/app'"
    )


def resolve_schema(schema: str | None = None) -> str:
    """pgq's schema: ``schema`` if given, else ``$PGQ_SCHEMA``, else ``pgq``."""
    name = schema or os.environ.get(SCHEMA_ENV_VAR) or DEFAULT_SCHEMA
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise ConfigError(
            f"invalid schema name {shown(name)}: use lower-case letters, digits and "
            "underscores, starting with a letter or underscore, at most 40 characters"
        )
    return name


def wakeup_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which enqueues wake idle workers."""
    return f"{schema}_wakeup"


# Long-lived worker connections: give up on a connect after 10 s, and notice a
# peer that vanished without closing (network drop) in about 25 s instead of
# the kernel's default of two hours. A value set in the DSN wins.
WORKER_CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def worker_conninfo(dsn: str) -> str:
    """``dsn`` with the worker's connection defaults added where the DSN is silent."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise ConfigError(f"invalid DSN: {redact(str(error), dsn)}") from None
    for key, value in WORKER_CONNECTION_DEFAULTS.items():
        params.setdefault(key, value)
    return psycopg.conninfo.make_conninfo("", **params)


def describe_dsn(dsn: str) -> str:
    """The DSN as it is safe to print: every password removed."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    params.pop("password", None)
    shown = {key: value for key, value in params.items() if value is not None}
    return psycopg.conninfo.make_conninfo("", **shown) or "<libpq defaults>"


# Where a password sits in a DSN that libpq could not parse: a URL's user info
# (postgresql://user:PASSWORD@host) or a key=value pair (password=PASSWORD).
_URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<password>[^@\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*(?P<password>'(?:[^'\\]|\\.)*'|\S+)")


def redact(text: str, dsn: str | None) -> str:
    """``text`` with the DSN's password (if any) replaced, for error messages."""
    if not dsn:
        return text
    try:
        passwords = [psycopg.conninfo.conninfo_to_dict(dsn).get("password")]
    except psycopg.ProgrammingError:
        # libpq's parse error may quote the broken part, password included.
        passwords = [m.group("password") for m in _URL_PASSWORD.finditer(dsn)]
        passwords += [m.group("password").strip("'") for m in _KEYWORD_PASSWORD.finditer(dsn)]
        text = text.replace(dsn, "<DSN>")
    for password in passwords:
        if password:
            text = text.replace(str(password), "****")
    return text


_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw]?)\s*\Z")
MAX_DURATION_SECONDS = 100 * 365 * DAY_SECONDS
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"90"``, ``"30s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"`` in seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        raise ConfigError(
            f"invalid duration {text!r}: use a number with an optional unit s, m, h, d or w "
            "(for example 30s, 15m, 12h, 7d)"
        )
    seconds = float(match.group("number")) * _UNIT_SECONDS[match.group("unit")]
    if not seconds <= MAX_DURATION_SECONDS:  # also refuses inf, from hundreds of digits
        raise ConfigError(f"duration {text!r} is longer than 100 years")
    return seconds
