"""Each SQL fact said once: when a job first runs, and which dead jobs a requeue by filter takes.

Revision ID: 0003
Revises: 0002

Before this revision the enqueue statements each spelled out the ``run_at``
rule, and ``requeue_dead`` and pgq's dry run each spelled out the dead-job
filter. Now:

- ``resolve_run_at(run_at, delay_seconds)`` is the rule every enqueue path uses;
- ``dead_job_matches(job, task, queue, ...)`` is the filter of a requeue by
  filter, used by ``requeue_dead`` and by
- ``requeueable_dead_job_ids(task, queue, ...)``, the jobs such a requeue would
  requeue: an operator's dry run in SQL, and pgq's (`pgq requeue --dry-run`).

All three are plain SQL functions, which the planner inlines: the statements
that use them run with the same plans as before (docs/concepts/lifecycle.md).
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import load_revision, revision_schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FILTER_ARGUMENTS = "text, text, text, timestamptz, timestamptz"

UPGRADE = """
-- When a job first runs: at run_at if one is given, else delay_seconds after now(),
-- the start of the enqueuing transaction (the server's clock, not the client's).
CREATE FUNCTION {schema}.resolve_run_at(run_at timestamptz, delay_seconds float8)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(run_at, now() + delay_seconds * interval '1 second')
$$;

COMMENT ON FUNCTION {schema}.resolve_run_at(timestamptz, float8) IS
    'When a job enqueued with this run_at or delay first runs.';

-- The dead-job filter of a requeue by filter; a NULL argument matches anything.
-- Never NULL (a dead job without last_error against a pattern is false), so that
-- NOT and FILTER read it as any other boolean; the terms stay separate so that the
-- planner can still use each one.
CREATE FUNCTION {schema}.dead_job_matches(
    job {schema}.jobs,
    task text DEFAULT NULL,
    queue text DEFAULT NULL,
    error_pattern text DEFAULT NULL,
    died_after timestamptz DEFAULT NULL,
    died_before timestamptz DEFAULT NULL
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT job.status = 'dead'
       AND (dead_job_matches.task IS NULL OR job.task = dead_job_matches.task)
       AND (dead_job_matches.queue IS NULL OR job.queue = dead_job_matches.queue)
       AND (error_pattern IS NULL OR coalesce(job.last_error ILIKE error_pattern, false))
       AND (died_after IS NULL OR coalesce(job.finished_at >= died_after, false))
       AND (died_before IS NULL OR coalesce(job.finished_at < died_before, false))
$$;

COMMENT ON FUNCTION {schema}.dead_job_matches({schema}.jobs, {arguments}) IS
    'Is this job dead and does it match task, queue, error ILIKE pattern and death time?';

-- The ids of the dead jobs requeue_dead would requeue with these filters: the
-- matches whose dedupe key no unfinished job holds (requeue_dead skips those,
-- with a notice). An operator's dry run, and pgq's (`pgq requeue --dry-run`).
CREATE FUNCTION {schema}.requeueable_dead_job_ids(
    task text DEFAULT NULL,
    queue text DEFAULT NULL,
    error_pattern text DEFAULT NULL,
    died_after timestamptz DEFAULT NULL,
    died_before timestamptz DEFAULT NULL
) RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    -- Qualified: in a SQL function a column of the same name would win over the argument.
    SELECT j.id
    FROM {schema}.jobs AS j
    WHERE {schema}.dead_job_matches(
            j, requeueable_dead_job_ids.task, requeueable_dead_job_ids.queue,
            error_pattern, died_after, died_before)
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.jobs AS holder
          WHERE holder.dedupe_key = j.dedupe_key AND holder.status IN ('queued', 'running'))
$$;

COMMENT ON FUNCTION {schema}.requeueable_dead_job_ids({arguments}) IS
    'Ids of the dead jobs requeue_dead would requeue with the same filters (a dry run).';

CREATE OR REPLACE FUNCTION {schema}.requeue_dead(
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
BEGIN
    FOR candidate IN
        SELECT j.id FROM {schema}.jobs AS j
        WHERE {schema}.dead_job_matches(j, task, queue, error_pattern, died_after, died_before)
          AND (job_ids IS NULL OR j.id = ANY(job_ids))
        ORDER BY j.finished_at, j.id
        LIMIT max_jobs
        FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            PERFORM {schema}.requeue(candidate);
            RETURN NEXT candidate;
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'pgq: job % skipped: an unfinished job holds its dedupe key', candidate;
        END;
    END LOOP;
    RETURN;
END
$$;

-- Once `pgq roles` has run, new functions are not executable by PUBLIC (its
-- default privileges): these are pure or read only what the caller may read, so
-- they are opened here, and enqueues and requeues keep working across the
-- upgrade. A later `pgq roles` narrows them to the roles that need them.
GRANT EXECUTE ON FUNCTION
    {schema}.resolve_run_at(timestamptz, float8),
    {schema}.dead_job_matches({schema}.jobs, {arguments}),
    {schema}.requeueable_dead_job_ids({arguments})
TO PUBLIC;
"""

DOWNGRADE = """
DROP FUNCTION {schema}.requeueable_dead_job_ids({arguments});
DROP FUNCTION {schema}.dead_job_matches({schema}.jobs, {arguments});
DROP FUNCTION {schema}.resolve_run_at(timestamptz, float8);
"""


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    sql = UPGRADE.format(schema=schema, arguments=FILTER_ARGUMENTS)
    op.execute(sql.strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    # Put back revision 0002's requeue_dead, from that revision's own text.
    previous = load_revision("0002_operations.py").REQUEUE_DEAD
    restore = previous.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    sql = (restore + DOWNGRADE).format(schema=schema, arguments=FILTER_ARGUMENTS)
    op.execute(sql.strip().removesuffix(";"))
