-- The statements of `pgq demo` (pgq/demo.py): a small shop's own table, and
-- the queries that show what happened to its jobs. Loaded by pgq.queries like
-- queries.sql; {schema} is pgq's schema, {database} the demo's database.

-- find_database: does this database exist
SELECT 1
FROM pg_database
WHERE datname = %(name)s;

-- create_database: a database for `pgq demo` on a local server
CREATE DATABASE {database};

-- create_orders: the demo application's own table (`pgq demo`), recreated at each run
DROP TABLE IF EXISTS pgq_demo_orders;
CREATE TABLE pgq_demo_orders (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer             text NOT NULL,
    total_cents          integer NOT NULL CHECK (total_cents > 0),
    charged_at           timestamptz,
    confirmation_sent_at timestamptz
);

-- insert_order: the demo application's business write
INSERT INTO pgq_demo_orders (customer, total_cents)
VALUES (%(customer)s, %(total_cents)s)
RETURNING id;

-- mark_charged: idempotent: a re-run after a crash does not charge twice
UPDATE pgq_demo_orders
SET charged_at = coalesce(charged_at, now())
WHERE id = %(order_id)s;

-- mark_confirmation_sent: idempotent: a re-run does not send a second email
UPDATE pgq_demo_orders
SET confirmation_sent_at = coalesce(confirmation_sent_at, now())
WHERE id = %(order_id)s AND confirmation_sent_at IS NULL
RETURNING id;

-- count_orders: orders the demo stored
SELECT count(*), count(charged_at), count(confirmation_sent_at)
FROM pgq_demo_orders;

-- read_job_states: the demo's jobs as they stand
SELECT id, task, status::text, attempts, max_attempts, last_error
FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[])
ORDER BY id;

-- count_unfinished_jobs: demo jobs not yet succeeded or dead
SELECT count(*)
FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[])
  AND status IN ('queued', 'running');
