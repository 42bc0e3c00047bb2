"""Settings shared by the API, the worker and the CLI: where the database is, and pgq's schema."""

from __future__ import annotations

import os
import re
from importlib import metadata

import psycopg.conninfo

from pgq.errors import ConfigError, shown
from pgq.job import DAY_SECONDS


def installed_version() -> str:
    """pgq's installed version (pyproject.toml's); "unknown" in a source tree never installed."""
    try:
        return metadata.version("pgq-jobs")
    except metadata.PackageNotFoundError:
        return "unknown"


DEFAULT_SCHEMA = "pgq"
DSN_ENV_VARS = ("PGQ_DSN", "DATABASE_URL")
SCHEMA_ENV_VAR = "PGQ_SCHEMA"

# The schema name is the only identifier pgq puts into SQL, and it also names
# the LISTEN channel: a plain lower-case identifier keeps both unambiguous.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}\Z")


def resolve_dsn(dsn: str | None = None) -> str:
    """The database to use: ``dsn`` if given, else ``$PGQ_DSN``, else ``$DATABASE_URL``.

    The DSN comes back as libpq reads it (see ``normalize_dsn``), or ConfigError.
    """
    if dsn:
        return normalize_dsn(dsn)
    for name in DSN_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return normalize_dsn(value, source=name)
    raise ConfigError(
        "no database configured: pass --dsn, or set PGQ_DSN (or DATABASE_URL), "
        "for example PGQ_DSN='postgresql://user@localhost:5432/app'"
    )


# A URL's scheme, if the DSN is a URL at all (key=value DSNs have no "://" up front).
_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.:-]*)://")
# SQLAlchemy names the Python driver in the scheme (postgresql+asyncpg://). The
# driver says which library connects, not where to: dropping it keeps the database.
_POSTGRES_SCHEME = re.compile(r"^postgres(?:ql)?(?:\+\w+)?\Z", re.IGNORECASE)
# asyncpg spells libpq's sslmode as ssl (?ssl=require); libpq itself only knows ssl=true.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_URL_FORM = (
    "a URL (postgresql://user@host:5432/dbname; postgres:// and postgresql+<driver>:// work too)"
)
_KEYWORD_FORM = "key=value pairs (host=... dbname=...)"


def normalize_dsn(dsn: str, source: str | None = None) -> str:
    """``dsn`` as libpq reads it: SQLAlchemy's and asyncpg's URL forms translated.

    ``postgresql+<driver>://`` and ``postgres://`` become ``postgresql://``, and
    asyncpg's ``?ssl=<mode>`` becomes ``?sslmode=<mode>``; everything else is kept.
    Any other scheme, or a DSN libpq cannot parse, is a ConfigError that names
    ``source`` (where the DSN came from, if not an argument) and never shows the
    password. Example::

        >>> normalize_dsn("postgresql+asyncpg://app:pw@db:5432/app?ssl=require")
        'postgresql://app:pw@db:5432/app?sslmode=require'
    """
    where = f" in {source}" if source else ""
    text = dsn.strip()
    url = _URL_SCHEME.match(text)
    if url:
        scheme = url.group("scheme")
        if not _POSTGRES_SCHEME.match(scheme):
            raise ConfigError(
                f"the DSN{where} has the scheme {shown(scheme)}, which is not PostgreSQL: "
                f"pgq needs {_URL_FORM} or {_KEYWORD_FORM}"
            )
        text = "postgresql://" + text[url.end() :]
        address, question, query = text.partition("?")
        if question:
            text = address + "?" + "&".join(map(_libpq_parameter, query.split("&")))
    elif text and "=" not in text:
        # libpq would say 'missing "=" after <the whole DSN>', which helps nobody.
        raise ConfigError(f"invalid DSN{where}: it is neither {_URL_FORM} nor {_KEYWORD_FORM}")
    try:
        psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError as error:
        raise ConfigError(f"invalid DSN{where}: {redact(str(error).strip(), text)}") from None
    return text


def _libpq_parameter(parameter: str) -> str:
    name, _, value = parameter.partition("=")
    if name == "ssl" and value in _SSL_MODES:
        return f"sslmode={value}"
    return parameter


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


def cancel_channel(schema: str) -> str:
    """The channel on which ``pgq.cancel()`` tells a worker to stop a running job (0008)."""
    return f"{schema}_cancel"


def finished_channel(schema: str) -> str:
    """The channel on which each batch of finished jobs wakes ``pgq.wait`` (0008)."""
    return f"{schema}_finished"


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
    """``dsn`` with the worker's connection defaults added where the DSN is silent.

    Normalized first, so that ``Worker(app, os.environ["DATABASE_URL"])`` takes the
    same SQLAlchemy forms as the CLI.
    """
    params = psycopg.conninfo.conninfo_to_dict(normalize_dsn(dsn))
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
