"""The operators' SQL surface: views, requeue, cancel, retry now, prune; autovacuum settings.

Revision ID: 0002
Revises: 0001

These views and functions are pgq's versioned API for operators (the jobs table
itself is private and may change). docs/sql.md is their cookbook.
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import revision_schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# `{schema}` is pgq's schema; literal braces are doubled for str.format.
# Its own constant: revision 0003's downgrade puts this definition back.
REQUEUE_DEAD = """CREATE FUNCTION {schema}.requeue_dead(
    task text DEFAULT NULL,
    queue text DEFAULT NULL,
    error_pattern text DEFAULT NULL,
    died_after timestamptz DEFAULT NULL,
    died_before timestamptz DEFAULT NULL,
    max_jobs integer DEFAULT NULL,
    job_ids bigint[] DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    candidate bigint;
    requeued integer := 0;
BEGIN
    FOR candidate IN
        SELECT j.id FROM {schema}.jobs AS j
        WHERE j.status = 'dead'
          AND (task IS NULL OR j.task = task)
          AND (queue IS NULL OR j.queue = queue)
          AND (error_pattern IS NULL OR j.last_error ILIKE error_pattern)
          AND (died_after IS NULL OR j.finished_at >= died_after)
          AND (died_before IS NULL OR j.finished_at < died_before)
          AND (job_ids IS NULL OR j.id = ANY(job_ids))
        ORDER BY j.finished_at, j.id
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            PERFORM {schema}.requeue(candidate);
            requeued := requeued + 1;
            RETURN NEXT candidate;
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'pgq: job % skipped: an unfinished job holds its dedupe key', candidate;
        END;
    END LOOP;
    RETURN;
END
$$;
"""

UPGRADE_BEFORE_REQUEUE_DEAD = """
-- The jobs table churns: every job is inserted, updated at least twice and
-- eventually deleted. Vacuum it after 2 % of its rows changed (the default 20 %
-- lets a busy queue bloat), analyze after 1 %, and never sleep between pages.
ALTER TABLE {schema}.jobs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_insert_scale_factor = 0.05
);

-- Live numbers per queue: jobs due now, scheduled for later, running, and the
-- age of the oldest due job (lag: how far behind the workers are). Only queued
-- and running rows are read, through the partial indexes: cheap at any history.
"""

# Its own constant: revision 0005's downgrade puts this definition back.
QUEUE_STATS_VIEW = """CREATE VIEW {schema}.queue_stats AS
SELECT queue,
       count(*) FILTER (WHERE status = 'queued' AND run_at <= now()) AS due,
       count(*) FILTER (WHERE status = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'running' AND locked_until < now()) AS lease_expired,
       coalesce(extract(epoch FROM
           now() - min(run_at) FILTER (WHERE status = 'queued' AND run_at <= now())
       ), 0)::float8 AS lag_seconds
FROM {schema}.jobs
WHERE status IN ('queued', 'running')
GROUP BY queue;
"""

UPGRADE_AFTER_QUEUE_STATS = """
COMMENT ON VIEW {schema}.queue_stats IS
    'Per queue: jobs due, scheduled, running, lease expired, and the age of the oldest due job.';

-- The fleet's shared copy of queue_stats, for metrics: every worker serves the
-- queue gauges, but only one of them per interval pays for the query.
CREATE TABLE {schema}.queue_stats_snapshot (
    queue         text PRIMARY KEY,
    due           bigint NOT NULL,
    scheduled     bigint NOT NULL,
    running       bigint NOT NULL,
    lease_expired bigint NOT NULL,
    lag_seconds   float8 NOT NULL,
    taken_at      timestamptz NOT NULL
);

-- Refresh the snapshot if it is older than max_age and no other session is
-- refreshing it right now (a try-lock, not a queue of waiters). No leader: any
-- worker that asks first does it.
CREATE FUNCTION {schema}.refresh_queue_stats(max_age interval) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('{schema}.refresh_queue_stats')) THEN
        RETURN false;
    END IF;
    -- An empty snapshot (no unfinished jobs) is refreshed every time: cheap,
    -- since the query then reads nothing.
    IF EXISTS (SELECT 1 FROM {schema}.queue_stats_snapshot WHERE taken_at > now() - max_age) THEN
        RETURN false;
    END IF;
    DELETE FROM {schema}.queue_stats_snapshot;
    INSERT INTO {schema}.queue_stats_snapshot
    SELECT queue, due, scheduled, running, lease_expired, lag_seconds, now()
    FROM {schema}.queue_stats;
    RETURN true;
END
$$;

-- Counts by queue and status over the whole table, finished jobs included.
-- Reads every row: use it for inspection, not for a dashboard refresh loop.
CREATE VIEW {schema}.job_counts AS
SELECT queue, status::text AS status, count(*) AS jobs
FROM {schema}.jobs
GROUP BY queue, status;

COMMENT ON VIEW {schema}.job_counts IS
    'Jobs by queue and status, finished ones included (scans the table).';

-- The dead-letter queue: jobs that exhausted their attempts or gave up.
CREATE VIEW {schema}.dead_jobs AS
SELECT id, queue, task, args, attempts, max_attempts, last_error,
       (SELECT count(*) FROM jsonb_array_elements(errors) AS entry WHERE entry ? 'error')
           AS failures,
       errors, created_at, finished_at AS died_at
FROM {schema}.jobs
WHERE status = 'dead';

COMMENT ON VIEW {schema}.dead_jobs IS
    'Dead jobs (the dead-letter queue) with their last error and error history.';

-- Running jobs with their worker and lease.
CREATE VIEW {schema}.running_jobs AS
SELECT id, queue, task, attempts, max_attempts, locked_by AS worker, started_at,
       locked_until, locked_until < now() AS lease_expired,
       extract(epoch FROM now() - started_at)::float8 AS running_seconds
FROM {schema}.jobs
WHERE status = 'running';

COMMENT ON VIEW {schema}.running_jobs IS
    'Running jobs, their worker and lease; lease_expired rows are due for rescue.';

-- Requeue one job that is dead or cancelled (edge: dead | cancelled -> queued).
-- Attempts start again from 0; the error history is kept, with a note.
CREATE FUNCTION {schema}.requeue(job_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_status {schema}.job_status;
BEGIN
    SELECT status INTO found_status FROM {schema}.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq: no job with id %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF found_status NOT IN ('dead', 'cancelled') THEN
        RAISE EXCEPTION 'pgq: job % is %, only dead or cancelled jobs can be requeued',
            job_id, found_status USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    BEGIN
        UPDATE {schema}.jobs
        SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
            locked_until = NULL, locked_by = NULL,
            errors = errors || jsonb_build_array(jsonb_build_object(
                'at', now(), 'event', 'requeued', 'by', current_user,
                'previous_status', found_status::text))
        WHERE id = job_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'pgq: job % cannot be requeued: an unfinished job holds its dedupe key',
            job_id USING ERRCODE = 'unique_violation';
    END;
    PERFORM pg_notify('{schema}_wakeup', (SELECT queue FROM {schema}.jobs WHERE id = job_id));
    RETURN job_id;
END
$$;

COMMENT ON FUNCTION {schema}.requeue(bigint) IS
    'Requeue one dead or cancelled job; attempts restart, error history is kept.';

-- Requeue every dead job matching all the filters given (NULL: any), at most
-- max_jobs of them, oldest death first. Returns the requeued ids. A job whose
-- dedupe key is now held by an unfinished job is skipped. job_ids limits the
-- candidates to a page of ids (how `pgq requeue` batches a large requeue).
"""

UPGRADE_AFTER_REQUEUE_DEAD = """
COMMENT ON FUNCTION
    {schema}.requeue_dead(text, text, text, timestamptz, timestamptz, integer, bigint[]) IS
    'Requeue dead jobs matching task, queue, error ILIKE pattern and death time; returns ids.';

-- Cancel a job that has not started (edge: queued -> cancelled).
CREATE FUNCTION {schema}.cancel(job_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_status {schema}.job_status;
BEGIN
    SELECT status INTO found_status FROM {schema}.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq: no job with id %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF found_status <> 'queued' THEN
        RAISE EXCEPTION 'pgq: job % is %, only queued jobs can be cancelled',
            job_id, found_status USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE {schema}.jobs
    SET status = 'cancelled', finished_at = now(),
        errors = errors || jsonb_build_array(jsonb_build_object(
            'at', now(), 'event', 'cancelled', 'by', current_user))
    WHERE id = job_id;
    RETURN job_id;
END
$$;

COMMENT ON FUNCTION {schema}.cancel(bigint) IS 'Cancel a queued job before it runs.';

-- Run a queued job now instead of at its run_at (a retry waiting for backoff,
-- a scheduled job). Not an edge: the job stays queued.
CREATE FUNCTION {schema}.retry_now(job_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_status {schema}.job_status;
    found_queue text;
BEGIN
    SELECT status, queue INTO found_status, found_queue
    FROM {schema}.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq: no job with id %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF found_status <> 'queued' THEN
        RAISE EXCEPTION 'pgq: job % is %, only queued jobs can be retried now (requeue dead ones)',
            job_id, found_status USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- least(): a job already due keeps its place in line.
    UPDATE {schema}.jobs SET run_at = least(run_at, now()) WHERE id = job_id;
    PERFORM pg_notify('{schema}_wakeup', found_queue);
    RETURN job_id;
END
$$;

COMMENT ON FUNCTION {schema}.retry_now(bigint) IS 'Make a queued job due now.';

-- Delete up to batch_size jobs of one finished status that finished before
-- now() - older_than (edge: succeeded | dead | cancelled -> deleted). SKIP LOCKED
-- lets several pruners run at once without waiting on, or repeating, each
-- other's batch; small batches keep each transaction's locks short.
CREATE FUNCTION {schema}.prune(
    status text,
    older_than interval,
    batch_size integer DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    deleted integer;
BEGIN
    IF status IS NULL OR status NOT IN ('succeeded', 'dead', 'cancelled') THEN
        RAISE EXCEPTION 'pgq: only finished jobs can be pruned (succeeded, dead, cancelled), not %',
            status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'pgq: older_than must be an interval >= 0, got %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'pgq: batch_size must be >= 1, got %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH due AS (
        SELECT j.id FROM {schema}.jobs AS j
        WHERE j.status = status::{schema}.job_status
          AND j.finished_at < now() - older_than
        ORDER BY j.finished_at
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM {schema}.jobs AS j USING due WHERE j.id = due.id;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

COMMENT ON FUNCTION {schema}.prune(text, interval, integer) IS
    'Delete one batch of finished jobs of a status older than an interval; returns how many.';
"""

UPGRADE = "".join(
    (
        UPGRADE_BEFORE_REQUEUE_DEAD,
        QUEUE_STATS_VIEW,
        UPGRADE_AFTER_QUEUE_STATS,
        REQUEUE_DEAD,
        UPGRADE_AFTER_REQUEUE_DEAD,
    )
)

DOWNGRADE = """
DROP FUNCTION {schema}.prune(text, interval, integer);
DROP FUNCTION {schema}.retry_now(bigint);
DROP FUNCTION {schema}.cancel(bigint);
DROP FUNCTION {schema}.requeue_dead(text, text, text, timestamptz, timestamptz, integer, bigint[]);
DROP FUNCTION {schema}.requeue(bigint);
DROP VIEW {schema}.running_jobs;
DROP VIEW {schema}.dead_jobs;
DROP VIEW {schema}.job_counts;
DROP FUNCTION {schema}.refresh_queue_stats(interval);
DROP TABLE {schema}.queue_stats_snapshot;
DROP VIEW {schema}.queue_stats;
ALTER TABLE {schema}.jobs RESET (
    autovacuum_vacuum_scale_factor,
    autovacuum_vacuum_threshold,
    autovacuum_analyze_scale_factor,
    autovacuum_vacuum_cost_delay,
    autovacuum_vacuum_insert_scale_factor
);
"""


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    op.execute(UPGRADE.format(schema=schema).strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    op.execute(DOWNGRADE.format(schema=schema).strip().removesuffix(";"))
