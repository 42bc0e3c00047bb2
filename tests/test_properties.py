"""Properties over whole input spaces, with hypothesis: job args round-trip through every way
in, encode_args stops whatever jsonb cannot store, the option parsers (durations,
``--queues``) accept exactly their grammar, and DSN passwords never show. The backoff
arithmetic's properties live with its module, in test_retry.py.

test_enqueue.py already round-trips args through ``pgq.enqueue`` with floats kept within
±1e15; here floats span their whole range, and args also go through ``enqueue_many``'s COPY
and the SQL function. Examples are few on purpose: the file runs in seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

import pgq
from pgq.cli_work import parse_queues
from pgq.config import MAX_DURATION_SECONDS, describe_dsn, parse_duration, redact
from pgq.enqueue import encode_args
from pgq.job import QUEUE_NAME

Conn = psycopg.Connection[tuple[Any, ...]]

# One connection for all examples of a test, rolled back after each one.
DB_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PURE_SETTINGS = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def db(module_conn: Conn) -> Conn:
    return module_conn


# -- JSON args -----------------------------------------------------------------------------------

# Text jsonb can store: no NUL, no lone surrogates (they are not UTF-8).
storable_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(storable_text, children, max_size=4)
    ),
    max_leaves=16,
)
json_args = st.dictionaries(storable_text, json_values, max_size=5)


def as_stored(value: Any) -> Any:
    """``value`` as jsonb keeps it: every number a decimal (jsonb numbers are numeric).

    A float goes in as its shortest repr ("1e+16"), which numeric keeps exactly; it comes
    back as whatever that decimal reads as in JSON (the int 10000000000000000). Comparing
    decimals makes both the same number.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [as_stored(item) for item in value]
    assert isinstance(value, dict), value
    return {key: as_stored(item) for key, item in value.items()}


def enqueue_by(way: str, conn: Conn, args: dict[str, Any]) -> int:
    if way == "enqueue":
        return pgq.enqueue(conn, "echo", args).id
    if way == "enqueue_many":
        (job_id,) = pgq.enqueue_many(conn, [pgq.JobSpec("echo", args)])
        return job_id
    row = conn.execute("SELECT id FROM pgq.enqueue('echo', %s)", [Jsonb(args)]).fetchone()
    assert row is not None
    return int(row[0])


def stored_args(conn: Conn, job_id: int) -> Any:
    row = conn.execute("SELECT args FROM pgq.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("way", ["enqueue", "enqueue_many", "sql_function"])
@DB_SETTINGS
@given(args=json_args)
def test_json_args_come_back_as_the_same_values(db: Conn, way: str, args: dict[str, Any]) -> None:
    try:
        stored = stored_args(db, enqueue_by(way, db, args))
    finally:
        db.rollback()

    assert as_stored(stored) == as_stored(args)


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)


def jsonb_can_store(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


any_text = st.text(st.characters(), max_size=12)  # NUL, lone surrogates and all
any_args = st.dictionaries(
    any_text,
    st.recursive(any_text | st.integers(), lambda c: st.lists(c, max_size=3), max_leaves=6),
    max_size=4,
)


@pytest.mark.parametrize("way", ["enqueue", "enqueue_many"])
@DB_SETTINGS
@given(args=any_args)
def test_args_jsonb_cannot_store_are_refused_before_the_database_sees_them(
    db: Conn, way: str, args: dict[str, Any]
) -> None:
    storable = all(jsonb_can_store(text) for text in strings_in(args))
    try:
        if storable:
            assert stored_args(db, enqueue_by(way, db, args)) == args
        else:
            with pytest.raises(pgq.InvalidJobError):
                enqueue_by(way, db, args)
            # The caller's transaction is untouched: nothing reached the server.
            assert db.info.transaction_status != psycopg.pq.TransactionStatus.INERROR
    finally:
        db.rollback()


@PURE_SETTINGS
@given(args=any_args)
def test_encode_args_output_is_storable_json_text_or_an_invalid_job_error(
    args: dict[str, Any],
) -> None:
    try:
        text = encode_args(args)
    except pgq.InvalidJobError:
        assert not all(jsonb_can_store(t) for t in strings_in(args))
        return
    assert jsonb_can_store(text.replace("\\u0000", ""))  # an escaped backslash-u is fine
    assert len(text.encode()) <= 1_048_576


# -- parse_duration -------------------------------------------------------------------------------

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
spaces = st.text(" \t", max_size=2)
numbers = st.integers(0, 10**9).map(str) | st.tuples(
    st.integers(0, 10**6), st.integers(0, 10**6)
).map(lambda t: f"{t[0]}.{t[1]}")


@PURE_SETTINGS
@given(
    number=numbers,
    unit=st.sampled_from(sorted(UNITS)),
    upper=st.booleans(),
    before=spaces,
    between=spaces,
    after=spaces,
)
def test_every_duration_of_the_documented_grammar_parses_to_its_seconds(
    number: str, unit: str, upper: bool, before: str, between: str, after: str
) -> None:
    text = f"{before}{number}{between}{unit.upper() if upper else unit}{after}"
    seconds = float(number) * UNITS[unit]

    if seconds > MAX_DURATION_SECONDS:  # the grammar's numbers, but past the 100-year cap
        with pytest.raises(pgq.ConfigError, match="longer than 100 years"):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds


def allowed_in_a_duration(char: str) -> bool:
    return char.isdecimal() or char.isspace() or char in ".smhdw"


@PURE_SETTINGS
@given(text=st.text(max_size=12))
def test_text_with_anything_but_digits_a_dot_and_a_unit_is_refused(text: str) -> None:
    assume(not all(allowed_in_a_duration(char) for char in text.lower()))

    with pytest.raises(pgq.ConfigError, match="invalid duration"):
        parse_duration(text)


@PURE_SETTINGS
@given(text=st.text(st.sampled_from("0123456789.smhdwSMHDW -+e"), max_size=10))
def test_parse_duration_returns_a_finite_age_or_refuses(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except pgq.ConfigError:
        return
    assert math.isfinite(seconds) and seconds >= 0


def test_a_duration_too_long_for_a_float_is_refused() -> None:
    with pytest.raises(pgq.ConfigError):
        parse_duration("9" * 400)


# -- parse_queues ---------------------------------------------------------------------------------

queue_names = st.from_regex(re.compile(r"[A-Za-z0-9_.:-]{1,20}", re.ASCII), fullmatch=True)
queue_items = st.lists(
    st.tuples(queue_names, st.none() | st.integers(-(10**6), 10**6)),
    min_size=1, max_size=6, unique_by=lambda item: item[0],
)  # fmt: skip


@PURE_SETTINGS
@given(items=queue_items, split=st.integers(0, 6), pad=spaces)
def test_queues_parse_to_their_names_and_limits_however_they_are_split(
    items: list[tuple[str, int | None]], split: int, pad: str
) -> None:
    rendered = [f"{pad}{name}{'' if limit is None else f'={limit}'}{pad}" for name, limit in items]
    # Some items in one comma-separated value, the rest each in a repeated option.
    values = [",".join(rendered[:split]), *rendered[split:]] if split else rendered

    assert parse_queues(values) == dict(items)


@PURE_SETTINGS
@given(items=queue_items, pad=spaces)
def test_a_queue_named_twice_is_refused_however_it_is_written(
    items: list[tuple[str, int | None]], pad: str
) -> None:
    twice = items[0][0]
    rendered = [f"{pad}{name}{'' if limit is None else f'={limit}'}{pad}" for name, limit in items]
    with pytest.raises(pgq.ConfigError, match=f"names {re.escape(repr(twice))} twice"):
        parse_queues([*rendered, f"{pad}{twice}{pad}"])


@PURE_SETTINGS
@given(name=queue_names, limit=st.text(st.characters(exclude_characters=","), max_size=6))
def test_a_queue_limit_is_an_integer_or_refused(name: str, limit: str) -> None:
    try:
        expected = int(limit)
    except ValueError:
        with pytest.raises(pgq.ConfigError, match="must be an integer"):
            parse_queues([f"{name}={limit}"])
        return
    assert parse_queues([f"{name}={limit}"]) == {name: expected}


def test_no_queues_means_every_queue() -> None:
    assert parse_queues(None) is None
    assert parse_queues([]) is None


@PURE_SETTINGS
@given(values=st.lists(st.text(max_size=12), min_size=1, max_size=3))
def test_parse_queues_returns_only_valid_queue_names_or_refuses(values: list[str]) -> None:
    try:
        queues = parse_queues(values)
    except pgq.ConfigError:
        return
    for name in queues or {}:
        assert QUEUE_NAME.match(name), name


# -- DSN passwords --------------------------------------------------------------------------------

passwords = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="'\\"),
    min_size=8,
    max_size=16,
)


@PURE_SETTINGS
@given(password=passwords, url=st.booleans())
def test_describe_dsn_and_redact_never_show_the_password(password: str, url: bool) -> None:
    if url:
        dsn = f"postgresql://app:{quote(password, safe='')}@db.example:5432/shop"
    else:
        dsn = make_conninfo(host="db.example", user="app", dbname="shop", password=password)
    assume(password not in "postgresql://app:@db.example:5432/shop host=db.example user=app")

    assert password not in describe_dsn(dsn)
    assert password not in redact(f"connection failed for {dsn} (password {password})", dsn)
