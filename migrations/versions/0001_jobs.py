"""The jobs table, its indexes, and the SQL enqueue function.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import revision_schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# `{schema}` is pgq's schema (validated as a plain identifier by pgq.config);
# literal braces are doubled for str.format.
UPGRADE_BEFORE_ENQUEUE = """
CREATE TYPE {schema}.job_status AS ENUM ('queued', 'running', 'succeeded', 'dead', 'cancelled');

CREATE TABLE {schema}.jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text NOT NULL DEFAULT 'default',
    task         text NOT NULL,
    args         jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    status       {schema}.job_status NOT NULL DEFAULT 'queued',
    -- Higher runs first among due jobs; 0 is the default and the lowest.
    priority     integer NOT NULL DEFAULT 0,
    -- Counted at claim time, so a job that crashes its worker still uses one up.
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5,
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    locked_by    text,
    -- New at every claim; every write that finishes a job must match it (the fence).
    lease_token  uuid,
    last_error   text,
    -- History, oldest first: one object per failed attempt (attempt, at, worker,
    -- error, traceback) and per operator action (at, event, by).
    errors       jsonb NOT NULL DEFAULT '[]'::jsonb,
    dedupe_key   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    CONSTRAINT jobs_queue_name_valid
        CHECK (length(queue) BETWEEN 1 AND 128 AND queue ~ '^[A-Za-z0-9_.:-]+$'),
    CONSTRAINT jobs_task_name_valid
        CHECK (length(task) BETWEEN 1 AND 200 AND task ~ '^[A-Za-z0-9_.:-]+$'),
    CONSTRAINT jobs_args_is_object CHECK (jsonb_typeof(args) = 'object'),
    -- A backstop for rows written without pgq's checks (those measure the JSON
    -- text: 1 MiB). jsonb's binary form can be larger than its text, so the
    -- backstop allows twice that; it is cheap to check, unlike the text size.
    CONSTRAINT jobs_args_size CHECK (pg_column_size(args) <= 2097152),
    CONSTRAINT jobs_priority_not_negative CHECK (priority >= 0),
    CONSTRAINT jobs_attempts_not_negative CHECK (attempts >= 0),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT jobs_dedupe_key_length CHECK (length(dedupe_key) BETWEEN 1 AND 500),
    -- A running job always has a lease: rescue and the fence depend on it.
    CONSTRAINT jobs_running_has_lease
        CHECK (status <> 'running' OR (locked_until IS NOT NULL AND lease_token IS NOT NULL))
);

COMMENT ON TABLE {schema}.jobs IS
    'pgq jobs. Private: use the views and functions in this schema; columns may change.';

-- Claim across all queues: the next due jobs in priority order. Partial, so it
-- holds only queued rows and stays small however much history the table keeps.
CREATE INDEX jobs_claim_idx ON {schema}.jobs (priority DESC, run_at, id)
    WHERE status = 'queued';

-- Claim from one named queue (workers started with --queues): the same order,
-- led by queue so a quiet queue is not scanned past a busy one's backlog.
CREATE INDEX jobs_queue_claim_idx ON {schema}.jobs (queue, priority DESC, run_at, id)
    WHERE status = 'queued';

-- Rescue: running jobs whose lease expired, oldest first.
CREATE INDEX jobs_rescue_idx ON {schema}.jobs (locked_until)
    WHERE status = 'running';

-- Inspection and pruning of finished jobs by status and age (dead jobs of the
-- last day, succeeded jobs older than a week).
CREATE INDEX jobs_finished_idx ON {schema}.jobs (status, finished_at)
    WHERE finished_at IS NOT NULL;

-- A dedupe key is unique among jobs not yet finished; once a job finishes its
-- key is free again.
CREATE UNIQUE INDEX jobs_dedupe_key_idx ON {schema}.jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');

-- Enqueue from SQL: triggers, psql, programs in other languages. Runs in the
-- caller's transaction. Returns the new job's id and created = true, or the id
-- of the unfinished job holding the same dedupe key and created = false.
"""

UPGRADE_AFTER_ENQUEUE = """
COMMENT ON FUNCTION {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text) IS
    'Enqueue one job in the current transaction; workers are woken at commit.';
"""

# Its own constant: revision 0004's downgrade puts this definition back.
ENQUEUE_FUNCTION = """CREATE FUNCTION {schema}.enqueue(
    task text,
    args jsonb DEFAULT '{{}}'::jsonb,
    queue text DEFAULT 'default',
    priority integer DEFAULT 0,
    run_at timestamptz DEFAULT now(),
    max_attempts integer DEFAULT 5,
    dedupe_key text DEFAULT NULL,
    OUT id bigint,
    OUT created boolean
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF enqueue.args IS NULL OR jsonb_typeof(enqueue.args) <> 'object' THEN
        RAISE EXCEPTION 'pgq: job args must be a JSON object, got %',
            coalesce(jsonb_typeof(enqueue.args), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The same limit as enqueue() in Python (MAX_ARGS_BYTES).
    IF octet_length(enqueue.args::text) > 1048576 THEN
        RAISE EXCEPTION 'pgq: job args are % bytes of JSON, over the 1048576-byte limit',
            octet_length(enqueue.args::text) USING ERRCODE = 'program_limit_exceeded';
    END IF;
    LOOP
        INSERT INTO {schema}.jobs AS j
            (task, args, queue, priority, run_at, max_attempts, dedupe_key)
        VALUES (enqueue.task, enqueue.args, coalesce(enqueue.queue, 'default'),
                coalesce(enqueue.priority, 0), coalesce(enqueue.run_at, now()),
                coalesce(enqueue.max_attempts, 5), enqueue.dedupe_key)
        ON CONFLICT (dedupe_key)
            WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
            DO NOTHING
        RETURNING j.id INTO enqueue.id;
        IF enqueue.id IS NOT NULL THEN
            enqueue.created := true;
            -- Identical notifications in one transaction are delivered once,
            -- so a bulk load wakes each worker once per queue, not per row.
            PERFORM pg_notify('{schema}_wakeup', coalesce(enqueue.queue, 'default'));
            RETURN;
        END IF;
        SELECT j.id INTO enqueue.id FROM {schema}.jobs AS j
        WHERE j.dedupe_key = enqueue.dedupe_key AND j.status IN ('queued', 'running');
        IF enqueue.id IS NOT NULL THEN
            enqueue.created := false;
            RETURN;
        END IF;
        -- The job holding the key finished between the two statements: insert again.
    END LOOP;
END
$$;
"""

UPGRADE = "".join((UPGRADE_BEFORE_ENQUEUE, ENQUEUE_FUNCTION, UPGRADE_AFTER_ENQUEUE))

DOWNGRADE = """
DROP FUNCTION {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text);
DROP TABLE {schema}.jobs;
DROP TYPE {schema}.job_status;
"""


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    op.execute(UPGRADE.format(schema=schema).strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    op.execute(DOWNGRADE.format(schema=schema).strip().removesuffix(";"))
