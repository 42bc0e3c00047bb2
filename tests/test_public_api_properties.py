"""Any Python value at any public parameter: the call succeeds, or raises pgq's own error
(PgqError: InvalidJobError, ConfigError, JobNotFoundError...) and writes nothing.

Never a TypeError, ValueError, UnicodeEncodeError or psycopg error escaping from deep
inside: a caller that catches ``pgq.InvalidJobError`` must catch every bad job. Misspelt
keyword *names* are the one exception: they are TypeErrors, as in any Python signature
(test_enqueue.py checks those).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgq
from pgq import admin

Conn = psycopg.Connection[tuple[Any, ...]]

# A short run in the suite; PGQ_FUZZ_EXAMPLES=2000 (say) for a long one.
EXAMPLES = int(os.environ.get("PGQ_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
PURE = settings(max_examples=EXAMPLES * 3, deadline=None)


class Unprintable:
    """A value whose repr and str both raise: error messages must still be written."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Unprintable()")  # how hypothesis shows it in a report


class Unhashable(list[int]):
    """A list: unhashable, as a set-based cache of names must not mind."""


offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),  # surrogates and NUL included
    st.binary(max_size=10),
    st.decimals(allow_nan=True),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.timedeltas(),
    # Made late: hypothesis reprs what it samples, and these have no repr.
    st.just(None).map(lambda _: Unprintable()),
    st.just(None).map(lambda _: 10**5000),
    st.sampled_from(
        [
            object(),
            Unhashable([1]),
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
            Decimal("1e5000"),
            "\ud800",
            "a\x00b",
            "x" * 600,
            pgq.JobStatus.DEAD,
            ...,
        ]
    ),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3)
        | st.tuples(inner)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def db(module_conn: Conn) -> Conn:
    return module_conn


def count_jobs(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pgq.jobs").fetchone()
    assert row is not None
    return int(row[0])


def succeeds_or_refuses(conn: Conn, call: Callable[[], object]) -> None:
    """Run ``call`` in a savepoint: it succeeds, or raises a PgqError and writes nothing."""
    before = count_jobs(conn)
    with conn.transaction(force_rollback=True):
        try:
            call()
        except pgq.PgqError:
            failed = True
        else:
            failed = False
        if failed:
            assert count_jobs(conn) == before, "a refused call wrote a job"


app = pgq.App()


@app.task(queue="emails", max_attempts=3)
def send(to: str = "") -> None:
    pass


ENQUEUE_OPTIONS = ("queue", "priority", "run_at", "delay", "max_attempts", "dedupe_key")


@SETTINGS
@given(option=st.sampled_from(ENQUEUE_OPTIONS), value=anything)
def test_any_enqueue_option_value_is_enqueued_or_refused_with_invalid_job_error(
    db: Conn, option: str, value: Any
) -> None:
    options: Any = {option: value}
    succeeds_or_refuses(db, lambda: pgq.enqueue(db, "send", {"to": "a"}, **options))
    succeeds_or_refuses(db, lambda: send.enqueue(db, {"to": "a"}, **options))
    succeeds_or_refuses(db, lambda: pgq.enqueue_many(db, [pgq.JobSpec("send", **options)]))


@SETTINGS
@given(task=anything, args=anything, schema=anything)
def test_any_task_args_and_schema_are_enqueued_or_refused(
    db: Conn, task: Any, args: Any, schema: Any
) -> None:
    succeeds_or_refuses(db, lambda: pgq.enqueue(db, task, args))
    succeeds_or_refuses(db, lambda: pgq.enqueue(db, "send", args))
    succeeds_or_refuses(db, lambda: pgq.enqueue(db, "send", schema=schema))
    succeeds_or_refuses(db, lambda: pgq.enqueue_many(db, [pgq.JobSpec(task, args)]))


@SETTINGS
@given(job_id=anything, status=anything, number=anything, moment=anything)
def test_any_admin_argument_is_served_or_refused_with_pgq_errors(
    db: Conn, job_id: Any, status: Any, number: Any, moment: Any
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: admin.get_job(db, job_id),
        lambda: admin.requeue(db, job_id),
        lambda: admin.cancel(db, job_id),
        lambda: admin.retry_now(db, job_id),
        lambda: admin.list_jobs(db, status=status, limit=number, since=moment),
        lambda: admin.prune(db, status, number, batch_size=number),
        lambda: admin.count_dead_jobs(db, admin.DeadJobFilter(died_after=moment)),
        lambda: admin.find_dead_jobs(db, admin.DeadJobFilter(died_before=moment), limit=number),
    ]
    for call in calls:
        succeeds_or_refuses(db, call)


WORKER_OPTIONS = (
    "schema", "queues", "concurrency", "poll_seconds", "lease_seconds", "poll_only",
    "shutdown_grace_seconds", "rescue_interval_seconds", "retention",
    "prune_interval_seconds", "metrics_port", "metrics_host", "name", "synchronous_commit",
)  # fmt: skip


@PURE
@given(option=st.sampled_from(WORKER_OPTIONS), value=anything)
def test_any_worker_option_is_taken_or_refused_with_config_error(option: str, value: Any) -> None:
    try:
        pgq.Worker(app, "host=127.0.0.1 dbname=unused", **{option: value})
    except pgq.ConfigError:
        pass


@PURE
@given(option=st.sampled_from(["name", "queue", "max_attempts", "timeout", "retry"]),
       value=anything)  # fmt: skip
def test_any_task_option_is_taken_or_refused_with_config_error(option: str, value: Any) -> None:
    registry = pgq.App()
    try:
        registry.task(**{option: value})(send.handler)
    except pgq.ConfigError:
        pass


@PURE
@given(base=anything, cap=anything)
def test_any_retry_policy_is_taken_or_refused_with_config_error(base: Any, cap: Any) -> None:
    try:
        pgq.Retry(base, cap)
    except pgq.ConfigError:
        pass


@PURE
@given(status=st.sampled_from(["succeeded", "cancelled", "dead"]), value=anything)
def test_any_retention_age_is_taken_or_refused_with_config_error(status: str, value: Any) -> None:
    try:
        pgq.Retention(**{f"{status}_seconds": value})
    except pgq.ConfigError:
        pass
