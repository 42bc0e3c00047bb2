"""pgq through a real PgBouncer in transaction pooling mode (tests/pgbouncer.py).

Every test starts its own PgBouncer (pool of 3 server connections, lent in turn:
a client's consecutive transactions land on different server connections) in
front of its own fresh database. Application connections use what psycopg
needs there, ``prepare_threshold=None``; workers run ``pgq work --poll-only``.
Every check reads the database directly, not through the bouncer.

docs/howto/pgbouncer.md states what these tests show.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from typer.testing import CliRunner

import pgq
import pgq.migrate
import pgq.roles
from pgbouncer import PgBouncer, PgBouncerError, PoolMode
from pgq.cli import app as cli_app
from pgq.enqueue import ENQUEUE_MANY_CHUNK
from worker_helpers import (
    REPO_ROOT,
    WorkerProcesses,
    all_succeeded,
    count_where,
    create_ledger,
    jobs_by_id,
    ledger_rows,
    listeners,
    scalar,
    status_counts,
    stop,
    wait_until,
    worker_pid_pattern,
)

Conn = psycopg.Connection[tuple[Any, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

app = pgq.App()


@app.task(queue="reports", max_attempts=7)
def build_report(n: int = 0) -> None: ...


def start_bouncer(
    admin_dsn: str, *, pool_mode: PoolMode = "transaction", pool_size: int = 3
) -> PgBouncer:
    """A started PgBouncer; the test fails (never skips) if PgBouncer is missing."""
    try:
        bouncer = PgBouncer(admin_dsn, pool_mode=pool_mode, pool_size=pool_size)
    except PgBouncerError as error:
        problem = str(error)  # failed below, not here: the message alone, no chained traceback
    else:
        try:
            bouncer.start()
            return bouncer
        except PgBouncerError as error:
            bouncer.cleanup()
            problem = str(error)
    pytest.fail(problem)


@pytest.fixture
def bouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode, pool of 3, in front of this run's server."""
    started = start_bouncer(pg_admin_dsn)
    try:
        yield started
    finally:
        print(started.log())  # shown by pytest when the test failed
        started.cleanup()


@pytest.fixture
def pooled_dsn(bouncer: PgBouncer, dsn: str) -> str:
    """This test's database through the bouncer, its pool warm (3 server connections)."""
    bouncer.warm_up(dsn)
    return bouncer.dsn(dsn)


# What an application connection through PgBouncer < 1.21 in transaction mode needs,
# prepare_threshold=None: psycopg prepares a statement after 5 runs, and the next
# transaction may be served by a server connection that never saw it.


def connect(dsn: str, *, autocommit: bool = False) -> Conn:
    return psycopg.connect(dsn, autocommit=autocommit, prepare_threshold=None)


async def connect_async(dsn: str, *, autocommit: bool = False) -> AsyncConn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, prepare_threshold=None)


def jobs(direct_dsn: str) -> list[dict[str, Any]]:
    """Every job, read on a direct connection: id, task, queue, args, dedupe key, delayed."""
    with psycopg.connect(direct_dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id, task, queue, args, max_attempts, dedupe_key, status::text AS status,"
            " run_at > now() + interval '30 seconds' AS delayed FROM pgq.jobs ORDER BY id"
        ).fetchall()


def scalar_of(conn: Conn, statement: str) -> Any:
    row = conn.execute(statement).fetchone()
    assert row is not None
    return row[0]


def dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


# -- the lane itself ---------------------------------------------------------------------------


def test_transactions_move_between_server_connections_and_prepared_statements_break(
    bouncer: PgBouncer, dsn: str, pooled_dsn: str
) -> None:
    """What the other tests rely on: the pool really pools, as in production under load."""
    assert bouncer.server_connections(dbname(dsn)) == 3
    with connect(pooled_dsn, autocommit=True) as conn:
        backends = {scalar_of(conn, "SELECT pg_backend_pid()") for _ in range(6)}
    assert len(backends) == 3, "consecutive transactions were served by all three"

    # psycopg's default (prepare after 5 runs) fails here: why connect() turns it off.
    with psycopg.connect(pooled_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="does not exist"):
            for n in range(10):
                conn.execute("SELECT %s::int", [n])


def test_a_missing_pgbouncer_fails_with_the_install_command(
    pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pgbouncer.find_pgbouncer", lambda: None)
    with pytest.raises(PgBouncerError, match=r"apt-get install -y pgbouncer"):
        PgBouncer(pg_admin_dsn)


# -- every way to enqueue ----------------------------------------------------------------------


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_every_single_job_enqueue_route_stores_its_job(
    dsn: str, pooled_dsn: str, autocommit: bool
) -> None:
    async def enqueue_async() -> list[int]:
        async with await connect_async(pooled_dsn, autocommit=autocommit) as aconn:
            ids = [
                (await pgq.enqueue_async(aconn, "send", {"via": "enqueue_async"})).id,
                (await build_report.enqueue_async(aconn, {"n": 2})).id,
            ]
            if not autocommit:
                await aconn.commit()
            return ids

    with connect(pooled_dsn, autocommit=autocommit) as conn:
        plain = pgq.enqueue(conn, "send", {"via": "enqueue"}, queue="emails")
        first = pgq.enqueue(conn, "send", {"via": "dedupe"}, dedupe_key="order:1")
        again = pgq.enqueue(conn, "send", {"via": "dedupe again"}, dedupe_key="order:1")
        task = build_report.enqueue(conn, {"n": 1})
        row = conn.execute(
            "SELECT id, created FROM pgq.enqueue('send', '{\"via\": \"sql\"}', queue => 'sql')"
        ).fetchone()
        assert row is not None
        if not autocommit:
            conn.commit()
    async_ids = asyncio.run(enqueue_async())

    assert first.created and not again.created and again.id == first.id
    stored = {job["id"]: job for job in jobs(dsn)}
    assert set(stored) == {plain.id, first.id, task.id, row[0], *async_ids}
    assert stored[plain.id]["queue"] == "emails"
    assert stored[first.id]["args"] == {"via": "dedupe"}
    assert stored[first.id]["dedupe_key"] == "order:1"
    # The task's own queue; max_attempts is left to the task, for the first claim to read.
    assert (stored[task.id]["queue"], stored[task.id]["max_attempts"]) == ("reports", None)
    assert stored[row[0]]["queue"] == "sql"
    assert [stored[i]["task"] for i in async_ids] == ["send", "build_report"]
    assert {job["status"] for job in stored.values()} == {"queued"}


def bulk_specs(tag: str) -> tuple[list[pgq.JobSpec], list[pgq.JobSpec]]:
    """Jobs that COPY straight into jobs, and jobs that go through the staging table."""
    plain = [pgq.JobSpec("bulk", {"tag": tag, "n": n}) for n in range(300)]
    staged = [
        pgq.JobSpec("bulk", {"tag": tag, "n": n}, dedupe_key=f"{tag}:{n % 150}", delay=60)
        for n in range(300)
    ]
    return plain, staged


@pytest.mark.parametrize("return_ids", [True, False], ids=["ids", "count"])
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_enqueue_many_stores_every_job(
    dsn: str, pooled_dsn: str, driver: str, autocommit: bool, return_ids: bool
) -> None:
    """Through every path: the staging table (keys, delay) and straight COPY (count, no keys).

    On an autocommit connection each call is a transaction of its own, so its
    staging table must be created in that transaction, on that server connection.
    The staged call goes first: a later call could find a table an earlier one
    left in the session, and pass by luck.
    """
    plain, staged = bulk_specs(driver)

    async def run_async() -> list[list[int] | int]:
        async with await connect_async(pooled_dsn, autocommit=autocommit) as aconn:
            results = [
                await pgq.enqueue_many_async(aconn, specs, return_ids=return_ids)
                for specs in (staged, plain)
            ]
            if not autocommit:
                await aconn.commit()
            return results

    if driver == "sync":
        with connect(pooled_dsn, autocommit=autocommit) as conn:
            results = [
                pgq.enqueue_many(conn, specs, return_ids=return_ids) for specs in (staged, plain)
            ]
            if not autocommit:
                conn.commit()
    else:
        results = asyncio.run(run_async())

    stored = jobs(dsn)
    assert len(stored) == 150 + 300, "the second 150 of the keyed jobs were duplicates"
    if return_ids:
        assert results == [[job["id"] for job in stored[:150]],
                           [job["id"] for job in stored[150:]]]  # fmt: skip
    else:
        assert results == [150, 300]
    assert all(job["delayed"] for job in stored[:150])
    assert {job["dedupe_key"] for job in stored[:150]} == {f"{driver}:{n}" for n in range(150)}
    assert [job["args"]["n"] for job in stored[150:]] == list(range(300))
    assert not any(job["delayed"] or job["dedupe_key"] for job in stored[150:])


def test_clients_that_take_turns_on_one_server_connection_see_only_their_own_staged_jobs(
    pg_admin_dsn: str, dsn: str
) -> None:
    """The staging table outlives the transaction in the pooled server session: harmless.

    A pool of one: both clients' transactions run on the same server session,
    whose staging table the first call created. Each call's rows are its own,
    also after calls that failed after a whole chunk had gone through the table.
    """
    single = start_bouncer(pg_admin_dsn, pool_size=1)
    try:
        pooled = single.dsn(dsn)
        with connect(pooled, autocommit=True) as first, connect(pooled) as second:
            backends = {scalar_of(c, "SELECT pg_backend_pid()") for c in (first, second)}
            second.commit()
            assert len(backends) == 1, "both clients share one server connection"

            def specs(who: str, round_: int) -> Iterator[pgq.JobSpec]:
                for n in range(50):
                    yield pgq.JobSpec("t", {"who": who, "round": round_}, dedupe_key=f"{who}:{n}")

            def failing(who: str) -> Iterator[pgq.JobSpec]:
                for n in range(ENQUEUE_MANY_CHUNK):  # one chunk staged and moved, then
                    yield pgq.JobSpec("t", {"who": "failed"}, dedupe_key=f"failed:{who}:{n}")
                yield pgq.JobSpec("no spaces allowed in a task name")

            created: list[int] = []
            for round_ in range(3):
                for name, conn in (("first", first), ("second", second)):
                    created += pgq.enqueue_many(conn, specs(f"{name}{round_}", round_))
                    if round_ == 0:
                        with pytest.raises(pgq.InvalidJobError):
                            pgq.enqueue_many(conn, failing(name))
                    if not conn.autocommit:
                        conn.commit()  # what the failed call wrote went with its savepoint
        assert single.server_connections(dbname(dsn)) == 1
    finally:
        single.cleanup()

    stored = jobs(dsn)
    assert [job["id"] for job in stored] == created
    assert len(created) == len(set(created)) == 3 * 2 * 50
    for job in stored:
        assert job["dedupe_key"].startswith(f"{job['args']['who']}:")
        assert job["args"]["who"].endswith(str(job["args"]["round"]))


def test_a_rolled_back_transaction_leaves_no_job(dsn: str, pooled_dsn: str) -> None:
    async def roll_back_async() -> None:
        async with await connect_async(pooled_dsn) as aconn:
            await pgq.enqueue_async(aconn, "send", {"n": 0}, dedupe_key="k")
            await build_report.enqueue_async(aconn)
            await pgq.enqueue_many_async(aconn, bulk_specs("rolled back async")[1])
            await aconn.rollback()

    asyncio.run(roll_back_async())
    with connect(pooled_dsn) as conn:
        pgq.enqueue(conn, "send", {"n": 1})
        pgq.enqueue(conn, "send", {"n": 2}, dedupe_key="k")
        build_report.enqueue(conn)
        pgq.enqueue_many(conn, bulk_specs("rolled back")[1])
        conn.execute("SELECT pgq.enqueue('send')")
        conn.rollback()
        kept = pgq.enqueue(conn, "send", {"n": 3}, dedupe_key="k")
        conn.commit()

    assert kept.created, "the rolled-back job never held the key"
    assert [job["id"] for job in jobs(dsn)] == [kept.id]


# -- workers -----------------------------------------------------------------------------------

POLL_ONLY = ["--poll-only", "--poll-seconds", "0.2", "--log-level", "warning"]


@pytest.mark.parametrize("processes", [1, 2])
def test_pgq_work_poll_only_drains_every_job_once(
    dsn: str, pooled_dsn: str, workers: WorkerProcesses, processes: int
) -> None:
    create_ledger(dsn)
    worker = workers.start(pooled_dsn, "--poll-only", "--poll-seconds", "0.2", "--concurrency",
                           "4", "--processes", str(processes), "--log-level", "info")  # fmt: skip
    # Every process up and polling before the jobs come, so that all of them take some.
    wait_until(lambda: worker.log().count(", polling every 0.2s") == processes, 30,
               lambda: f"{processes} workers started:\n{worker.log()}")  # fmt: skip
    with connect(pooled_dsn) as conn:
        ids = pgq.enqueue_many(
            conn, [pgq.JobSpec("record_after", {"seconds": 0.05}) for _ in range(80)]
        )
        conn.commit()
    wait_until(all_succeeded(dsn, len(ids)), 30, lambda: f"all succeeded: {status_counts(dsn)}")
    assert stop(worker) == 0

    done = ledger_rows(dsn, "done")
    assert sorted(job_id for job_id, _, _ in done) == sorted(ids), "each job ran exactly once"
    assert len({pid for _, _, pid in done}) == processes, "every process took jobs"
    assert count_where(dsn, "attempts <> 1 OR errors <> '[]'") == 0
    assert listeners(dsn) == 0
    assert " ERROR " not in worker.log() and " WARNING " not in worker.log(), worker.log()


def test_an_idle_poll_only_worker_picks_a_new_job_up_within_its_poll_interval(
    dsn: str, pooled_dsn: str, workers: WorkerProcesses
) -> None:
    """No LISTEN, so no wake-up: the wait between commit and start is at most one poll."""
    create_ledger(dsn)
    worker = workers.start(pooled_dsn, "--poll-only", "--poll-seconds", "0.5")
    with connect(pooled_dsn, autocommit=True) as conn:
        pgq.enqueue(conn, "record")
        wait_until(all_succeeded(dsn, 1), 20, "the worker is up")
        for _ in range(4):
            time.sleep(0.3)  # lands anywhere in the worker's poll cycle
            pgq.enqueue(conn, "record")
    wait_until(all_succeeded(dsn, 5), 10, lambda: f"all succeeded: {status_counts(dsn)}")
    assert stop(worker) == 0

    waits = scalar(dsn, "SELECT array_agg(extract(epoch FROM started_at - created_at)::float8)"
                        " FROM pgq.jobs WHERE id > (SELECT min(id) FROM pgq.jobs)")  # fmt: skip
    print(f"waits: {waits}")
    assert len(waits) == 4
    assert max(waits) < 0.5 + 0.3, f"waits of {waits}s: one poll, plus a busy machine's slack"


def test_a_worker_without_poll_only_says_to_use_it(
    dsn: str, pooled_dsn: str, workers: WorkerProcesses
) -> None:
    """Its pool prepares the claim after 5 runs; the next claim reaches a server connection
    that never saw it. The log says what to do."""
    worker = workers.start(pooled_dsn, "--poll-seconds", "0.05")
    hint = "behind PgBouncer in transaction mode? start the worker with --poll-only"
    wait_until(lambda: hint in worker.log(), 20, lambda: f"the hint in the log:\n{worker.log()}")
    assert 'claim failed: prepared statement "_pg3_' in worker.log()


@pytest.mark.slow
def test_jobs_of_a_worker_killed_mid_job_are_rescued_and_all_succeed_exactly_once(
    dsn: str, pooled_dsn: str, workers: WorkerProcesses
) -> None:
    """The fault suite's SIGKILL scenario, with both workers behind the bouncer."""
    create_ledger(dsn)
    options = [*POLL_ONLY, "--concurrency", "4", "--lease-seconds", "2"]
    with connect(pooled_dsn) as conn:
        ids = pgq.enqueue_many(
            conn, [pgq.JobSpec("record_after", {"seconds": 1.0}) for _ in range(8)]
        )
        conn.commit()
    doomed = workers.start(pooled_dsn, *options)
    wait_until(
        lambda: sum(pid == doomed.pid for _, _, pid in ledger_rows(dsn, "start")) == 4, 30,
        "the first worker is in the middle of four jobs",
    )  # fmt: skip
    doomed.kill()  # SIGKILL: no hand back, no outcome written
    killed = {job_id for job_id, job in jobs_by_id(dsn).items()
              if job["status"] == "running" and f":{doomed.pid}:" in job["locked_by"]}  # fmt: skip
    assert killed, "the killed worker held jobs"

    survivor = workers.start(pooled_dsn, *options)
    wait_until(all_succeeded(dsn, len(ids)), 30, lambda: f"all succeeded: {status_counts(dsn)}")
    assert stop(survivor) == 0

    done = ledger_rows(dsn, "done")
    assert sorted(job_id for job_id, _, _ in done) == sorted(ids), "each job finished once"
    by_id = jobs_by_id(dsn)
    for job_id in ids:
        job = by_id[job_id]
        assert job["status"] == "succeeded"
        if job_id in killed:
            assert job["attempts"] == 2, "the crash used up an attempt"
            assert job["last_error"].startswith("worker lost: ")
            assert (job_id, 2, survivor.pid) in done, "finished by the other worker"
        else:
            assert (job["attempts"], job["errors"]) == (1, [])
    assert count_where(dsn, "locked_by LIKE %s", [worker_pid_pattern(doomed)]) == 0


# -- operators' commands -----------------------------------------------------------------------

runner = CliRunner()


def pgq_cli(*args: str) -> str:
    """``pgq ARGS`` in-process; its stdout, once it exited 0."""
    result = runner.invoke(cli_app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result.stdout


def seed_dead_jobs(direct_dsn: str, count: int) -> None:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgq.jobs (task, queue, status, attempts, max_attempts, finished_at,
                                  last_error, errors)
            SELECT 'export', 'reports', 'dead', 1, 1, now() - interval '1 minute',
                   'RuntimeError: boom',
                   jsonb_build_array(jsonb_build_object(
                       'attempt', 1, 'at', now(), 'worker', 'host:1:abc', 'error', 'boom'))
            FROM generate_series(1, %s)
            """,
            [count],
        )


def test_admin_commands_work_through_the_bouncer(dsn: str, pooled_dsn: str) -> None:
    """`pgq requeue --all-dead` runs a page query and a requeue per 500 jobs: 7 pages here,
    more runs of each statement than psycopg's prepare threshold."""
    seed_dead_jobs(dsn, 3_100)
    with connect(pooled_dsn) as conn:
        queued = pgq.enqueue(conn, "send", queue="emails").id
        conn.commit()

    stats = json.loads(pgq_cli("stats", "--dsn", pooled_dsn, "--json", "--all"))
    assert {"queue": "emails", "status": "queued", "jobs": 1} in stats["counts"]
    listed = json.loads(pgq_cli("jobs", "--dsn", pooled_dsn, "--status", "queued", "--json"))
    assert [job["id"] for job in listed] == [queued]
    requeued = pgq_cli("requeue", "--dsn", pooled_dsn, "--all-dead", "--yes")
    assert "requeued 3100 dead jobs" in requeued
    assert status_counts(dsn) == {"queued": 3_101}


# -- migrations --------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_migrations_and_roles_through_the_bouncer(
    bouncer: PgBouncer, empty_dsn: str
) -> None:
    """The migration lock is a session-level advisory lock: through transaction pooling it
    must still be taken and released on one server connection, by one migrator at a time.

    A schema of its own, since the roles `pgq roles` creates are cluster-wide.
    """
    schema = f"pgqbnc_{secrets.token_hex(4)}"
    bouncer.warm_up(empty_dsn)
    pooled = bouncer.dsn(empty_dsn)
    command = [sys.executable, "-m", "pgq", "migrate", "--dsn", pooled, "--schema", schema]
    processes = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT
        )
        for _ in range(3)
    ]
    outputs = [" ".join(process.communicate(timeout=120)[0].split()) for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert sum("none -> " in text for text in outputs) == 1, outputs
    assert sum("already at revision" in text for text in outputs) == 2, outputs
    head = pgq.migrate.head_revision()
    assert pgq.migrate.current_revision(empty_dsn, schema=schema) == head
    locks = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert scalar(empty_dsn, locks) == 0, "no migration lock left in a pooled server session"

    names = pgq.roles.role_names(schema)
    created = [names.producer, names.worker, names.operator]
    try:
        assert "roles ready" in pgq_cli("roles", "--dsn", pooled, "--schema", schema)
        found = scalar(empty_dsn, "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                       [created])  # fmt: skip
        assert found == 3
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            for role in created:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_worker_behind_session_pooling_listens_and_enqueues_through_either_mode_wake_it(
    pg_admin_dsn: str, dsn: str, pooled_dsn: str, workers: WorkerProcesses
) -> None:
    """In session mode a client keeps its server connection: plain `pgq work` (LISTEN,
    prepared statements) works there. An enqueue's NOTIFY is sent by the server at commit,
    so one through transaction pooling wakes it too: no job waits for the 30 s poll."""
    session = start_bouncer(pg_admin_dsn, pool_mode="session", pool_size=20)
    try:
        session_dsn = session.dsn(dsn)
        create_ledger(dsn)
        worker = workers.start(session_dsn, "--poll-seconds", "30", "--log-level", "warning")
        wait_until(lambda: listeners(dsn) == 1, 30, "the worker listens")
        # psycopg's default prepare_threshold is fine in session mode: 8 runs prepare.
        for target, options in ((session_dsn, {}), (pooled_dsn, {"prepare_threshold": None})):
            with psycopg.connect(target, autocommit=True, **options) as conn:
                for _ in range(8):
                    pgq.enqueue(conn, "record")
                    time.sleep(0.05)
        wait_until(all_succeeded(dsn, 16), 10, lambda: f"all succeeded: {status_counts(dsn)}")
        assert stop(worker) == 0
    finally:
        session.cleanup()

    waits = scalar(dsn, "SELECT max(extract(epoch FROM started_at - created_at)) FROM pgq.jobs")
    assert waits < 2, "woken at each commit, not at the next poll"
    assert len(ledger_rows(dsn, "done")) == 16
