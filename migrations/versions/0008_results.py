"""Results, progress, and cancelling a running job.

Revision ID: 0008
Revises: 0007

- ``jobs.result``: a handler's return value (JSON), written with its success by
  the same fenced statement (``finish_succeeded_jobs``). NULL when the handler
  returned None, and for every job that did not succeed.
- ``jobs.progress``: the latest value a handler reported with ``ctx.progress()``,
  written by its worker in fenced batches while the job runs.
- ``job_results``: the operators' view of both, for every job.
- ``cancel(job_id)`` now also cancels a ``running`` job (edge: running ->
  cancelled): the row is ``cancelled`` at once, and ``pg_notify`` on
  ``<schema>_cancel`` (payload ``"<id> <lease token>"``) tells the worker that
  holds it to stop. The finish statements match only ``running`` rows, so
  whatever the handler returns afterwards is fenced out. A worker that missed
  the notification (``--poll-only`` behind PgBouncer) finds out at its next
  heartbeat, which extends only running jobs' leases.
- Every cancel, and every batch of finishes, notifies ``<schema>_finished``
  (payload ``"<lowest id>-<highest id>"``), which ``pgq.wait`` listens to.

Both columns are added without a default, so no row is rewritten. A downgrade
drops them, and with them every stored result and progress; jobs cancelled while
running stay ``cancelled``.
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import load_revision, revision_schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE {schema}.jobs
    ADD COLUMN result jsonb,
    ADD COLUMN progress jsonb;

COMMENT ON COLUMN {schema}.jobs.result IS
    'What the handler returned (JSON; NULL for None), stored when the job succeeded.';
COMMENT ON COLUMN {schema}.jobs.progress IS
    'The latest value the handler reported with ctx.progress(), by any attempt.';

CREATE VIEW {schema}.job_results AS
SELECT id, queue, task, status, attempts, max_attempts, progress, result, last_error,
       created_at, started_at, finished_at
FROM {schema}.jobs;

COMMENT ON VIEW {schema}.job_results IS
    'Every job with its progress (while it runs) and its result (once it succeeded).';

-- Cancel a job that has not finished (edges: queued -> cancelled, running -> cancelled).
-- A running job is cancelled at once; its worker is told to stop its handler, and
-- the finish statements, which match only running rows, refuse its late outcome.
CREATE OR REPLACE FUNCTION {schema}.cancel(job_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    found_status {schema}.job_status;
    found_token uuid;
    found_worker text;
BEGIN
    SELECT status, lease_token, locked_by INTO found_status, found_token, found_worker
    FROM {schema}.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgq: no job with id %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF found_status NOT IN ('queued', 'running') THEN
        RAISE EXCEPTION 'pgq: job % is %, only queued or running jobs can be cancelled',
            job_id, found_status USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE {schema}.jobs
    SET status = 'cancelled', finished_at = now(), locked_until = NULL, locked_by = NULL,
        errors = errors || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'at', now(), 'event', 'cancelled', 'by', current_user,
            'previous_status', found_status::text, 'worker', found_worker)))
    WHERE id = job_id;
    IF found_status = 'running' THEN
        PERFORM pg_notify('{schema}_cancel', job_id || ' ' || found_token);
    END IF;
    PERFORM pg_notify('{schema}_finished', job_id || '-' || job_id);
    RETURN job_id;
END
$$;

COMMENT ON FUNCTION {schema}.cancel(bigint) IS
    'Cancel a queued or running job; a running job''s worker is told to stop it.';
"""

DOWNGRADE = """
DROP VIEW {schema}.job_results;
ALTER TABLE {schema}.jobs
    DROP COLUMN result,
    DROP COLUMN progress;
"""

CANCEL_END = "COMMENT ON FUNCTION {schema}.cancel(bigint)"


def revision_0002_cancel() -> str:
    """Revision 0002's cancel() (queued jobs only) as CREATE OR REPLACE, from its own text."""
    text: str = load_revision("0002_operations.py").UPGRADE
    start = text.index("CREATE FUNCTION {schema}.cancel(job_id bigint)")
    end = text.index(CANCEL_END, start)
    end = text.index(";\n", end) + 2  # through the end of its COMMENT
    return text[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    op.execute(UPGRADE.format(schema=schema).strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    sql = (DOWNGRADE + revision_0002_cancel()).format(schema=schema)
    op.execute(sql.strip().removesuffix(";"))
