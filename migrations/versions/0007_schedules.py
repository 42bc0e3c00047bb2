"""Periodic tasks: the schedules table and the schedule_status view.

Revision ID: 0007
Revises: 0006 (0006 once the task registry lands)

One row per schedule, identified by (task, cron, tz, args). Every worker that
declares a schedule may make its ticks; ``ticked_through`` makes each tick one
job across the fleet: a worker inserts a tick's job only in the statement that
moves ``ticked_through`` forward past that tick (queries.sql ``advance_schedule``), and
the row lock serialises the workers racing for it. The jobs themselves carry no
mark, so pruning them can never let a tick run again.
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import revision_schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# `{schema}` is pgq's schema; literal braces are doubled for str.format.
UPGRADE = """
CREATE TABLE {schema}.schedules (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task           text NOT NULL,
    -- As declared, with runs of spaces made one: '0 3 * * *' and '0 3 * * 1-7' are
    -- two schedules.
    cron           text NOT NULL,
    tz             text NOT NULL,
    args           jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    -- What a worker does with a tick it is late for: 'skip' it, or 'run_latest'.
    -- The last worker to declare the schedule sets it.
    misfire        text NOT NULL DEFAULT 'skip',
    -- Every tick at or before this moment has had its job made, or was skipped.
    -- Set to the declaring worker's clock when the schedule is new: ticks before
    -- a schedule existed are not missed ones.
    ticked_through timestamptz NOT NULL,
    last_tick      timestamptz,
    -- The job of last_tick. No foreign key: retention prunes finished jobs.
    last_job_id    bigint,
    -- When a worker last declared it; a schedule no worker declared for 7 days is deleted.
    declared_at    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_task_name_valid
        CHECK (length(task) BETWEEN 1 AND 200 AND task ~ '^[A-Za-z0-9_.:-]+$'),
    CONSTRAINT schedules_args_is_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT schedules_misfire_valid CHECK (misfire IN ('skip', 'run_latest'))
);

COMMENT ON TABLE {schema}.schedules IS
    'pgq periodic schedules. Private: read the view schedule_status; columns may change.';

-- A schedule's identity. md5: args may be larger than a btree entry holds, and
-- jsonb's text is canonical (key order and spacing do not matter).
CREATE UNIQUE INDEX schedules_identity_idx ON {schema}.schedules (task, cron, tz, md5(args::text));

-- Each schedule with its last tick and what became of that tick's job.
CREATE VIEW {schema}.schedule_status AS
SELECT s.id, s.task, s.cron, s.tz, s.args, s.misfire, s.ticked_through, s.last_tick,
       s.last_job_id, j.status::text AS last_job_status, s.declared_at, s.created_at
FROM {schema}.schedules AS s
LEFT JOIN {schema}.jobs AS j ON j.id = s.last_job_id;

COMMENT ON VIEW {schema}.schedule_status IS
    'Periodic schedules: last tick, its job and that job''s status (NULL once pruned).';
"""

DOWNGRADE = """
DROP VIEW {schema}.schedule_status;
DROP TABLE {schema}.schedules;
"""


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    op.execute(UPGRADE.format(schema=schema).strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    op.execute(DOWNGRADE.format(schema=schema).strip().removesuffix(";"))
