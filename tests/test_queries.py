"""Every statement in queries.sql (and demo.sql, bench.sql): each one used, each one prepared
against the real schema; and the claim queries' plans."""

from __future__ import annotations

import ast
import re
import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor, sql

import pgq
from pgq import JobSpec
from pgq.bench import bench_query
from pgq.demo import demo_query
from pgq.queries import Statements, array_literal, query
from pgq.roles import roles_sql

Conn = psycopg.Connection[tuple[Any, ...]]

_PLACEHOLDER = re.compile(r"%\((?P<name>\w+)\)s|%%")


def to_server_syntax(text: str) -> tuple[str, list[str]]:
    """psycopg's ``%(name)s`` placeholders as PostgreSQL's ``$n``, and the names in order."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(replace, text), names


# -- every name used exists, every block is used ------------------------------------------

SRC = Path(pgq.__file__).resolve().parent
STATEMENT_FILES: dict[str, Statements] = {
    "queries.sql": query,
    "demo.sql": demo_query,
    "bench.sql": bench_query,
}
# How src/ names a statement: the callee, which argument holds the name, and the file.
NAMING_CALLS = {
    "query": (0, "queries.sql"),
    "_fetch": (1, "queries.sql"),  # pgq.admin's helper: _fetch(conn, name, schema, params)
    "demo_query": (0, "demo.sql"),
    "bench_query": (0, "bench.sql"),
}


def names_used_in_src() -> dict[str, set[str]]:
    """Statement names that src/pgq passes to a naming call (or QUERIES[...]), by file."""
    used: dict[str, set[str]] = {name: set() for name in STATEMENT_FILES}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        # A naming helper's own body passes the name on (admin._fetch): skip it.
        helpers = [
            node for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name in NAMING_CALLS
        ]  # fmt: skip
        for helper in helpers:
            helper.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = node.func
                name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
                if name in NAMING_CALLS:
                    index, filename = NAMING_CALLS[name]
                    argument = node.args[index] if len(node.args) > index else None
                    assert isinstance(argument, ast.Constant), (
                        f"{path.name}:{node.lineno}: {name}() must name its statement literally"
                    )
                    used[filename].add(str(argument.value))
            elif isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "QUERIES":
                assert isinstance(node.slice, ast.Constant)
                used["queries.sql"].add(str(node.slice.value))
    return used


def test_every_statement_src_names_exists_in_its_file() -> None:
    for filename, names in names_used_in_src().items():
        missing = names - set(STATEMENT_FILES[filename].blocks)
        assert not missing, f"{filename} has no block named {sorted(missing)}"


def test_every_block_is_used_by_src_so_none_lingers_for_tests_alone() -> None:
    for filename, names in names_used_in_src().items():
        unused = set(STATEMENT_FILES[filename].blocks) - names
        assert not unused, f"{filename} blocks nothing in src/pgq uses: {sorted(unused)}"


def test_statement_names_are_verb_noun() -> None:
    verbs = {
        "enqueue", "insert", "create", "copy", "notify", "listen", "disable", "claim", "extend",
        "finish", "lock", "rescue", "try", "release", "read", "find", "probe", "count", "list",
        "get", "delete", "requeue", "cancel", "retry", "prune", "refresh", "grant", "drop", "mark",
        "declare", "advance", "register", "reroute", "touch", "remove", "unlisten", "record",
    }  # fmt: skip
    for filename, statements in STATEMENT_FILES.items():
        for name in statements.blocks:
            assert name.split("_")[0] in verbs and "_" in name, f"{filename}: {name}"


ALL_STATEMENTS = [
    (filename, name) for filename, statements in STATEMENT_FILES.items()
    for name in sorted(statements.blocks)
]  # fmt: skip


def compose(filename: str, name: str) -> sql.SQL | sql.Composed:
    """The statement for schema pgq; identifiers other than {schema}, {channel} get test names."""
    if name == "grant_roles":
        return roles_sql("pgq")  # role names are literals as well as identifiers
    text = STATEMENT_FILES[filename].blocks[name]
    fields = {field for _, field, _, _ in string.Formatter().parse(text) if field}
    extra = fields - {"schema", "channel"}
    return STATEMENT_FILES[filename](
        name, "pgq", **{field: f"pgq_test_unused_{field}" for field in extra}
    )


# How each kind of statement is checked. Statements the server can PREPARE are parsed,
# analysed and planned without running. Utility statements cannot be analysed that way:
# they run (in a transaction that is rolled back) unless they cannot run in one.
_COPY = re.compile(r"^\s*COPY\b", re.IGNORECASE)
_OUTSIDE_TRANSACTION = re.compile(r"^\s*(CREATE|DROP)\s+DATABASE\b", re.IGNORECASE)
_UTILITY = re.compile(
    r"^\s*(CREATE|DROP|ALTER|COMMENT|TRUNCATE|LISTEN|UNLISTEN|SET|RESET|ANALYZE|DO|GRANT|REVOKE)\b",
    re.IGNORECASE,
)
# Blocks that create tables others use (a session's staging table, the demo's
# own table); a setup step must not run anything else (DROP SCHEMA, say).
_DDL = re.compile(r"\bCREATE\s+(TEMPORARY\s+)?TABLE\b", re.IGNORECASE)


def prepare(conn: Conn, name: str, text: str, params: list[str]) -> None:
    result = conn.pgconn.prepare(b"", text.encode(), None)
    error = result.error_message.decode(errors="replace")
    assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, f"{name}: {error}\n{text}"
    described = conn.pgconn.describe_prepared(b"")
    assert described.status == psycopg.pq.ExecStatus.COMMAND_OK
    assert described.nparams == len(params), f"{name}: {params}"


@pytest.mark.parametrize(("filename", "name"), ALL_STATEMENTS)
def test_every_named_statement_prepares_against_the_migrated_schema(
    rollback_conn: Conn, filename: str, name: str
) -> None:
    conn = rollback_conn
    # Statements may rely on tables that other blocks create (a session's staging
    # table, the demo's own table): create those first, in this same transaction.
    for other_file, other in ALL_STATEMENTS:
        text = STATEMENT_FILES[other_file].blocks[other]
        if _DDL.search(text) and not _OUTSIDE_TRANSACTION.match(text) and "%(" not in text:
            conn.execute(compose(other_file, other))
    statement = compose(filename, name)
    server_text, params = to_server_syntax(statement.as_string(conn))

    if _COPY.match(server_text):
        assert params == [], f"{name}: COPY takes no parameters"
        with conn.cursor() as cursor, cursor.copy(statement):
            pass  # zero rows: the table and columns must exist
    elif _OUTSIDE_TRANSACTION.match(server_text):
        prepare(conn, name, server_text, params)  # the syntax, at least
    elif _UTILITY.match(server_text):
        assert params == [], f"{name}: utility statements take no parameters"
        conn.execute(statement)
    else:
        # Every table, column, function, cast and operator must resolve, with
        # parameter types inferred as for a client that sends untyped values. A
        # block holding more than one statement fails here too.
        prepare(conn, name, server_text, params)
    conn.rollback()


# --- claim plans ---------------------------------------------------------------------------

QUEUES = [f"queue_{n}" for n in range(10)]


@pytest.fixture
def busy_conn(conn: Conn) -> Iterator[Conn]:
    """A database with a few thousand due jobs across ten queues, and a long finished history."""
    conn.execute(
        """
        INSERT INTO pgq.jobs (task, queue, priority, status, finished_at)
        SELECT 'task_' || (n % 5), 'queue_' || (n % 10), n % 3,
               CASE WHEN n <= 4000 THEN 'queued' ELSE 'succeeded' END::pgq.job_status,
               CASE WHEN n > 4000 THEN now() END
        FROM generate_series(1, 40000) AS n
        """
    )
    conn.commit()
    conn.execute("ANALYZE pgq.jobs")
    conn.commit()
    yield conn


def plan_index_names(conn: Conn, name: str, params: dict[str, Any]) -> set[str]:
    """The indexes (and "Sort", if it sorts jobs) in the plan PostgreSQL picks for ``name``.

    A claim's final sort of the rows it claimed (at most its LIMIT, read from its
    CTE) puts them in claim order: that one is not a sort of the queue.
    """
    explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + query(name, "pgq")
    with ClientCursor(conn) as cursor:
        cursor.execute(explain, params)
        row = cursor.fetchone()
    conn.rollback()
    assert row is not None
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            found.add(node["Index Name"])
        children = node.get("Plans", [])
        sorted_input = [c["Node Type"] for c in children if c.get("Parent Relationship") == "Outer"]
        claimed_rows = sorted_input == ["CTE Scan"]
        if node["Node Type"] == "Sort" and not claimed_rows:
            found.add("Sort")
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    return found


CLAIM_PARAMS: dict[str, Any] = {
    "tasks": [f"task_{n}" for n in range(5)],
    "limit": 10,
    "lease_seconds": 30,
    "worker": "test-worker",
}


def test_claim_jobs_uses_the_partial_claim_index(busy_conn: Conn) -> None:
    assert "jobs_claim_idx" in plan_index_names(busy_conn, "claim_jobs", CLAIM_PARAMS)


def test_claim_jobs_from_queue_uses_the_per_queue_claim_index(busy_conn: Conn) -> None:
    params = {**CLAIM_PARAMS, "queue": "queue_3"}

    assert "jobs_queue_claim_idx" in plan_index_names(busy_conn, "claim_jobs_from_queue", params)


@pytest.mark.parametrize("worker_settings", [True, False], ids=["worker", "plain"])
def test_a_claim_walks_its_index_in_order_before_the_table_was_ever_analyzed(
    conn: Conn, worker_settings: bool
) -> None:
    # A first burst, COPYed in: no statistics yet, so the planner guesses few queued
    # jobs. The worker's session settings keep it off a bitmap scan that sorts them all.
    pgq.enqueue_many(conn, (JobSpec("task_0", {"n": n}) for n in range(20_000)), return_ids=False)
    conn.commit()
    if worker_settings:
        conn.execute(query("disable_bitmap_scans", "pgq"))
        conn.commit()

    used = plan_index_names(conn, "claim_jobs", CLAIM_PARAMS)

    if worker_settings:
        assert "jobs_claim_idx" in used and "Sort" not in used, used
    else:  # what the setting is for: without it, this planner sorts every queued job
        assert "Sort" in used, used


def test_array_literal_round_trips_ids_tokens_and_task_names(conn: psycopg.Connection[Any]) -> None:
    # The worker passes its arrays as one literal; what arrives must be what was sent,
    # including a task named like the array keyword NULL.
    tokens = [uuid.uuid4(), uuid.uuid4()]
    names = ["null", "NULL", "a.b:c-d_9"]
    row = conn.execute(
        "SELECT %s::bigint[], %s::uuid[], %s::text[], %s::bigint[]",
        [array_literal([1, 9_007_199_254_740_993]), array_literal(tokens),
         array_literal(names), array_literal([])],
    ).fetchone()  # fmt: skip
    assert row == ([1, 9_007_199_254_740_993], tokens, names, [])


def test_list_jobs_of_a_rare_status_reads_its_partial_index_not_the_finished_history(
    busy_conn: Conn,
) -> None:
    # Bound on the server as pgq web and the CLI bind them (not interpolated): a status
    # cast from text would be a call the planner cannot fold, and no partial index matches.
    params = {"status": "dead", "queue": None, "task": None, "since": None, "limit": 50,
              "before_id": None, "search_id": None, "search_pattern": None}  # fmt: skip
    explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + query("list_jobs", "pgq")
    with psycopg.connect(busy_conn.info.dsn, prepare_threshold=None) as conn:
        row = conn.execute(explain, params).fetchone()
    assert row is not None

    def indexes(node: dict[str, Any]) -> set[str]:
        found = {node["Index Name"]} if "Index Name" in node else set()
        return found.union(*(indexes(child) for child in node.get("Plans", [])))

    # tasks_pkey: a max_attempts left to the task is read from the registry, per row shown.
    assert indexes(row[0][0]["Plan"]) - {"tasks_pkey"} == {"jobs_dead_idx"}
