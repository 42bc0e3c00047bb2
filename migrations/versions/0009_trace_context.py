"""The enqueuer's trace context, stored with its job.

Revision ID: 0009
Revises: 0008

- ``jobs.trace_context``: the W3C trace context (``traceparent``, ``tracestate``)
  of the code that enqueued the job, as a JSON object of text, when that code
  traced with OpenTelemetry (pgq.contrib.otel); NULL otherwise. The worker that
  runs the job continues that trace. A column rather than a key in ``args``:
  args are the handler's keyword arguments, checked against its signature,
  matched by ``assert_enqueued`` and deduplicated on; tracing must change none of that.
- Roles set up by ``pgq roles`` before this revision may set it at enqueue.

Added without a default, so no row is rewritten. A downgrade drops it: jobs
still queued then run in a trace of their own.
"""

from __future__ import annotations

from alembic import op

from pgq.migrate import revision_schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE {schema}.jobs ADD COLUMN trace_context jsonb;

COMMENT ON COLUMN {schema}.jobs.trace_context IS
    'The enqueuer''s W3C trace context (traceparent, tracestate), continued by the run.';

-- Roles set up by `pgq roles` before this revision keep enqueueing, traced or not.
-- A later `pgq roles` grants the same.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{schema}_producer') THEN
        GRANT INSERT (trace_context) ON {schema}.jobs TO {schema}_producer;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{schema}_operator') THEN
        GRANT INSERT (trace_context) ON {schema}.jobs TO {schema}_operator;
    END IF;
END
$$;
"""

DOWNGRADE = """
ALTER TABLE {schema}.jobs DROP COLUMN trace_context;
"""


def upgrade() -> None:
    schema = revision_schema()
    # Alembic adds the final ';' itself in --sql output.
    op.execute(UPGRADE.format(schema=schema).strip().removesuffix(";"))


def downgrade() -> None:
    schema = revision_schema()
    op.execute(DOWNGRADE.format(schema=schema).strip().removesuffix(";"))
