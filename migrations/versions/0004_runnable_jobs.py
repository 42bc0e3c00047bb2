"""Only jobs that every tool can handle: run_at within a range, args a worker can decode.

Revision ID: 0004
Revises: 0003

Before this revision the SQL function ``enqueue()`` accepted a ``run_at`` of
``'infinity'`` or year 20000, and args nested 3,000 levels deep or holding a
5,001-digit number. One such row broke ``pgq stats`` and ``pgq jobs`` for every
operator, and its args crashed the worker that claimed it. Now:

- ``run_at_in_range(run_at)`` is the range of ``run_at`` (1970-01-01 to before
  9999-01-01, UTC; pgq.job.RUN_AT_MIN and RUN_AT_MAX say the same in Python),
  and the table's CHECK ``jobs_run_at_in_range`` holds every row to it. Rows
  outside it are moved to its nearest end first: a job of year 20000 still never
  runs, and one of ``'-infinity'`` is due, as it was. The other times of a job are
  pgq's own ``now()``.
- ``enqueue()`` refuses such a ``run_at``, and args deeper than 100 levels
  (pgq.job.MAX_ARGS_DEPTH) or holding a number of 4,301 digits or more (Python
  reads at most 4,300 into an int), each with a message that names the problem.

Rows written straight into the table skip the args checks (a CHECK would cost
every insert a walk of its args); a worker that claims one ends that job dead,
with the reason, and runs the others.
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import load_revision, revision_schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION {schema}.run_at_in_range(run_at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT run_at >= {earliest} AND run_at < {end}
$$;

COMMENT ON FUNCTION {schema}.run_at_in_range(timestamptz) IS
    'Is this a run_at pgq accepts (from 1970-01-01 to before 9999-01-01, UTC)?';

-- enqueue() calls it as the caller: PUBLIC may call it (it is pure), so that a producer
-- set up before this revision keeps enqueueing; `pgq roles` narrows it.
GRANT EXECUTE ON FUNCTION {schema}.run_at_in_range(timestamptz) TO PUBLIC;

UPDATE {schema}.jobs
SET run_at = CASE WHEN run_at < {earliest} THEN {earliest}
                  ELSE '9998-12-31 00:00:00+00' END::timestamptz
WHERE NOT {schema}.run_at_in_range(run_at);

-- Plain comparisons, not run_at_in_range(): a CHECK is prepared again for every
-- statement that writes a row, and inlining a SQL function there costs every single
-- enqueue (measured: 40 µs). Only run_at, the time a caller supplies: the other times
-- are pgq's own now(), and a CHECK of all five cost 15 µs per insert, where this one
-- costs 3 µs (measured in a plpgsql loop of 20,000 inserts).
ALTER TABLE {schema}.jobs
    ADD CONSTRAINT jobs_run_at_in_range CHECK (run_at >= {earliest} AND run_at < {end});
"""

# The range, said once here (pgq.job.RUN_AT_MIN and RUN_AT_MAX say it in Python).
EARLIEST, END = "'1970-01-01 00:00:00+00'", "'9999-01-01 00:00:00+00'"

# Put before the insert loop of revision 0001's enqueue(): its body is otherwise unchanged.
ENQUEUE_CHECKS = """    IF NOT {schema}.run_at_in_range(coalesce(enqueue.run_at, now())) THEN
        RAISE EXCEPTION 'pgq: run_at must be from 1970-01-01 to before 9999-01-01 (UTC), got %',
            enqueue.run_at USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- What a worker can decode (MAX_ARGS_DEPTH in pgq/job.py; Python's int digit limit).
    IF jsonb_path_exists(enqueue.args, 'strict $.**{{100 to last}}') THEN
        RAISE EXCEPTION 'pgq: job args nest more than 100 levels deep'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF jsonb_path_exists(
        enqueue.args, 'strict $.** ? (@.type() == "number" && @.abs() >= 1e4300)'
    ) THEN
        RAISE EXCEPTION 'pgq: job args hold a number of 4,301 digits or more, which %',
            'Python cannot read' USING ERRCODE = 'program_limit_exceeded';
    END IF;
"""

DOWNGRADE = """
ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_run_at_in_range;
DROP FUNCTION {schema}.run_at_in_range(timestamptz);
"""


def revision_0001_enqueue() -> str:
    """Revision 0001's enqueue() as CREATE OR REPLACE, from that revision's own text."""
    text: str = load_revision("0001_jobs.py").ENQUEUE_FUNCTION
    return text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def enqueue_function() -> str:
    """This revision's enqueue() as CREATE OR REPLACE (revision 0006's downgrade restores it)."""
    enqueue = revision_0001_enqueue()
    loop = "\n    LOOP\n"
    assert enqueue.count(loop) == 1, "revision 0001's enqueue() has one insert loop"
    return enqueue.replace(loop, "\n" + ENQUEUE_CHECKS + "    LOOP\n")


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    sql = (UPGRADE + enqueue_function()).format(schema=schema, earliest=EARLIEST, end=END)
    op.execute(sql.strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    sql = (revision_0001_enqueue() + DOWNGRADE).format(schema=schema)
    op.execute(sql.strip().removesuffix(";"))
