"""pgq's security model, checked: no code execution from job data, SQL composed only from
parameters and identifiers, least-privilege roles that hold, metrics on loopback by
default, and DSN passwords that never reach a log, an error or the CLI's output.

docs/security.md describes the model these tests check.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import psycopg.errors
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

import pgq
import pgq.migrate
import pgq.worker.maintenance
from conftest import Databases
from pgcluster import free_port, free_port_run
from pgq import admin
from pgq.cli import app as cli_app
from pgq.queries import query
from pgq.retention import Retention
from pgq.roles import RoleNames, grant_roles
from pgq.worker.scheduler import Scheduler
from worker_helpers import child_pids

Conn = psycopg.Connection[tuple[Any, ...]]

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = REPO_ROOT / "src" / "pgq"
PASSWORD = "s3cr3t-PW"
NO_PGQ_SETTINGS: dict[str, str | None] = {"PGQ_DSN": None, "DATABASE_URL": None, "PGQ_SCHEMA": None}


def source_files() -> list[Path]:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 10, f"pgq's sources not found under {SOURCE}"
    return files


def where(path: Path, node: ast.AST) -> str:
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name
    return f"{shown}:{getattr(node, 'lineno', '?')}"


# -- (a) job data is JSON, never code ------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
                  "jsonpickle"}  # fmt: skip
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def test_no_pickle_marshal_eval_or_exec_anywhere_in_pgq() -> None:
    found: list[str] = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in UNSAFE_CALLS:
                    found.append(f"{where(path, node)}: calls {node.func.id}()")
                continue
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in UNSAFE_CALLS
                and isinstance(node.value, ast.Name)
                and node.value.id in ("builtins", "__builtins__")
            ):
                found.append(f"{where(path, node)}: uses builtins.{node.attr}")
                continue
            else:
                continue
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where(path, node)}: imports {name}")

    assert found == []


def test_job_args_live_in_jsonb_and_pgq_keeps_no_binary_column(rollback_conn: Conn) -> None:
    columns = rollback_conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'pgq' AND data_type IN ('jsonb', 'json', 'bytea')"
        " ORDER BY 1, 2"
    ).fetchall()

    assert ("jobs", "args", "jsonb") in columns
    assert [c for c in columns if c[2] != "jsonb"] == []


# -- (b) SQL is built from parameters and psycopg.sql composition -------------------------------

SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|TRUNCATE)\s")
SQL_SINKS = {"execute", "executemany", "copy", "stream", "SQL"}

# Found by the scan below and reported, not silently allowed: (file, function) -> why.
JUSTIFIED: dict[tuple[str, str], str] = {
    ("migrate.py", "ensure_schema_sql"): (
        "an f-string `CREATE SCHEMA IF NOT EXISTS {schema}` that Alembic's context.execute() "
        "runs. The name passed resolve_schema's ^[a-z_][a-z0-9_]{0,39}$ first, so it cannot "
        "inject, but it breaks the rule that the schema goes through sql.Identifier and "
        "all SQL lives in queries.sql; sql.SQL(...).format(sql.Identifier(schema))"
        ".as_string(None) would keep the rule"
    ),
}


def _literal_text(node: ast.AST) -> str | None:
    """The literal text of a string built with an f-string, % or + (None otherwise)."""
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        parts = [_literal_text(node.left), _literal_text(node.right)]
        if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            parts[0] = node.left.value
        if isinstance(node.right, ast.Constant) and isinstance(node.right.value, str):
            parts[1] = node.right.value
        texts = [p for p in parts if p is not None]
        return "".join(texts) if texts else None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return node.func.value.value  # "...".format(): not sql.SQL("...").format()
    return None


class SqlScan(ast.NodeVisitor):
    """Strings built by formatting that reach an execute(), or that read like SQL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.function = "<module>"
        self.findings: list[tuple[str, str, str]] = []  # (where, function, what)
        self.docstrings: set[int] = set()

    def note(self, node: ast.AST, what: str) -> None:
        self.findings.append((where(self.path, node), self.function, what))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name in SQL_SINKS and node.args and _literal_text(node.args[0]) is not None:
            self.note(node, f"{name}() gets a string built by formatting")
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._check_built(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self._check_built(node)
        self.generic_visit(node)

    def _check_built(self, node: ast.AST) -> None:
        text = _literal_text(node)
        if text and SQL_WORDS.search(text):
            self.note(node, f"SQL built by string formatting: {text[:60]!r}")

    def visit_Constant(self, node: ast.Constant) -> None:
        if (
            isinstance(node.value, str)
            and id(node) not in self.docstrings
            and SQL_WORDS.search(node.value)
        ):
            self.note(node, f"an SQL string outside queries.sql: {node.value[:60]!r}")


def scan(path: Path) -> list[tuple[str, str, str]]:
    tree = ast.parse(path.read_text(), str(path))
    visitor = SqlScan(path)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                visitor.docstrings.add(id(body[0].value))
    visitor.visit(tree)
    return visitor.findings


def test_sql_reaches_the_database_only_through_parameters_and_sql_composition() -> None:
    unexplained, explained = [], set()
    for path in source_files():
        for place, function, what in scan(path):
            key = (path.name, function)
            if key in JUSTIFIED:
                explained.add(key)
            else:
                unexplained.append(f"{place} in {function}(): {what}")

    assert unexplained == []
    # A justification whose code is gone must go too.
    assert explained == set(JUSTIFIED)


def test_the_scan_catches_the_patterns_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(cur, table, n):\n"
        "    cur.execute(f'SELECT * FROM {table}')\n"
        "    cur.execute('DELETE FROM jobs WHERE id = %s' % n)\n"
        "    cur.execute('UPDATE {} SET x = 1'.format(table))\n"
        "    sql.SQL(f'DROP TABLE {table}')\n"
        "    q = 'INSERT INTO jobs VALUES (1)'\n"
    )
    findings = [what for _, _, what in scan(bad)]

    assert len([w for w in findings if "gets a string built by formatting" in w]) == 4
    assert any("SQL string outside queries.sql" in w for w in findings)


# -- (c) least-privilege roles --------------------------------------------------------------------

# Roles are cluster-wide: every role these tests create is named after a random schema
# (pgqsec_<hex>), and dropped at the end of the module, privileges first.


@dataclass
class RoleLab:
    """A database with pgq in a random schema, its three roles, and a login in each."""

    dsn: str  # a superuser's, in this database
    schema: str
    names: RoleNames
    logins: dict[str, str]  # "producer" -> a login role that is a member of it
    created: list[str] = field(default_factory=list)  # every role to drop at the end

    def login_dsn(self, kind: str) -> str:
        return make_conninfo(self.dsn, user=self.logins[kind], password=PASSWORD)

    def connect(self, kind: str, *, autocommit: bool = False) -> Conn:
        return psycopg.connect(self.login_dsn(kind), autocommit=autocommit)

    def superuser(self) -> Conn:
        return psycopg.connect(self.dsn, autocommit=True)

    def q(self, text: str) -> sql.Composed:
        """``text`` with ``{s}`` as the schema, quoted as an identifier."""
        return sql.SQL(text).format(s=sql.Identifier(self.schema))


def create_login(conn: Conn, name: str, *groups: str) -> None:
    conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(name),
            sql.Literal(PASSWORD),
            sql.SQL(", ").join(map(sql.Identifier, groups)),
        )
    )


def drop_roles(dsn: str, roles: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in reversed(roles):  # logins before the groups they belong to
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def migrate_cli(dsn: str, schema: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgq", "migrate", "--dsn", dsn, "--schema", schema],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def lab(databases: Databases) -> Iterator[RoleLab]:
    name = databases.create(template="template0")
    dsn = databases.dsn(name)
    schema = f"pgqsec_{secrets.token_hex(4)}"
    migrate_cli(dsn, schema)
    created: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            names = grant_roles(conn, schema)
            created += [names.producer, names.worker, names.operator]
            logins = {}
            for kind, group in [("producer", names.producer), ("worker", names.worker),
                                ("operator", names.operator)]:  # fmt: skip
                logins[kind] = f"{schema}_{kind}_login"
                created.append(logins[kind])
                create_login(conn, logins[kind], group)
        yield RoleLab(dsn, schema, names, logins, created)
    finally:
        drop_roles(dsn, created)
        databases.drop_later(name)


@pytest.fixture
def jobs(lab: RoleLab) -> dict[str, int]:
    """A queued job due in an hour, a dead one, and a succeeded one, seeded as a superuser."""
    with lab.superuser() as conn:
        ids = {
            state: pgq.enqueue(conn, "sec_ok", {"secret": "card-4242"}, delay=3600,
                               schema=lab.schema).id
            for state in ("queued", "dead", "succeeded")
        }  # fmt: skip
        for state in ("dead", "succeeded"):
            conn.execute(
                lab.q("UPDATE {s}.jobs SET status = %s::text::{s}.job_status, attempts = 1,"
                      " finished_at = now() WHERE id = %s"),
                [state, ids[state]],
            )  # fmt: skip
    return ids


def _claim(conn: Conn, schema: str) -> object:
    params = {"tasks": ["sec_nothing"], "limit": 1, "lease_seconds": 30, "worker": "intruder"}
    return conn.execute(query("claim_jobs", schema), params).fetchall()


SCHEDULES_APP = pgq.App()


@SCHEDULES_APP.periodic("* * * * *", name="sec_every_minute")
def sec_every_minute() -> None:
    """Nothing."""


def _tick_schedules(conn: Conn, schema: str) -> object:
    """What a worker's scheduler does: declare its schedule, and make a tick's job."""
    clock = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
    scheduler = Scheduler(dsn="", schema=schema, schedules=SCHEDULES_APP.schedules,
                          tasks=SCHEDULES_APP.tasks, clock=lambda: clock)  # fmt: skip
    scheduler.tick(conn)
    clock += timedelta(minutes=1)
    return scheduler.tick(conn)


# What each action does, as the role's login runs it (in a transaction rolled back after).
ACTIONS: dict[str, Callable[[Conn, RoleLab, dict[str, int]], object]] = {
    "check_schema": lambda c, lab, j: pgq.migrate.check_schema(c, schema=lab.schema),
    "enqueue": lambda c, lab, j: pgq.enqueue(c, "sec_ok", {"n": 1}, schema=lab.schema),
    "enqueue_dedupe": lambda c, lab, j: [
        pgq.enqueue(c, "sec_ok", dedupe_key="k", schema=lab.schema) for _ in range(2)
    ],
    "enqueue_many": lambda c, lab, j: pgq.enqueue_many(
        c, [pgq.JobSpec("sec_ok"), pgq.JobSpec("sec_ok", dedupe_key="k2")], schema=lab.schema
    ),
    "enqueue_many_count": lambda c, lab, j: pgq.enqueue_many(
        c, [pgq.JobSpec("sec_ok")], schema=lab.schema, return_ids=False
    ),
    "enqueue_sql": lambda c, lab, j: c.execute(lab.q("SELECT * FROM {s}.enqueue('sec_ok')")),
    "read_args": lambda c, lab, j: c.execute(lab.q("SELECT args FROM {s}.jobs")).fetchall(),
    "update": lambda c, lab, j: c.execute(
        lab.q("UPDATE {s}.jobs SET priority = 9 WHERE id = %s"), [j["queued"]]
    ),
    "delete": lambda c, lab, j: c.execute(lab.q("DELETE FROM {s}.jobs WHERE id = %s"), [j["dead"]]),
    "claim": lambda c, lab, j: _claim(c, lab.schema),
    "stats": lambda c, lab, j: admin.queue_stats(c, schema=lab.schema),
    "tick_schedules": lambda c, lab, j: _tick_schedules(c, lab.schema),
    "list_schedules": lambda c, lab, j: admin.schedules(c, schema=lab.schema),
    "requeue": lambda c, lab, j: admin.requeue(c, j["dead"], schema=lab.schema),
    "requeue_dead": lambda c, lab, j: admin.requeue_dead(
        c, admin.DeadJobFilter(task="sec_ok"), schema=lab.schema
    ),
    "cancel": lambda c, lab, j: admin.cancel(c, j["queued"], schema=lab.schema),
    "retry_now": lambda c, lab, j: admin.retry_now(c, j["queued"], schema=lab.schema),
    "prune": lambda c, lab, j: admin.prune(c, "succeeded", 0, schema=lab.schema),
}
# From the grant_roles block of queries.sql: which role may do what.
ALLOWED = {
    "producer": {
        "check_schema",
        "enqueue",
        "enqueue_dedupe",
        "enqueue_many",
        "enqueue_many_count",
        "enqueue_sql",
    },
    "worker": {
        "check_schema",
        "read_args",
        "update",
        "delete",
        "claim",
        "stats",
        "prune",
        "tick_schedules",
    },
    # Operators read the schedules; only workers make ticks.
    "operator": set(ACTIONS) - {"tick_schedules"},
}


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("kind", list(ALLOWED))
def test_each_role_may_do_exactly_what_its_grants_say(
    lab: RoleLab, jobs: dict[str, int], kind: str, action: str
) -> None:
    conn = lab.connect(kind)
    try:
        conn.execute("SELECT 1")  # inside a transaction: admin's own ones become savepoints
        if action in ALLOWED[kind]:
            ACTIONS[action](conn, lab, jobs)
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ACTIONS[action](conn, lab, jobs)
    finally:
        conn.rollback()
        conn.close()


SEC_APP = pgq.App()
QUICK = pgq.Retry(base_seconds=0.05, cap_seconds=0.05)


@SEC_APP.task(name="sec_ok")
def sec_ok(n: int = 0, secret: str = "") -> None:
    """Succeeds."""


@SEC_APP.task(name="sec_flaky", retry=QUICK)
def sec_flaky(ctx: pgq.JobContext) -> None:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails on purpose")


@SEC_APP.task(name="sec_doomed", max_attempts=2, retry=QUICK)
def sec_doomed() -> None:
    raise RuntimeError("fails every time")


class NoJitter:
    """Stands in for the random module in pgq.worker.maintenance: the first sweeps run at once."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return low


def test_a_worker_login_runs_jobs_end_to_end_retries_kills_rescues_and_prunes(
    lab: RoleLab, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"e2e_{secrets.token_hex(3)}"
    with lab.superuser() as root:
        # A job whose worker died holding it, and a succeeded job past its retention.
        stale = pgq.enqueue(root, "sec_ok", queue=queue, schema=lab.schema).id
        old = pgq.enqueue(root, "sec_ok", queue=queue, schema=lab.schema).id
        root.execute(
            lab.q("UPDATE {s}.jobs SET status = 'running', attempts = 1, started_at = now(),"
                  " locked_until = now() - interval '1 minute', locked_by = 'dead-host:1:x',"
                  " lease_token = gen_random_uuid() WHERE id = %s"),
            [stale],
        )  # fmt: skip
        root.execute(
            lab.q("UPDATE {s}.jobs SET status = 'succeeded', attempts = 1,"
                  " finished_at = now() - interval '2 hours' WHERE id = %s"),
            [old],
        )  # fmt: skip
    with lab.connect("producer") as producer:
        ids = {
            task.name: task.enqueue(producer, queue=queue, schema=lab.schema).id
            for task in (sec_ok, sec_flaky, sec_doomed)
        }
        unknown = pgq.enqueue(producer, "sec_no_worker_knows_this", queue=queue, schema=lab.schema)
        ids["sec_no_worker_knows_this"] = unknown.id
    monkeypatch.setattr(pgq.worker.maintenance, "random", NoJitter)
    metrics_port = free_port()
    worker = pgq.Worker(
        SEC_APP, lab.login_dsn("worker"), schema=lab.schema, queues={queue: None},
        poll_seconds=0.1, lease_seconds=2, rescue_interval_seconds=1,
        retention=Retention(succeeded_seconds=3600, cancelled_seconds=None, dead_seconds=None),
        metrics_port=metrics_port, shutdown_grace_seconds=5,
    )  # fmt: skip

    def states() -> dict[int, tuple[str, int]]:
        with lab.superuser() as root:
            rows = root.execute(
                lab.q("SELECT id, status::text, attempts FROM {s}.jobs WHERE queue = %s"), [queue]
            ).fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    expected = {
        ids["sec_ok"]: ("succeeded", 1),
        ids["sec_flaky"]: ("succeeded", 2),
        ids["sec_doomed"]: ("dead", 2),
        ids["sec_no_worker_knows_this"]: ("queued", 0),  # never claimed
        stale: ("succeeded", 2),  # rescued (the crashed attempt counts), then run
    }  # and `old` pruned

    async def scenario() -> tuple[dict[int, tuple[str, int]], str]:
        running = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 30
            while (now := await asyncio.to_thread(states)) != expected:
                assert not running.done(), running.result()
                assert time.monotonic() < deadline, f"jobs are {now}, expected {expected}"
                await asyncio.sleep(0.1)
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            return now, page.decode()
        finally:
            worker.request_stop()
            await asyncio.wait_for(running, 30)

    with caplog.at_level("WARNING", logger="pgq"):
        final, metrics = asyncio.run(scenario())

    assert final == expected
    # The queue gauges come from refresh_queue_stats, run as the worker login.
    assert f'pgq_queue_due_jobs{{queue="{queue}"}} 1.0' in metrics
    # The background parts' loggers (metrics, maintenance, heartbeat, reconnects), and any
    # claim, LISTEN or write that failed. Job failures (sec_flaky, sec_doomed) are expected.
    complaints = [
        r.getMessage() for r in caplog.records
        if r.name in ("pgq.metrics", "pgq.maintenance", "pgq.lease", "pgq.connection")
        or "failed:" in r.getMessage() or "denied" in r.getMessage()
        or "connection lost" in r.getMessage()
    ]  # fmt: skip
    assert complaints == []


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args), env=NO_PGQ_SETTINGS)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


def test_an_operator_login_runs_the_operators_commands(lab: RoleLab, jobs: dict[str, int]) -> None:
    op = ["--dsn", lab.login_dsn("operator"), "--schema", lab.schema]

    assert cli("stats", *op, "--all")[0] == 0
    assert cli("jobs", *op, "--status", "dead")[0] == 0
    code, text = cli("job", str(jobs["queued"]), *op, "--json")
    assert code == 0 and "card-4242" in text  # operators may read args
    code, text = cli("requeue", str(jobs["dead"]), *op)
    assert code == 0 and f"job {jobs['dead']}: requeued" in text, text
    code, text = cli("cancel", str(jobs["queued"]), *op)
    assert code == 0 and f"job {jobs['queued']}: cancelled" in text, text
    code, text = cli("prune", *op, "--older-than", "0s", "--status", "succeeded", "--yes")
    assert code == 0 and re.search(r"pruned [1-9]\d* succeeded jobs?", text), text
    with lab.connect("operator", autocommit=True) as conn:
        assert admin.get_job(conn, jobs["dead"], schema=lab.schema).status == "queued"
        admin.retry_now(conn, jobs["dead"], schema=lab.schema)


@pytest.mark.parametrize("kind", ["producer", "worker"])
@pytest.mark.parametrize("command", ["requeue", "cancel"])
def test_producer_and_worker_logins_cannot_requeue_or_cancel_from_the_cli(
    lab: RoleLab, jobs: dict[str, int], kind: str, command: str
) -> None:
    target = jobs["dead"] if command == "requeue" else jobs["queued"]
    with lab.superuser() as root:
        before = root.execute(lab.q("SELECT * FROM {s}.jobs ORDER BY id")).fetchall()

    result = CliRunner().invoke(
        cli_app, [command, str(target), "--dsn", lab.login_dsn(kind), "--schema", lab.schema],
        env=NO_PGQ_SETTINGS,
    )  # fmt: skip

    assert result.exit_code != 0
    assert "permission denied" in str(result.exception) + result.output
    with lab.superuser() as root:
        assert root.execute(lab.q("SELECT * FROM {s}.jobs ORDER BY id")).fetchall() == before


@pytest.mark.parametrize("command", [["stats"], ["jobs"], ["requeue", "--all-dead"]])
def test_a_login_without_the_operator_role_gets_one_clear_line_from_the_cli(
    lab: RoleLab, command: list[str]
) -> None:
    result = CliRunner().invoke(
        cli_app, [*command, "--dsn", lab.login_dsn("producer"), "--schema", lab.schema],
        env=NO_PGQ_SETTINGS,
    )  # fmt: skip

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "permission denied" in result.output
    assert lab.names.operator in " ".join(result.output.split())


# What a producer could write by INSERTing into the table itself, past pgq.enqueue().
FORGED_ROWS = {
    "a_running_job_with_a_forged_lease": (
        "INSERT INTO {s}.jobs (task, status, locked_until, lease_token, locked_by)"
        " VALUES ('sec_ok', 'running', now(), gen_random_uuid(), 'forged-worker')"
    ),
    "a_dead_job_with_a_forged_history": (
        "INSERT INTO {s}.jobs (task, status, finished_at, last_error, errors)"
        " VALUES ('sec_ok', 'dead', now(), 'forged', '[{{\"by\": \"an operator\"}}]')"
    ),
    "an_id_of_its_choosing": (
        # The identity sequence reaches this id later: from then on every enqueue fails
        # with a unique violation until the sequence passes it.
        "INSERT INTO {s}.jobs (id, task) OVERRIDING SYSTEM VALUE VALUES (1000000, 'sec_ok')"
    ),
    "args_over_the_size_limit": (
        "INSERT INTO {s}.jobs (task, args)"
        " VALUES ('sec_ok', jsonb_build_object('blob', repeat('x', 5 * 1024 * 1024)))"
    ),
}


@pytest.mark.parametrize("statement", list(FORGED_ROWS.values()), ids=list(FORGED_ROWS))
def test_the_producer_can_only_write_what_enqueue_would(lab: RoleLab, statement: str) -> None:
    conn = lab.connect("producer")
    try:
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.CheckViolation)):
            conn.execute(lab.q(statement))
    finally:
        conn.rollback()
        conn.close()


def privileges(dsn: str, schema: str) -> list[tuple[str, str, str]]:
    """Every grant on the schema, its relations, columns and functions, with the schema's
    name replaced by S (so two schemas' grants compare equal). All text: a UNION with a
    ``name`` column would cut the functions' signatures at 63 bytes."""
    statement = """
        SELECT 'schema'::text, a.grantee::regrole::text, a.privilege_type
        FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = %(s)s
        UNION ALL
        SELECT c.relname::text, a.grantee::regrole::text, a.privilege_type
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
        WHERE n.nspname = %(s)s
        UNION ALL
        SELECT c.relname || '.' || att.attname, a.grantee::regrole::text, a.privilege_type
        FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a
        WHERE n.nspname = %(s)s
        UNION ALL
        SELECT p.oid::regprocedure::text, a.grantee::regrole::text, a.privilege_type
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
             aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE n.nspname = %(s)s
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(statement, {"s": schema}).fetchall()
    return sorted(tuple(str(v).replace(schema, "S") for v in row) for row in rows)  # type: ignore[misc]


def test_roles_are_idempotent_and_revoke_functions_from_public(lab: RoleLab) -> None:
    before = privileges(lab.dsn, lab.schema)

    with lab.superuser() as conn:
        assert grant_roles(conn, lab.schema) == lab.names
    code, text = cli("roles", "--dsn", lab.dsn, "--schema", lab.schema)

    assert code == 0 and f"roles ready: {lab.names.producer}" in text
    assert privileges(lab.dsn, lab.schema) == before
    # No function is executable by PUBLIC (grantee "-"): only by its owner and the roles.
    # PUBLIC reads only the task defaults every enqueue needs (revision 0006).
    assert sorted(row for row in before if row[1] == "-") == [
        ("tasks.name", "-", "SELECT"), ("tasks.priority", "-", "SELECT"),
        ("tasks.queue", "-", "SELECT"),
    ]  # fmt: skip


def test_roles_sql_applied_with_psql_grants_exactly_what_grant_roles_does(lab: RoleLab) -> None:
    other = f"{lab.schema}_b"
    lab.created += [f"{other}_producer", f"{other}_worker", f"{other}_operator"]
    pgq.migrate.migrate(lab.dsn, schema=other)
    code, script = 0, CliRunner().invoke(cli_app, ["roles", "--sql", "--schema", other]).output

    applied = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", lab.dsn],
        input=script, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert code == 0 and applied.returncode == 0, applied.stderr
    assert privileges(lab.dsn, other) == privileges(lab.dsn, lab.schema)
    with lab.superuser() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE %s ORDER BY 1",
            [f"{other}\\_%"],
        ).fetchall()
    assert rows == [(f"{other}_{kind}", False) for kind in ("operator", "producer", "worker")]


def test_applying_the_roles_takes_execute_away_from_roles_that_relied_on_public(
    lab: RoleLab,
) -> None:
    other = f"{lab.schema}_c"
    legacy = f"{other}_legacy_app"
    lab.created += [f"{other}_producer", f"{other}_worker", f"{other}_operator", legacy]
    pgq.migrate.migrate(lab.dsn, schema=other)
    enqueue = sql.SQL("SELECT * FROM {}.enqueue('sec_ok')").format(sql.Identifier(other))
    with lab.superuser() as conn:
        # How an application role was set up before pgq had roles: table grants only.
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(legacy), sql.Literal(PASSWORD)))  # fmt: skip
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r};"
                             " GRANT SELECT, INSERT ON {s}.jobs TO {r}").format(
            s=sql.Identifier(other), r=sql.Identifier(legacy)))  # fmt: skip
    legacy_dsn = make_conninfo(lab.dsn, user=legacy, password=PASSWORD)
    with psycopg.connect(legacy_dsn) as app_conn:
        app_conn.execute(enqueue)  # allowed: functions are executable by PUBLIC by default
        app_conn.rollback()

        with lab.superuser() as conn:
            names = grant_roles(conn, other)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function enqueue"):
            app_conn.execute(enqueue)
        app_conn.rollback()

        with lab.superuser() as conn:
            conn.execute(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(names.producer), sql.Identifier(legacy)))  # fmt: skip
        app_conn.execute(enqueue)  # the fix: grant the producer role
        app_conn.rollback()


# -- (d) metrics on loopback, (e) no password anywhere --------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # per-word byte order
            packed = b"".join(words)
            found.add(".".join(str(b) for b in packed) if len(packed) == 4 else packed.hex())
    return found


@dataclass(frozen=True)
class Run:
    """One `pgq` command run for the password tests."""

    argv: list[str]
    env: dict[str, str]
    stop_when: str | None = None  # SIGTERM once the output shows this (a worker that started)
    metrics_ports: tuple[int, ...] = ()


@dataclass
class Ran:
    code: int | None
    output: str
    listeners: dict[int, set[str]]
    child_cmdlines: list[str]


def dsns(good: str) -> dict[str, str]:
    """The test's DSN in every shape the runs use, each with PASSWORD in it."""
    params = {k: str(v) for k, v in conninfo_to_dict(good).items() if v is not None}
    user = quote(params.get("user", "postgres"), safe="")
    host = quote(params.get("host", "127.0.0.1"), safe="")
    port, dbname = params.get("port", "5432"), quote(params["dbname"], safe="")
    closed = free_port()

    def url(port: int | str, db: str, tail: str = "") -> str:
        return f"postgresql://{user}:{PASSWORD}{tail}@{host}:{port}/{db}"

    return {
        "unreachable_kv": make_conninfo(good, port=closed, password=PASSWORD, connect_timeout=2),
        "unreachable_url": url(closed, dbname) + "?connect_timeout=2",
        "no_such_db_kv": make_conninfo(good, dbname="pgq_no_such_db", password=PASSWORD),
        "no_such_db_url": url(port, "pgq_no_such_db"),
        "unparsable_kv": f"host=127.0.0.1 password={PASSWORD} nonsense",
        "unparsable_url": url(port, dbname, tail="%zz"),
        "good_kv": make_conninfo(good, password=PASSWORD),
        "good_url": url(port, dbname),
    }


WORK = ["work", "tests.apps.ledger:app", "--poll-seconds", "0.2"]
# (command, target): which commands meet which DSNs. test_migrate.py and test_cli_admin.py
# cover the operators' commands and `pgq migrate` against unreachable servers already.
PASSWORD_RUNS: list[tuple[str, str]] = [
    ("migrate", "no_such_db_url"), ("migrate", "unparsable_kv"), ("migrate", "unparsable_url"),
    ("migrate", "good_kv"), ("migrate --current", "good_url"),
    ("stats", "unreachable_url"), ("stats", "no_such_db_kv"), ("stats", "unparsable_url"),
    ("stats", "good_url"),
    ("work text", "unreachable_kv"), ("work text", "no_such_db_url"),
    ("work text", "unparsable_url"), ("work text", "good_kv"),
    ("work json", "unreachable_url"), ("work json", "no_such_db_kv"),
    ("work json", "unparsable_kv"), ("work json", "good_url"),
    ("work --processes 2", "good_kv"),
    ("demo", "unparsable_url"), ("demo", "unreachable_kv"),
]  # fmt: skip
PASSWORD_BUGS: dict[tuple[str, str], str] = {}  # every bug it found is fixed


def run_for(command: str, target: str, dsn: str) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in NO_PGQ_SETTINGS}
    env["COLUMNS"] = "200"
    argv = [sys.executable, "-m", "pgq"]
    if command.startswith("work"):
        good = target.startswith("good")
        ports: tuple[int, ...] = ()
        extra = ["--log-format", "json" if command == "work json" else "text"]
        if good:
            processes = 2 if "--processes" in command else 1
            port = free_port_run(processes)
            ports = tuple(range(port, port + processes))
            extra += ["--metrics-port", str(port)]  # and no --metrics-host: the default
        if "--processes" in command:
            # The documented way: the DSN in PGQ_DSN, not in argv. The supervisor hands it to
            # its children in $PGQ_WORKER_CHILD, not on their command lines either.
            env["PGQ_DSN"] = dsn
            return Run([*argv, *WORK, *extra, "--processes", "2"], env,
                       stop_when="metrics on", metrics_ports=ports)  # fmt: skip
        stop = "metrics on" if good else "database unreachable"
        return Run([*argv, *WORK, *extra, "--dsn", dsn], env, stop_when=stop, metrics_ports=ports)
    return Run([*argv, *command.split(), "--dsn", dsn], env)


def execute_runs(runs: dict[str, Run], log_dir: Path, parallel: int = 6) -> dict[str, Ran]:
    """Run them all, ``parallel`` at a time (starting Python is what takes the time).

    A worker is stopped with SIGTERM once its output shows ``stop_when`` (after noting what
    listens on its metrics ports and its children's command lines), or after a minute.
    """
    pending = list(runs.items())
    running: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    results: dict[str, Ran] = {}
    listeners: dict[str, dict[int, set[str]]] = {}
    children: dict[str, list[str]] = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, run = pending.pop(0)
                log = log_dir / f"{len(results) + len(running)}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        run.argv, env=run.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                running[name] = (process, log, time.monotonic())
            for name, (process, log, began) in list(running.items()):
                run, text = runs[name], log.read_text(errors="replace")
                if process.poll() is not None:
                    results[name] = Ran(process.returncode, text, listeners.get(name, {}),
                                        children.get(name, []))  # fmt: skip
                    del running[name]
                    continue
                age = time.monotonic() - began
                ready = run.stop_when and text.count(run.stop_when) >= len(run.metrics_ports or [0])
                if name not in listeners and (ready or age > 60):
                    listeners[name] = {p: listening_addresses(p) for p in run.metrics_ports}
                    children[name] = [
                        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                        for pid in child_pids(process.pid)
                    ]
                    process.send_signal(signal.SIGTERM)
                if age > 120:
                    os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.05)
    finally:
        for process, _, _ in running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return results


@pytest.fixture(scope="module")
def password_runs(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], Ran]]:
    name = databases.create(template=databases.template)
    shapes = dsns(databases.dsn(name))
    runs = {f"{c}|{t}": run_for(c, t, shapes[t]) for c, t in PASSWORD_RUNS}
    done = execute_runs(runs, tmp_path_factory.mktemp("password-runs"))
    yield {(c, t): done[f"{c}|{t}"] for c, t in PASSWORD_RUNS}
    databases.drop_later(name)


def password_params() -> list[Any]:
    params = []
    for command, target in PASSWORD_RUNS:
        reason = PASSWORD_BUGS.get((command, target))
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {reason}")] if reason else []
        params.append(
            pytest.param(command, target, id=f"{command.replace(' ', '_')}-{target}", marks=marks)
        )
    return params


@pytest.mark.parametrize(("command", "target"), password_params())
def test_no_command_prints_the_dsn_password(
    password_runs: dict[tuple[str, str], Ran], command: str, target: str
) -> None:
    ran = password_runs[command, target]

    assert PASSWORD not in ran.output
    assert "Traceback" not in ran.output, ran.output[-3000:]
    if target.startswith("good"):
        assert ran.code == 0, ran.output[-3000:]
    else:
        assert ran.code == 1, ran.output[-3000:]
        assert "error" in ran.output.lower()


@pytest.mark.parametrize("command", ["work text", "work json", "work --processes 2"])
def test_the_metrics_server_listens_on_loopback_only_by_default(
    password_runs: dict[tuple[str, str], Ran], command: str
) -> None:
    # test_metrics.py checks the same for one worker; here also each supervised child.
    ran = password_runs[command, "good_kv" if command != "work json" else "good_url"]

    assert ran.listeners, ran.output[-3000:]
    assert all(found == {"127.0.0.1"} for found in ran.listeners.values()), ran.listeners


def test_supervised_workers_get_the_dsn_from_the_environment_not_their_command_line(
    password_runs: dict[tuple[str, str], Ran],
) -> None:
    ran = password_runs["work --processes 2", "good_kv"]

    assert len(ran.child_cmdlines) == 2, ran.output[-3000:]
    for cmdline in ran.child_cmdlines:
        assert cmdline.split()[1:] == ["-m", "pgq", "work-child"]
        assert PASSWORD not in cmdline


def test_pgq_web_does_everything_it_offers_as_an_operator_login(
    lab: RoleLab, jobs: dict[str, int], serve: Callable[..., str]
) -> None:
    from pgq.web import create_app

    base = serve(app=create_app(lab.login_dsn("operator"), token=None, schema=lab.schema))

    answers = {
        "enqueue": httpx.post(base + "/api/jobs", json={"task": "sec_ok", "dedupe_key": "k"}),
        "list": httpx.get(base + "/api/jobs?q=card-4242"),
        "detail": httpx.get(base + f"/api/jobs/{jobs['dead']}"),
        "requeue": httpx.post(base + f"/api/jobs/{jobs['dead']}/requeue"),
        "cancel": httpx.post(base + "/api/jobs/cancel", json={"ids": [jobs["queued"]]}),
        "delete": httpx.post(base + "/api/jobs/delete", json={"ids": [jobs["succeeded"]]}),
        "stats": httpx.get(base + "/api/stats"),
        "metrics": httpx.get(base + "/metrics"),
        "health": httpx.get(base + "/health"),
        "overview": httpx.get(base + "/"),
        "dead page": httpx.get(base + "/dead"),
        "job page": httpx.get(base + f"/jobs/{jobs['dead']}"),
        "progress": httpx.get(base + f"/fragments/jobs/{jobs['dead']}/progress"),
        "workers": httpx.get(base + "/api/workers"),
        "workers page": httpx.get(base + "/workers"),
        "schedules": httpx.get(base + "/api/schedules"),
        "schedules page": httpx.get(base + "/schedules"),
    }
    enqueued = answers["enqueue"].json()["id"]
    answers["cancel one"] = httpx.post(base + f"/api/jobs/{enqueued}/cancel")

    refused = {name: a.text for name, a in answers.items() if a.status_code not in (200, 201)}
    assert refused == {}


def test_pgq_web_as_a_producer_login_says_it_needs_the_operator_role(
    lab: RoleLab, serve: Callable[..., str]
) -> None:
    from pgq.web import create_app

    base = serve(app=create_app(lab.login_dsn("producer"), token=None, schema=lab.schema))

    response = httpx.get(base + "/api/stats")

    assert response.status_code == 403
    assert f"needs {lab.schema}_operator" in response.json()["error"]
