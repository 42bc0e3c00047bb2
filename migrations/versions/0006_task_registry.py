"""The fleet's shared knowledge: its tasks' declared defaults, and its live workers.

Revision ID: 0006
Revises: 0005

Before this revision a task's declared options (``@app.task(max_attempts=3)``)
lived only in the memory of the processes that imported it: a job enqueued by
name or through ``enqueue()`` in SQL got 5 attempts and the ``default`` queue,
and a job for a task no worker knew (a typo) waited forever with no sign. Now:

- ``tasks`` (read it through the view ``task_defaults``): one row per task name
  with the defaults its latest started worker declared. Workers upsert it at start.
- ``jobs.max_attempts`` is NULL when the enqueue did not set it: the first claim
  resolves it from ``tasks`` (a job enqueued before any worker registered still
  gets the task's value). ``queue`` and ``priority`` are needed before a claim, so
  the enqueue resolves them from ``tasks``, and ``queue_from_task`` /
  ``priority_from_task`` mark the jobs that did not set them: a worker whose
  declaration changes a task's queue or priority moves those jobs along.
- ``enqueue()``: queue, priority and max_attempts default to NULL, "the task's".
- ``workers`` (read it through ``live_workers``): one row per running worker,
  refreshed by its heartbeat; a row older than the worker's lease is not alive.
- ``unserved_jobs``: queued jobs of a task and queue that no live worker serves.

docs/concepts/task-registry.md explains the choices (who wins in a rolling deploy).
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import load_revision, revision_schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ENQUEUE_SIGNATURE = "text, jsonb, text, integer, timestamptz, integer, text"

# `{schema}` is pgq's schema; literal braces are doubled for str.format.
UPGRADE = """
CREATE TABLE {schema}.tasks (
    name               text PRIMARY KEY,
    queue              text NOT NULL,
    priority           integer NOT NULL,
    max_attempts       integer NOT NULL,
    timeout_seconds    float8,
    retry_base_seconds float8 NOT NULL,
    retry_cap_seconds  float8 NOT NULL,
    registered_by      text NOT NULL,
    registered_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tasks_queue_name_valid
        CHECK (length(queue) BETWEEN 1 AND 128 AND queue ~ '^[A-Za-z0-9_.:-]+$'),
    CONSTRAINT tasks_priority_not_negative CHECK (priority >= 0),
    CONSTRAINT tasks_max_attempts_positive CHECK (max_attempts >= 1)
);

COMMENT ON TABLE {schema}.tasks IS
    'pgq task registry. Private: read the view task_defaults; columns may change.';

-- Every enqueue that leaves queue or priority out reads them, whatever role runs it
-- (an application's role may hold table grants on jobs only): the defaults, not
-- who registered them, are readable by anyone with USAGE on the schema.
GRANT SELECT (name, queue, priority) ON {schema}.tasks TO PUBLIC;

CREATE VIEW {schema}.task_defaults AS
SELECT name AS task, queue, priority, max_attempts, timeout_seconds,
       retry_base_seconds, retry_cap_seconds, registered_by, registered_at
FROM {schema}.tasks;

COMMENT ON VIEW {schema}.task_defaults IS
    'Each task''s declared defaults, as its most recently started worker registered them.';

CREATE TABLE {schema}.workers (
    name          text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    -- NULL: every queue.
    queues        text[],
    tasks         text[] NOT NULL,
    concurrency   integer NOT NULL,
    running       integer NOT NULL DEFAULT 0,
    lease_seconds float8 NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE {schema}.workers IS
    'pgq workers. Private: read the view live_workers; columns may change.';

-- Alive: seen within its own lease. A worker that stops renewing for that long
-- has lost its jobs' leases too, so rescue and this view agree on who is gone.
CREATE VIEW {schema}.live_workers AS
SELECT name, host, pid, version, queues, tasks, concurrency, running, started_at, last_seen_at
FROM {schema}.workers
WHERE last_seen_at >= now() - lease_seconds * interval '1 second';

COMMENT ON VIEW {schema}.live_workers IS
    'Running workers: host, pid, version, queues (NULL: all), tasks, jobs running, last seen.';

-- Queued jobs no live worker will claim: no live worker has their task, or none
-- that has it serves their queue. A typo'd task name shows up here.
CREATE VIEW {schema}.unserved_jobs AS
SELECT waiting.task, waiting.queue, waiting.due, waiting.scheduled, waiting.oldest_run_at
FROM (
    SELECT task, queue,
           count(*) FILTER (WHERE run_at <= now()) AS due,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           min(run_at) AS oldest_run_at
    FROM {schema}.jobs
    WHERE status = 'queued'
    GROUP BY task, queue
) AS waiting
WHERE NOT EXISTS (
    SELECT 1
    FROM {schema}.live_workers AS w
    WHERE waiting.task = ANY(w.tasks)
      AND (w.queues IS NULL OR waiting.queue = ANY(w.queues))
);

COMMENT ON VIEW {schema}.unserved_jobs IS
    'Queued jobs per task and queue that no live worker serves (a typo, or a missing worker).';

-- NULL: the task's max_attempts, written by the job's first claim. The new
-- columns have constant defaults: no table rewrite.
ALTER TABLE {schema}.jobs
    ALTER COLUMN max_attempts DROP NOT NULL,
    ALTER COLUMN max_attempts DROP DEFAULT,
    ADD COLUMN queue_from_task boolean NOT NULL DEFAULT false,
    ADD COLUMN priority_from_task boolean NOT NULL DEFAULT false;

-- NULL queue, priority or max_attempts: the task's (task_defaults), else
-- 'default', 0 and 5. Changes only the defaults, so existing grants stay.
CREATE OR REPLACE FUNCTION {schema}.enqueue(
    task text,
    args jsonb DEFAULT '{{}}'::jsonb,
    queue text DEFAULT NULL,
    priority integer DEFAULT NULL,
    run_at timestamptz DEFAULT now(),
    max_attempts integer DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    OUT id bigint,
    OUT created boolean
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    declared_queue text;
    declared_priority integer;
    job_queue text;
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
{enqueue_checks}    IF enqueue.queue IS NULL OR enqueue.priority IS NULL THEN
        SELECT t.queue, t.priority INTO declared_queue, declared_priority
        FROM {schema}.tasks AS t WHERE t.name = enqueue.task;
    END IF;
    LOOP
        INSERT INTO {schema}.jobs AS j
            (task, args, queue, priority, run_at, max_attempts, dedupe_key,
             queue_from_task, priority_from_task)
        VALUES (enqueue.task, enqueue.args, coalesce(enqueue.queue, declared_queue, 'default'),
                coalesce(enqueue.priority, declared_priority, 0), coalesce(enqueue.run_at, now()),
                enqueue.max_attempts, enqueue.dedupe_key,
                enqueue.queue IS NULL, enqueue.priority IS NULL)
        ON CONFLICT (dedupe_key)
            WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
            DO NOTHING
        RETURNING j.id, j.queue INTO enqueue.id, job_queue;
        IF enqueue.id IS NOT NULL THEN
            enqueue.created := true;
            -- Identical notifications in one transaction are delivered once,
            -- so a bulk load wakes each worker once per queue, not per row.
            PERFORM pg_notify('{schema}_wakeup', job_queue);
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

-- Roles set up by `pgq roles` before this revision keep working: whoever may
-- enqueue may mark what it left to the task; workers keep the registry;
-- operators read it. A later `pgq roles` grants the same.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{schema}_producer') THEN
        GRANT INSERT (queue_from_task, priority_from_task) ON {schema}.jobs TO {schema}_producer;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{schema}_worker') THEN
        GRANT SELECT, INSERT, UPDATE ON {schema}.tasks TO {schema}_worker;
        GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.workers TO {schema}_worker;
        GRANT SELECT ON {schema}.live_workers, {schema}.unserved_jobs TO {schema}_worker;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{schema}_operator') THEN
        GRANT SELECT ON {schema}.tasks, {schema}.task_defaults, {schema}.live_workers,
            {schema}.unserved_jobs TO {schema}_operator;
        GRANT INSERT (queue_from_task, priority_from_task) ON {schema}.jobs TO {schema}_operator;
    END IF;
END
$$;
"""

DOWNGRADE = """
-- Jobs that left max_attempts to their task get the task's value (or 5) for good.
UPDATE {schema}.jobs AS j
SET max_attempts = coalesce(
    (SELECT t.max_attempts FROM {schema}.tasks AS t WHERE t.name = j.task), 5)
WHERE j.max_attempts IS NULL;

ALTER TABLE {schema}.jobs
    ALTER COLUMN max_attempts SET DEFAULT 5,
    ALTER COLUMN max_attempts SET NOT NULL,
    DROP COLUMN queue_from_task,
    DROP COLUMN priority_from_task;

DROP VIEW {schema}.unserved_jobs;
DROP VIEW {schema}.live_workers;
DROP VIEW {schema}.task_defaults;
DROP TABLE {schema}.workers;
DROP TABLE {schema}.tasks;
"""


def upgrade() -> None:
    schema = revision_schema()
    checks = load_revision("0004_runnable_jobs.py").ENQUEUE_CHECKS
    sql = UPGRADE.replace("{enqueue_checks}", checks).format(schema=schema)
    # Alembic adds the final ';' itself in --sql output.
    op.execute(sql.strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    # Revision 0004's enqueue() first: its body inserts a max_attempts of 5, not NULL.
    previous = load_revision("0004_runnable_jobs.py").enqueue_function()
    op.execute((previous + DOWNGRADE).format(schema=schema).strip().removesuffix(";"))
