"""Transactional enqueue: jobs live and die with the caller's transaction, wake workers at
commit, deduplicate, and refuse bad input before anything is written."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

import pgq
from pgq import InvalidJobError, JobSpec
from pgq.config import wakeup_channel
from pgq.enqueue import ENQUEUE_MANY_CHUNK, PlannedJob, plan_job

Conn = psycopg.Connection[tuple[Any, ...]]
CHANNEL = wakeup_channel("pgq")
QUIET_SECONDS = 0.3  # how long "no notification arrives" is waited for


def count_jobs(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pgq.jobs").fetchone()
    assert row is not None
    return int(row[0])


def fetch_job(conn: Conn, job_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute("SELECT * FROM pgq.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None, f"job {job_id} not found"
    return row


@pytest.fixture
def listener(dsn: str) -> Iterator[Conn]:
    """A second connection LISTENing on pgq's wake-up channel, as an idle worker does."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        yield connection


def wakeups(listener: Conn, *, expected: int | None = None) -> list[str]:
    """Payloads (queue names) of the wake-ups that arrive; waits for ``expected`` of them,
    or for QUIET_SECONDS when none are expected."""
    timeout = 5.0 if expected else QUIET_SECONDS
    found = listener.notifies(timeout=timeout, stop_after=expected or None)
    payloads = []
    for notify in found:
        assert notify.channel == CHANNEL
        payloads.append(notify.payload)
    # Anything beyond the expected ones would arrive right after: look briefly.
    if expected:
        payloads.extend(n.payload for n in listener.notifies(timeout=QUIET_SECONDS))
    return payloads


# --- the caller's transaction decides ---------------------------------------------------


def test_enqueue_in_a_rolled_back_transaction_leaves_no_job(conn: Conn) -> None:
    pgq.enqueue(conn, "send_email", {"to": "a@example.com"})
    conn.rollback()

    assert count_jobs(conn) == 0


def test_enqueue_rolled_back_with_the_apps_own_rows(conn: Conn) -> None:
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    conn.commit()
    with pytest.raises(RuntimeError), conn.transaction():
        conn.execute("INSERT INTO orders VALUES (1)")
        pgq.enqueue(conn, "send_confirmation", {"order_id": 1})
        raise RuntimeError("the app fails after enqueueing")

    assert count_jobs(conn) == 0
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_enqueue_in_a_committed_transaction_stores_one_job_with_the_given_fields(
    conn: Conn, dsn: str
) -> None:
    result = pgq.enqueue(
        conn, "send_email", {"to": "a@example.com", "n": [1, 2]},
        queue="emails", priority=7, delay=60, max_attempts=3,
    )  # fmt: skip
    conn.commit()

    with psycopg.connect(dsn) as other:
        assert count_jobs(other) == 1
        job = fetch_job(other, result.id)
    assert result.created is True
    assert job["task"] == "send_email"
    assert job["args"] == {"to": "a@example.com", "n": [1, 2]}
    assert job["queue"] == "emails"
    assert job["priority"] == 7
    assert job["max_attempts"] == 3
    assert job["status"] == "queued"
    assert job["attempts"] == 0
    assert job["dedupe_key"] is None
    # run_at and created_at both come from the transaction's now().
    assert job["run_at"] - job["created_at"] == timedelta(seconds=60)


def test_enqueue_defaults_to_the_default_queue_and_runs_now(conn: Conn) -> None:
    job = fetch_job(conn, pgq.enqueue(conn, "cleanup").id)

    assert job["queue"] == "default"
    assert job["args"] == {}
    assert job["priority"] == 0
    assert job["max_attempts"] is None  # the task's, resolved by the first claim
    assert job["run_at"] == job["created_at"]


def test_enqueue_with_run_at_stores_that_instant(conn: Conn) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    job = fetch_job(conn, pgq.enqueue(conn, "report", run_at=when).id)

    assert job["run_at"] == when


def test_enqueue_with_a_timedelta_delay(conn: Conn) -> None:
    job = fetch_job(conn, pgq.enqueue(conn, "report", delay=timedelta(minutes=5)).id)

    assert job["run_at"] - job["created_at"] == timedelta(minutes=5)


def test_enqueue_never_commits_or_rolls_back_the_callers_transaction(conn: Conn) -> None:
    pgq.enqueue(conn, "report")

    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


# --- waking workers ------------------------------------------------------------------------


def test_workers_are_woken_at_commit_and_not_before(conn: Conn, listener: Conn) -> None:
    pgq.enqueue(conn, "send_email", queue="emails")
    assert wakeups(listener) == []

    conn.commit()

    assert wakeups(listener, expected=1) == ["emails"]


def test_no_wakeup_after_rollback(conn: Conn, listener: Conn) -> None:
    pgq.enqueue(conn, "send_email")
    conn.rollback()

    assert wakeups(listener) == []


# --- deduplication -------------------------------------------------------------------------


def test_dedupe_key_held_by_a_queued_job_returns_that_job(conn: Conn) -> None:
    first = pgq.enqueue(conn, "sync_account", {"id": 1}, dedupe_key="sync:1")
    conn.commit()
    second = pgq.enqueue(conn, "sync_account", {"id": 1}, dedupe_key="sync:1")
    conn.commit()

    assert first.created is True
    assert second == pgq.EnqueueResult(id=first.id, created=False)
    assert count_jobs(conn) == 1


def test_dedupe_key_is_free_again_once_the_job_finished(conn: Conn) -> None:
    first = pgq.enqueue(conn, "sync_account", dedupe_key="sync:1")
    conn.execute(
        "UPDATE pgq.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", [first.id]
    )
    conn.commit()

    again = pgq.enqueue(conn, "sync_account", dedupe_key="sync:1")

    assert again.created is True
    assert again.id != first.id
    assert count_jobs(conn) == 2


def test_different_dedupe_keys_do_not_collide(conn: Conn) -> None:
    a = pgq.enqueue(conn, "sync_account", dedupe_key="sync:1")
    b = pgq.enqueue(conn, "sync_account", dedupe_key="sync:2")

    assert a.created and b.created
    assert a.id != b.id


# --- enqueue_many --------------------------------------------------------------------------


def test_enqueue_many_stores_ten_thousand_jobs_from_a_generator_and_wakes_once_per_queue(
    conn: Conn, listener: Conn
) -> None:
    specs = (
        JobSpec("resize_image", {"n": n}, queue="images" if n % 2 else "thumbnails")
        for n in range(10_000)
    )

    ids = pgq.enqueue_many(conn, specs)
    assert wakeups(listener) == []
    conn.commit()

    assert len(ids) == len(set(ids)) == 10_000
    assert sorted(wakeups(listener, expected=2)) == ["images", "thumbnails"]
    stored = conn.execute("SELECT id, args->>'n', queue, status FROM pgq.jobs").fetchall()
    assert {row[0] for row in stored} == set(ids)
    assert {int(row[1]) for row in stored} == set(range(10_000))
    assert {row[3] for row in stored} == {"queued"}


def test_enqueue_many_keeps_each_jobs_fields(conn: Conn) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    ids = pgq.enqueue_many(
        conn,
        [
            JobSpec("a", {"x": 1}, queue="q1", priority=3, run_at=when, max_attempts=2),
            JobSpec("b", delay=30),
        ],
    )

    first, second = (fetch_job(conn, job_id) for job_id in ids)
    assert (first["task"], first["args"], first["queue"]) == ("a", {"x": 1}, "q1")
    assert (first["priority"], first["run_at"], first["max_attempts"]) == (3, when, 2)
    assert (second["task"], second["args"], second["queue"]) == ("b", {}, "default")
    assert second["run_at"] - second["created_at"] == timedelta(seconds=30)


def test_enqueue_many_skips_jobs_whose_dedupe_key_is_taken(conn: Conn) -> None:
    existing = pgq.enqueue(conn, "sync_account", dedupe_key="sync:1")

    ids = pgq.enqueue_many(
        conn,
        [
            JobSpec("sync_account", dedupe_key="sync:1"),  # held by the existing job
            JobSpec("sync_account", dedupe_key="sync:2"),
            JobSpec("sync_account", dedupe_key="sync:2"),  # repeated within the batch
            JobSpec("sync_account"),
        ],
    )

    assert len(ids) == 2
    assert existing.id not in ids
    keys = conn.execute("SELECT dedupe_key FROM pgq.jobs ORDER BY id").fetchall()
    assert keys == [("sync:1",), ("sync:2",), (None,)]


def test_enqueue_many_of_nothing_writes_nothing_and_wakes_nobody(
    conn: Conn, listener: Conn
) -> None:
    assert pgq.enqueue_many(conn, []) == []
    conn.commit()

    assert count_jobs(conn) == 0
    assert wakeups(listener) == []


def test_enqueue_many_opening_the_transaction_does_not_commit_it(
    conn: Conn, listener: Conn
) -> None:
    # The first statement on the connection: enqueue_many must not be the one to
    # start (and so end) the transaction.
    pgq.enqueue_many(conn, [JobSpec("a"), JobSpec("b")])
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert wakeups(listener) == []
    conn.rollback()

    assert count_jobs(conn) == 0
    assert wakeups(listener) == []


def test_enqueue_many_after_other_writes_rolls_back_with_them(conn: Conn) -> None:
    pgq.enqueue(conn, "first")
    pgq.enqueue_many(conn, [JobSpec("a"), JobSpec("b")])
    conn.rollback()

    assert count_jobs(conn) == 0


def test_enqueue_many_on_an_autocommit_connection_is_one_transaction(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as auto:
        ids = pgq.enqueue_many(auto, [JobSpec("a"), JobSpec("b")])
        with pytest.raises(InvalidJobError):
            pgq.enqueue_many(auto, [JobSpec("c"), JobSpec("d", priority=-1)])

        assert len(ids) == 2
        assert count_jobs(auto) == 2


def test_enqueue_many_without_ids_counts_what_it_created_across_straight_and_staged_chunks(
    conn: Conn, listener: Conn
) -> None:
    # Plain chunks are COPYed straight into jobs; a chunk holding a dedupe key or a
    # delay goes through staging. Both must land, and the count must match the table.
    pgq.enqueue(conn, "sync_account", dedupe_key="sync:taken")
    plain = [JobSpec("resize", {"n": n}, queue="images") for n in range(ENQUEUE_MANY_CHUNK + 5)]
    tail = [
        JobSpec("sync_account", dedupe_key="sync:taken"),  # skipped: held by a queued job
        JobSpec("sync_account", dedupe_key="sync:new"),
        JobSpec("later", delay=60),
    ]

    created = pgq.enqueue_many(conn, iter(plain + tail), return_ids=False)
    assert wakeups(listener) == []
    conn.commit()

    assert created == len(plain) + 2
    assert count_jobs(conn) == 1 + created
    stored = conn.execute(
        "SELECT args->>'n', queue, priority, max_attempts, status, run_at <= now() "
        "FROM pgq.jobs WHERE task = 'resize'"
    ).fetchall()
    assert sorted(int(row[0]) for row in stored) == list(range(len(plain)))
    # max_attempts left to the task: the first claim reads the registered one.
    assert {row[1:] for row in stored} == {("images", 0, None, "queued", True)}
    later = conn.execute("SELECT run_at - created_at FROM pgq.jobs WHERE task = 'later'").fetchone()
    assert later == (timedelta(seconds=60),)
    assert sorted(wakeups(listener, expected=2)) == ["default", "images"]


def test_enqueue_many_without_ids_is_all_or_nothing_when_a_later_chunk_is_invalid(
    rollback_conn: Conn,
) -> None:
    conn = rollback_conn
    before = count_jobs(conn)
    jobs = [JobSpec("ok", {"n": n}) for n in range(ENQUEUE_MANY_CHUNK)]  # one full straight chunk
    jobs.append(JobSpec("ok", priority=-1))

    with pytest.raises(InvalidJobError, match="priority"):
        pgq.enqueue_many(conn, jobs, return_ids=False)

    assert count_jobs(conn) == before


# --- async twins ---------------------------------------------------------------------------


def test_async_enqueue_and_enqueue_many_follow_the_transaction(dsn: str) -> None:
    async def scenario() -> tuple[int, list[int], int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            await pgq.enqueue_async(aconn, "dropped")
            await pgq.enqueue_many_async(aconn, [JobSpec("dropped")])
            await aconn.rollback()

            one = await pgq.enqueue_async(aconn, "send_email", {"to": "x"}, queue="emails")
            again = await pgq.enqueue_async(aconn, "send_email", dedupe_key="k")
            same = await pgq.enqueue_async(aconn, "send_email", dedupe_key="k")
            assert (again.id, again.created, same.created) == (same.id, True, False)
            many = await pgq.enqueue_many_async(
                aconn, (JobSpec("resize", {"n": n}) for n in range(3))
            )
            counted = await pgq.enqueue_many_async(
                aconn, [JobSpec("thumb"), JobSpec("thumb", dedupe_key="t")], return_ids=False
            )
            assert counted == 2
            await aconn.commit()
            cursor = await aconn.execute("SELECT count(*) FROM pgq.jobs")
            row = await cursor.fetchone()
            assert row is not None
            return one.id, many, int(row[0])

    one_id, many_ids, total = asyncio.run(scenario())

    assert total == 7
    assert len(many_ids) == 3
    with psycopg.connect(dsn) as check:
        job = fetch_job(check, one_id)
        assert (job["task"], job["args"], job["queue"]) == ("send_email", {"to": "x"}, "emails")
        assert count_jobs(check) == 7


def test_async_enqueue_wakes_workers_at_commit(dsn: str, listener: Conn) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            await pgq.enqueue_async(aconn, "send_email", queue="emails")
            await pgq.enqueue_many_async(aconn, [JobSpec("resize", queue="images")] * 3)
            await aconn.commit()

    asyncio.run(scenario())

    assert sorted(wakeups(listener, expected=2)) == ["emails", "images"]


def test_async_enqueue_refuses_bad_input(dsn: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(InvalidJobError, match="priority"):
                await pgq.enqueue_async(aconn, "a", priority=-1)
            with pytest.raises(InvalidJobError, match="queue"):
                await pgq.enqueue_many_async(aconn, [JobSpec("a", queue="bad queue")])

    asyncio.run(scenario())


# --- bad input -----------------------------------------------------------------------------

NAIVE = datetime(2030, 1, 1, 12, 0)
AWARE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("args_with_a_set", {"args": {"tags": {1, 2}}}, "JSON-serialisable"),
    ("args_with_an_object", {"args": {"when": object()}}, "JSON-serialisable"),
    ("args_with_a_datetime", {"args": {"when": AWARE}}, "JSON-serialisable"),
    ("args_with_nan", {"args": {"x": float("nan")}}, "JSON-serialisable"),
    ("args_with_infinity", {"args": {"x": [float("inf")]}}, "JSON-serialisable"),
    ("args_with_nul_in_a_value", {"args": {"s": "a\x00b"}}, "NUL"),
    ("args_with_nul_in_a_key", {"args": {"a\x00": 1}}, "NUL"),
    ("args_a_list", {"args": [1, 2]}, "dict"),
    ("args_a_string", {"args": "to=a@example.com"}, "dict"),
    ("args_an_int", {"args": 42}, "dict"),
    ("args_with_an_int_key", {"args": {1: "a"}}, "keys must be strings"),
    ("args_with_a_nested_non_str_key", {"args": {"a": {(1, 2): 3}}}, "JSON-serialisable"),
    ("empty_task", {"task": ""}, "invalid task name"),
    ("task_with_a_space", {"task": "send email"}, "invalid task name"),
    ("task_with_a_quote", {"task": "send'email"}, "invalid task name"),
    ("task_with_sql", {"task": "'; DROP TABLE x; --"}, "invalid task name"),
    ("task_too_long", {"task": "t" * 201}, "invalid task name"),
    ("task_not_a_string", {"task": 42}, "task"),
    ("task_none", {"task": None}, "task"),
    ("empty_queue", {"queue": ""}, "invalid queue name"),
    ("queue_with_a_space", {"queue": "my queue"}, "invalid queue name"),
    ("queue_with_a_single_quote", {"queue": "it's"}, "invalid queue name"),
    ("queue_with_a_double_quote", {"queue": 'say"hi'}, "invalid queue name"),
    ("queue_with_a_semicolon", {"queue": "a;b"}, "invalid queue name"),
    ("queue_with_sql", {"queue": "'; DROP TABLE x; --"}, "invalid queue name"),
    ("queue_with_a_newline", {"queue": "emails\n"}, "invalid queue name"),
    ("queue_too_long", {"queue": "q" * 129}, "invalid queue name"),
    ("queue_an_int", {"queue": 7}, "invalid queue name"),
    ("negative_priority", {"priority": -1}, "priority"),
    ("bool_priority", {"priority": True}, "priority must be an int"),
    ("float_priority", {"priority": 1.5}, "priority must be an int"),
    ("priority_over_int4", {"priority": 2**31}, "priority"),
    ("zero_max_attempts", {"max_attempts": 0}, "max_attempts"),
    ("negative_max_attempts", {"max_attempts": -3}, "max_attempts"),
    ("bool_max_attempts", {"max_attempts": True}, "max_attempts must be an int"),
    ("naive_run_at", {"run_at": NAIVE}, "timezone-aware"),
    ("run_at_a_string", {"run_at": "2030-01-01T12:00:00Z"}, "run_at must be a datetime"),
    ("run_at_and_delay", {"run_at": AWARE, "delay": 5}, "not both"),
    ("negative_delay", {"delay": -1}, "delay"),
    ("negative_timedelta_delay", {"delay": timedelta(seconds=-1)}, "delay"),
    ("nan_delay", {"delay": float("nan")}, "delay"),
    ("infinite_delay", {"delay": float("inf")}, "delay"),
    ("string_delay", {"delay": "5"}, "delay"),
    ("empty_dedupe_key", {"dedupe_key": ""}, "dedupe_key"),
    ("dedupe_key_too_long", {"dedupe_key": "k" * 501}, "dedupe_key"),
    ("dedupe_key_not_a_string", {"dedupe_key": 7}, "dedupe_key"),
    ("dedupe_key_with_nul", {"dedupe_key": "a\x00"}, "dedupe_key"),
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [pytest.param(overrides, message, id=name) for name, overrides, message in BAD_INPUTS],
)
def test_bad_input_is_refused_with_a_message_naming_the_problem_and_nothing_is_written(
    rollback_conn: Conn, overrides: dict[str, Any], message: str
) -> None:
    conn = rollback_conn
    call: dict[str, Any] = {"task": "send_email", "args": {"to": "a@example.com"}, **overrides}
    task = call.pop("task")
    before = count_jobs(conn)

    with pytest.raises(InvalidJobError, match=message):
        pgq.enqueue(conn, task, **call)

    # Nothing written, and the caller's transaction is still usable.
    assert count_jobs(conn) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [pytest.param(overrides, message, id=name) for name, overrides, message in BAD_INPUTS],
)
def test_bad_job_spec_in_enqueue_many_is_refused_and_nothing_is_written(
    rollback_conn: Conn, overrides: dict[str, Any], message: str
) -> None:
    conn = rollback_conn
    bad = JobSpec(**{"task": "send_email", **overrides})
    jobs = [JobSpec("ok", {"n": 1}), JobSpec("ok", {"n": 2}), bad, JobSpec("ok", {"n": 3})]
    before = count_jobs(conn)

    with pytest.raises(InvalidJobError, match=message):
        pgq.enqueue_many(conn, jobs)

    assert count_jobs(conn) == before


def test_enqueue_many_refuses_items_that_are_not_job_specs(rollback_conn: Conn) -> None:
    before = count_jobs(rollback_conn)
    jobs: list[Any] = [JobSpec("ok"), {"task": "not a JobSpec"}]

    with pytest.raises(InvalidJobError, match="JobSpec"):
        pgq.enqueue_many(rollback_conn, jobs)

    assert count_jobs(rollback_conn) == before


def test_bad_job_after_the_first_chunk_writes_none_of_the_batch_and_keeps_earlier_work(
    conn: Conn,
) -> None:
    earlier = pgq.enqueue(conn, "earlier")

    def specs() -> Iterator[JobSpec]:
        for n in range(ENQUEUE_MANY_CHUNK + 10):
            yield JobSpec("ok", {"n": n})
        yield JobSpec("ok", priority=-1)

    with pytest.raises(InvalidJobError, match="priority"):
        pgq.enqueue_many(conn, specs())
    conn.commit()

    assert conn.execute("SELECT id FROM pgq.jobs").fetchall() == [(earlier.id,)]


def test_names_at_the_length_limits_are_accepted(conn: Conn) -> None:
    result = pgq.enqueue(
        conn, "t" * 200, queue="q" * 128, dedupe_key="k" * 500,
        priority=2**31 - 1, max_attempts=1,
    )  # fmt: skip

    job = fetch_job(conn, result.id)
    assert (len(job["task"]), len(job["queue"]), len(job["dedupe_key"])) == (200, 128, 500)


def test_names_with_every_allowed_punctuation_are_accepted(conn: Conn) -> None:
    result = pgq.enqueue(conn, "billing.invoices:send-reminder_v2", queue="eu-west.1:high_prio")

    job = fetch_job(conn, result.id)
    assert job["task"] == "billing.invoices:send-reminder_v2"
    assert job["queue"] == "eu-west.1:high_prio"


# --- args round-trip -----------------------------------------------------------------------


def test_args_just_under_the_size_limit_round_trip_exactly(conn: Conn) -> None:
    args = {
        "blob": "é☃x" * 150_000,
        "rows": [{"id": n, "score": n / 7, "ok": n % 2 == 0, "note": None} for n in range(2_000)],
    }

    job = fetch_job(conn, pgq.enqueue(conn, "import_rows", args).id)

    assert job["args"] == args


def test_args_with_a_literal_backslash_u0000_text_are_accepted(conn: Conn) -> None:
    # The six characters \u0000 (not a NUL): a Windows path or an escaped log line.
    args = {"path": "C:\\u0000\\file", "escaped": "\\u0000"}

    job = fetch_job(conn, pgq.enqueue(conn, "index_file", args).id)

    assert job["args"] == args


def test_args_with_a_lone_surrogate_are_refused_before_the_transaction_breaks(
    conn: Conn,
) -> None:
    with pytest.raises(InvalidJobError):
        pgq.enqueue(conn, "send_email", {"name": "\ud800"})

    # The caller's transaction must still be usable.
    assert count_jobs(conn) == 0


# Floats within ±1e15: jsonb keeps numbers as numeric, so a float written with an
# exponent (1e+308) comes back as the integer that decimal names, not the float.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
)
json_keys = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=50,
    deadline=None,
    # One connection for every example is the point: each example rolls back.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(args=st.dictionaries(json_keys, json_values, max_size=6))
def test_json_args_round_trip_exactly(conn: Conn, args: dict[str, Any]) -> None:
    try:
        job_id = pgq.enqueue(conn, "echo", args).id
        row = conn.execute("SELECT args FROM pgq.jobs WHERE id = %s", [job_id]).fetchone()
    finally:
        conn.rollback()

    assert row is not None
    assert row[0] == args


def test_enqueue_works_on_a_connection_with_a_dict_row_factory(dsn: str) -> None:
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        result = pgq.enqueue(conn, "send_email", {"to": "a@b.c"})
        ids = pgq.enqueue_many(conn, [pgq.JobSpec("send_email"), pgq.JobSpec("send_email")])
        conn.commit()
        assert result.created
        assert len(ids) == 2
        row = conn.execute("SELECT count(*) AS n FROM pgq.jobs").fetchone()
    assert row is not None and row["n"] == 3


def test_args_over_the_size_limit_are_refused_and_nothing_is_written(conn: Conn) -> None:
    from pgq.job import MAX_ARGS_BYTES

    before = conn.execute("SELECT count(*) FROM pgq.jobs").fetchone()
    for size in (MAX_ARGS_BYTES + 1, 10 * 1024 * 1024):
        with pytest.raises(pgq.InvalidJobError, match="over the 1,048,576-byte limit"):
            pgq.enqueue(conn, "import_rows", {"blob": "x" * size})
        with pytest.raises(pgq.InvalidJobError, match="byte limit"):
            pgq.enqueue_many(conn, [pgq.JobSpec("import_rows", {"blob": "x" * size})])
    assert conn.execute("SELECT count(*) FROM pgq.jobs").fetchone() == before


def test_sql_enqueue_refuses_args_over_the_size_limit(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="byte limit"):
        conn.execute(
            "SELECT * FROM pgq.enqueue('import_rows', jsonb_build_object('blob', repeat('x', %s)))",
            [2 * 1024 * 1024],
        )


# --- options declared once: every entry point takes the same ones --------------------------

app = pgq.App()


@app.task(queue="reports", max_attempts=7)
def build_report(n: int = 0) -> None: ...


def test_plan_job_validates_and_leaves_unchosen_options_to_the_task_without_a_database() -> None:
    planned = plan_job("resize", {"id": 7}, {"delay": timedelta(minutes=2), "priority": 4})

    assert planned == PlannedJob(
        task="resize", args_json='{"id":7}', queue=None, priority=4, run_at=None,
        delay_seconds=120.0, max_attempts=None, dedupe_key=None, declared_queue="default",
        declared_priority=0,
    )  # fmt: skip


def test_plan_job_falls_back_on_a_tasks_own_queue_unless_the_options_say_otherwise() -> None:
    from_task = plan_job(build_report, None, {})
    overridden = plan_job(build_report, None, {"queue": "urgent", "max_attempts": 1})

    assert (from_task.task, from_task.queue, from_task.declared_queue) == (
        "build_report",
        None,
        "reports",
    )
    assert (overridden.queue, overridden.max_attempts) == ("urgent", 1)
    with pytest.raises(InvalidJobError, match="max_attempts must be between 1"):
        plan_job(build_report, None, {"max_attempts": 0})


BAD_ARGS_MESSAGE = "build_report() got an unexpected arg 'm'; it takes: n"


def enqueue_through(entry: str, dsn: str, args: dict[str, Any]) -> str | None:
    """Enqueue a build_report job with ``args`` through ``entry`` (in bulk, among good jobs),
    then commit whatever the call left: the refusal's message, or None."""
    good = JobSpec(build_report, {"n": 1})
    bulk = [good, JobSpec("send_email", {"to": "a"}), JobSpec(build_report, args), good]
    if entry in ("enqueue", "enqueue_many"):
        with psycopg.connect(dsn) as conn:
            try:
                if entry == "enqueue":
                    pgq.enqueue(conn, build_report, args)
                else:
                    pgq.enqueue_many(conn, bulk, return_ids=False)
            except InvalidJobError as error:
                return str(error)
            finally:
                conn.commit()
        return None

    async def scenario() -> str | None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            try:
                if entry == "enqueue_async":
                    await pgq.enqueue_async(aconn, build_report, args)
                else:
                    await pgq.enqueue_many_async(aconn, bulk)
            except InvalidJobError as error:
                return str(error)
            finally:
                await aconn.commit()
        return None

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "entry", ["enqueue", "enqueue_async", "enqueue_many", "enqueue_many_async"]
)
def test_every_enqueue_of_a_task_object_checks_the_args_and_writes_nothing_when_they_do_not_fit(
    conn: Conn, dsn: str, entry: str
) -> None:
    refused = enqueue_through(entry, dsn, {"m": 1})

    assert refused == BAD_ARGS_MESSAGE
    assert count_jobs(conn) == 0, "a job of the refused call was written"

    assert enqueue_through(entry, dsn, {"n": 2}) is None
    assert count_jobs(conn) == (1 if entry in ("enqueue", "enqueue_async") else 4)


def test_a_job_enqueued_by_name_is_not_checked_since_no_handler_is_known(conn: Conn) -> None:
    by_name = pgq.enqueue(conn, "build_report", {"m": 1})
    (in_bulk,) = pgq.enqueue_many(conn, [JobSpec("build_report", {"m": 2})])

    # Stored as given: the worker's check turns each into a dead job.
    rows = conn.execute(
        "SELECT args FROM pgq.jobs WHERE id = ANY(%s) ORDER BY id", [[by_name.id, in_bulk]]
    )
    assert [row[0] for row in rows] == [{"m": 1}, {"m": 2}]


def test_plan_job_checks_a_tasks_args_after_the_other_checks() -> None:
    # A bad option is named first; the args' fit is checked only for an otherwise valid job.
    with pytest.raises(InvalidJobError, match="priority must be between"):
        plan_job(build_report, {"m": 1}, {"priority": -1})
    with pytest.raises(InvalidJobError, match="job args must be JSON-serialisable"):
        plan_job(build_report, {"m": object()}, {})
    with pytest.raises(InvalidJobError, match=r"^build_report\(\) got an unexpected arg 'm'"):
        plan_job(build_report, {"m": 1}, {})


MISSPELT: dict[str, Any] = {"queu": "emails"}


def call_entry_point(entry: str, dsn: str, conn: Conn) -> None:
    """Enqueue one job through ``entry`` with a misspelt option."""
    if entry == "enqueue":
        pgq.enqueue(conn, "send_email", {"to": "a@b.c"}, **MISSPELT)
    elif entry == "Task.enqueue":
        build_report.enqueue(conn, {"n": 1}, **MISSPELT)
    elif entry == "JobSpec":
        pgq.enqueue_many(conn, [JobSpec("ok"), JobSpec("send_email", priority=1, **MISSPELT)])
    else:

        async def scenario() -> None:
            async with await psycopg.AsyncConnection.connect(dsn) as aconn:
                if entry == "enqueue_async":
                    await pgq.enqueue_async(aconn, "send_email", **MISSPELT)
                else:
                    await build_report.enqueue_async(aconn, priority=2, **MISSPELT)
                await aconn.commit()

        asyncio.run(scenario())


@pytest.mark.parametrize(
    "entry", ["enqueue", "enqueue_async", "Task.enqueue", "Task.enqueue_async", "JobSpec"]
)
def test_a_misspelt_option_is_a_type_error_naming_it_and_nothing_is_written(
    conn: Conn, dsn: str, entry: str
) -> None:
    with pytest.raises(TypeError, match=r"got an unexpected keyword argument 'queu'$"):
        call_entry_point(entry, dsn, conn)

    # Refused before any statement: not even a transaction was begun.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    conn.commit()
    assert count_jobs(conn) == 0


def test_a_misspelt_option_is_named_among_correct_ones(rollback_conn: Conn) -> None:
    with pytest.raises(
        TypeError, match=r"^enqueue\(\) got an unexpected keyword argument 'priorty'"
    ):
        pgq.enqueue(rollback_conn, "a", queue="emails", priorty=3, delay=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^JobSpec\(\) got an unexpected keyword argument 'dedup'"):
        JobSpec("a", {"n": 1}, dedup="k", queue="emails")  # type: ignore[call-arg]


def test_schema_is_an_argument_of_the_call_not_an_option_of_a_job() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'schema'"):
        JobSpec("a", schema="pgq")  # type: ignore[call-arg]


def test_one_enqueue_options_mapping_serves_enqueue_and_job_spec_alike(conn: Conn) -> None:
    options: pgq.EnqueueOptions = {"queue": "emails", "priority": 6, "max_attempts": 2}

    one = pgq.enqueue(conn, "send_email", **options).id
    (many,) = pgq.enqueue_many(conn, [JobSpec("send_email", **options)])
    via_task = build_report.enqueue(conn, **options).id

    columns = "SELECT task, queue, priority, max_attempts FROM pgq.jobs WHERE id = %s"
    assert conn.execute(columns, [one]).fetchone() == ("send_email", "emails", 6, 2)
    assert conn.execute(columns, [many]).fetchone() == ("send_email", "emails", 6, 2)
    assert conn.execute(columns, [via_task]).fetchone() == ("build_report", "emails", 6, 2)


def test_task_enqueue_uses_the_tasks_defaults_unless_told_otherwise(dsn: str) -> None:
    async def enqueue_async() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            ids = [
                (await build_report.enqueue_async(aconn, {"n": 3})).id,
                (await build_report.enqueue_async(aconn, {"n": 4}, queue="urgent")).id,
            ]
            await aconn.commit()
            return ids

    with psycopg.connect(dsn) as conn:
        ids = [
            build_report.enqueue(conn, {"n": 1}).id,
            build_report.enqueue(conn, {"n": 2}, max_attempts=1, priority=5).id,
        ]
        conn.commit()
        ids += asyncio.run(enqueue_async())
        rows = conn.execute(
            "SELECT task, args->>'n', queue, max_attempts, priority FROM pgq.jobs"
            " WHERE id = ANY(%s) ORDER BY id",
            [ids],
        ).fetchall()

    # The task's own queue while no worker registered it; its max_attempts is
    # read from the registry by the first claim (test_task_registry.py).
    assert rows == [
        ("build_report", "1", "reports", None, 0),
        ("build_report", "2", "reports", 1, 5),
        ("build_report", "3", "reports", None, 0),
        ("build_report", "4", "urgent", None, 0),
    ]


WHEN = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
# (job, the row it must become: args, queue, priority, max_attempts, dedupe_key, run_at)
# run_at: a datetime, or the seconds after created_at. max_attempts None: the task's,
# read by the first claim.
SPEC_ROWS: dict[str, tuple[JobSpec, tuple[Any, ...]]] = {
    "queue, priority, max_attempts": (
        JobSpec("a", {"x": 1}, queue="q1", priority=3, max_attempts=2),
        ({"x": 1}, "q1", 3, 2, None, 0),
    ),
    "the task's defaults": (
        JobSpec(build_report, {"n": 1}),
        ({"n": 1}, "reports", 0, None, None, 0),
    ),
    "the task's defaults overridden": (
        JobSpec(build_report, {"n": 2}, queue="urgent", max_attempts=1),
        ({"n": 2}, "urgent", 0, 1, None, 0),
    ),
    "run_at": (JobSpec("b", run_at=WHEN), ({}, "default", 0, None, None, WHEN)),
    "delay": (JobSpec("c", delay=timedelta(seconds=90)), ({}, "default", 0, None, None, 90)),
    "dedupe_key": (JobSpec("d", dedupe_key="k1", priority=9), ({}, "default", 9, None, "k1", 0)),
}
# Plain jobs (no run_at, delay or dedupe key) take the straight COPY path without ids.
PLAIN = ["queue, priority, max_attempts", "the task's defaults", "the task's defaults overridden"]


def stored_rows(conn: Conn) -> list[tuple[Any, ...]]:
    """Every job as (args, queue, priority, max_attempts, dedupe_key, run_at), in id order."""
    rows = conn.execute(
        "SELECT args, queue, priority, max_attempts, dedupe_key, run_at,"
        " extract(epoch FROM run_at - created_at)::int FROM pgq.jobs ORDER BY id"
    ).fetchall()
    return [(*row[:5], row[5] if row[5] == WHEN else row[6]) for row in rows]


@pytest.mark.parametrize("return_ids", [True, False], ids=["ids", "count"])
@pytest.mark.parametrize("jobs", ["every option", "plain"])
@pytest.mark.parametrize("driver", ["enqueue_many", "enqueue_many_async"])
def test_job_spec_options_reach_the_row_through_either_enqueue_many(
    dsn: str, driver: str, jobs: str, return_ids: bool
) -> None:
    names = PLAIN if jobs == "plain" else list(SPEC_ROWS)
    specs = [SPEC_ROWS[name][0] for name in names]

    async def enqueue_async() -> list[int] | int:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            result = await pgq.enqueue_many_async(aconn, specs, return_ids=return_ids)
            await aconn.commit()
            return result

    with psycopg.connect(dsn) as conn:
        if driver == "enqueue_many":
            result = pgq.enqueue_many(conn, specs, return_ids=return_ids)
            conn.commit()
        else:
            result = asyncio.run(enqueue_async())

        assert stored_rows(conn) == [SPEC_ROWS[name][1] for name in names]
        assert (len(result) if isinstance(result, list) else result) == len(specs)


# -- JobSpec values ---------------------------------------------------------------------------


def test_job_specs_that_enqueue_the_same_job_are_equal() -> None:
    assert JobSpec("t") == JobSpec("t", {}) == JobSpec("t", None, priority=None, queue=None)
    # A chosen priority 0 is kept: it wins over the task's default priority.
    assert JobSpec("t", priority=0) != JobSpec("t")
    assert JobSpec("t", queue="q") == JobSpec("t", options={"queue": "q"})
    assert JobSpec("t", queue="q") != JobSpec("t")
    assert JobSpec("t").args == {}


def test_job_spec_options_may_come_as_a_mapping_and_keywords_together() -> None:
    stored: pgq.EnqueueOptions = {"queue": "q", "priority": 3}

    spec = JobSpec("t", {"n": 1}, options=stored, priority=7)

    assert spec.options == {"queue": "q", "priority": 7}
    with pytest.raises(TypeError, match="unexpected keyword argument 'queu'"):
        JobSpec("t", options={"queu": "q"})  # type: ignore[arg-type]


def test_a_job_spec_can_be_copied_with_a_change() -> None:
    spec = JobSpec("t", {"n": 1}, queue="q", delay=5)

    changed = dataclasses.replace(spec, task="u")

    assert (changed.task, changed.args, changed.options) == ("u", {"n": 1}, spec.options)
    assert pickle.loads(pickle.dumps(spec)) == spec


# -- only what a worker can run ---------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    """Args ``levels`` deep, the args object counting as the first."""
    inner: list[Any] = []
    args: dict[str, Any] = {"a": inner}
    for _ in range(levels - 2):
        inner.append([])
        inner = inner[0]
    return args


def test_args_nested_as_deep_as_the_limit_are_enqueued_and_one_more_level_is_refused(
    rollback_conn: Conn,
) -> None:
    from pgq.job import MAX_ARGS_DEPTH

    pgq.enqueue(rollback_conn, "t", nested(MAX_ARGS_DEPTH))
    with pytest.raises(InvalidJobError, match="nest more than 100 levels deep"):
        pgq.enqueue(rollback_conn, "t", nested(MAX_ARGS_DEPTH + 1))
    with pytest.raises(InvalidJobError, match="nest more than 100 levels deep"):
        pgq.enqueue_many(rollback_conn, [JobSpec("t", nested(990))])


@pytest.mark.parametrize(
    "run_at",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),  # 1 BC in UTC
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14))),  # year 10000
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(9999, 1, 1, tzinfo=UTC),
    ],
    ids=["1 BC", "year 10000", "before 1970", "9999-01-01"],
)
def test_a_run_at_outside_the_range_every_tool_can_handle_is_refused(
    rollback_conn: Conn, run_at: datetime
) -> None:
    with pytest.raises(InvalidJobError, match="run_at must be from 1970-01-01 to before 9999"):
        pgq.enqueue(rollback_conn, "t", run_at=run_at)


def test_run_at_at_both_ends_of_the_range_is_enqueued(rollback_conn: Conn) -> None:
    first = pgq.enqueue(rollback_conn, "t", run_at=datetime(1970, 1, 1, tzinfo=UTC))
    last = pgq.enqueue(rollback_conn, "t", run_at=datetime(9998, 12, 31, 23, 59, tzinfo=UTC))

    assert fetch_job(rollback_conn, first.id)["run_at"].year == 1970
    assert fetch_job(rollback_conn, last.id)["run_at"].year == 9998


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ["default"]}, "invalid queue name \\['default'\\]"),
        ({"queue": {"a": 1}}, "invalid queue name"),
        ({"dedupe_key": "\ud800"}, "dedupe_key must be a string .* without NUL or lone surrogates"),
        ({"priority": 10**5000}, "priority must be between 0 and"),
    ],
    ids=["queue list", "queue dict", "lone surrogate key", "huge priority"],
)
def test_values_that_used_to_escape_as_other_errors_are_invalid_job_errors(
    rollback_conn: Conn, options: dict[str, Any], message: str
) -> None:
    before = count_jobs(rollback_conn)

    with pytest.raises(InvalidJobError, match=message):
        pgq.enqueue(rollback_conn, "t", **options)

    assert count_jobs(rollback_conn) == before
