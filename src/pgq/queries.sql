-- Every statement pgq runs at runtime. Each block starts with "-- name: purpose".
-- {schema} is pgq's schema and {channel} the wake-up channel, both quoted as
-- identifiers by pgq.queries; %(name)s are parameters. Literal braces are doubled.
-- The schema (tables, indexes, functions) lives in migrations/, not here; the
-- statements of `pgq demo` and `pgq bench` live beside them (demo.sql, bench.sql).
-- "edge:" names the state-machine edge a statement performs (docs/concepts/lifecycle.md).

-- enqueue_job: insert one job through the SQL function (edge: new -> queued)
SELECT id, created
FROM {schema}.enqueue(
    task => %(task)s,
    args => %(args)s::jsonb,
    queue => %(queue)s,
    priority => %(priority)s,
    run_at => {schema}.resolve_run_at(%(run_at)s, %(delay_seconds)s),
    max_attempts => %(max_attempts)s,
    dedupe_key => %(dedupe_key)s
);

-- insert_job: enqueue_job for a job without a dedupe key: a plain INSERT, with no plpgsql call and no ON CONFLICT (edge: new -> queued)
-- The function's extra work buys nothing here: Python has validated the args, and
-- without a key there is nothing to deduplicate. Its ON CONFLICT alone makes every
-- insert a speculative one. pg_notify runs once per inserted row, and PostgreSQL
-- delivers identical notifications of one transaction once, at commit.
WITH job AS (
    INSERT INTO {schema}.jobs (task, args, queue, priority, run_at, max_attempts)
    VALUES (%(task)s, %(args)s::jsonb, %(queue)s, %(priority)s,
            {schema}.resolve_run_at(%(run_at)s, %(delay_seconds)s),
            %(max_attempts)s)
    RETURNING id, queue
)
SELECT job.id, true AS created
FROM job, pg_notify(%(channel)s, job.queue);

-- create_enqueue_staging: a session-local table that COPY fills before enqueue_staged_jobs moves the rows into jobs
CREATE TEMPORARY TABLE IF NOT EXISTS pgq_enqueue_staging (
    task text,
    args text,
    queue text,
    priority integer,
    run_at timestamptz,
    delay_seconds float8,
    max_attempts integer,
    dedupe_key text
) ON COMMIT DELETE ROWS;

-- copy_to_enqueue_staging: stream validated jobs into the staging table (COPY is the fastest way in)
COPY pgq_enqueue_staging (task, args, queue, priority, run_at, delay_seconds, max_attempts, dedupe_key)
FROM STDIN;

-- copy_to_jobs: stream validated jobs straight into jobs: enqueue_many(return_ids=False), for chunks without dedupe keys, run_at or delay (edge: new -> queued)
COPY {schema}.jobs (task, args, queue, priority, max_attempts)
FROM STDIN;

-- enqueue_staged_jobs: move staged jobs into jobs; a taken dedupe key skips its row (edge: new -> queued)
WITH staged AS (
    DELETE FROM pgq_enqueue_staging
    RETURNING *
)
INSERT INTO {schema}.jobs AS j (task, args, queue, priority, run_at, max_attempts, dedupe_key)
SELECT staged.task,
       staged.args::jsonb,
       staged.queue,
       staged.priority,
       {schema}.resolve_run_at(staged.run_at, staged.delay_seconds),
       staged.max_attempts,
       staged.dedupe_key
FROM staged
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
DO NOTHING
RETURNING j.id;

-- notify_queues: wake idle workers serving these queues, once per queue, at commit
SELECT pg_notify(%(channel)s, queue_name)
FROM unnest(%(queues)s::text[]) AS queue_name;

-- listen_for_jobs: subscribe this connection to enqueue wake-ups
LISTEN {channel};

-- disable_bitmap_scans: set on each of the worker's pooled connections (claims and outcome writes only)
-- Before a table's first ANALYZE (or with stats taken while the queue was empty), the
-- planner thinks few jobs are queued and claims with a bitmap scan that sorts every
-- queued job: 53 ms per claim over 50,000 jobs, against 0.6 ms along the claim index,
-- measured. Autovacuum's next ANALYZE can be a minute away. Without bitmap scans the
-- claim always walks its index in order; the outcome writes use the primary key.
SET enable_bitmapscan = off;

-- disable_synchronous_commit: claims and outcome writes do not wait for the WAL flush (see pgq.worker.database)
SET synchronous_commit = off;

-- claim_jobs: lease up to %(limit)s due jobs of known tasks from any queue; the claim counts the attempt (edge: queued -> running)
-- The due ids are gathered once (an InitPlan), then updated through the primary key.
-- This shape keeps a good generic plan, so the prepared statement is not planned again
-- at every claim; joined to a CTE, the generic plan guessed 10% of the table for the
-- LIMIT and hash-joined a sequential scan, and PostgreSQL re-planned every claim instead.
-- args come back as text: json.loads in the worker costs 7 µs a job less than
-- psycopg's jsonb loader (measured on 10-row claims).
-- The rows come back in claim order, so that a worker starts a claimed batch (a
-- prefetch of up to 250 jobs) highest priority first; an UPDATE's RETURNING has no order.
WITH claimed AS (
    UPDATE {schema}.jobs AS j
    SET status = 'running',
        attempts = j.attempts + 1,
        locked_until = now() + %(lease_seconds)s * interval '1 second',
        locked_by = %(worker)s,
        lease_token = gen_random_uuid(),
        started_at = now()
    WHERE j.id = ANY(ARRAY(
            SELECT id
            FROM {schema}.jobs
            WHERE status = 'queued'
              AND run_at <= now()
              AND task = ANY(%(tasks)s::text[])
            ORDER BY priority DESC, run_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
    ))
    RETURNING j.id, j.queue, j.task, j.args::text AS args, j.attempts, j.max_attempts,
              j.lease_token, j.created_at, j.priority, j.run_at
)
SELECT id, queue, task, args, attempts, max_attempts, lease_token, created_at
FROM claimed
ORDER BY priority DESC, run_at, id;

-- claim_jobs_from_queue: as claim_jobs, from one named queue (edge: queued -> running)
WITH claimed AS (
    UPDATE {schema}.jobs AS j
    SET status = 'running',
        attempts = j.attempts + 1,
        locked_until = now() + %(lease_seconds)s * interval '1 second',
        locked_by = %(worker)s,
        lease_token = gen_random_uuid(),
        started_at = now()
    WHERE j.id = ANY(ARRAY(
            SELECT id
            FROM {schema}.jobs
            WHERE status = 'queued'
              AND queue = %(queue)s
              AND run_at <= now()
              AND task = ANY(%(tasks)s::text[])
            ORDER BY priority DESC, run_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
    ))
    RETURNING j.id, j.queue, j.task, j.args::text AS args, j.attempts, j.max_attempts,
              j.lease_token, j.created_at, j.priority, j.run_at
)
SELECT id, queue, task, args, attempts, max_attempts, lease_token, created_at
FROM claimed
ORDER BY priority DESC, run_at, id;

-- extend_leases: heartbeat; push locked_until forward for every job this worker still holds, returning those it holds
-- Rows are locked in id order, as finish_jobs locks them: both run at once on the same rows
-- (a lease is extended until its outcome is written), and unordered locks deadlock.
WITH held AS (
    SELECT j.id
    FROM {schema}.jobs AS j
    JOIN unnest(%(ids)s::bigint[], %(lease_tokens)s::uuid[]) AS held(id, lease_token)
      ON j.id = held.id AND j.lease_token = held.lease_token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR NO KEY UPDATE OF j
)
UPDATE {schema}.jobs AS j
SET locked_until = now() + %(lease_seconds)s * interval '1 second'
FROM held
WHERE j.id = held.id
RETURNING j.id, j.lease_token;

-- finish_jobs: record a batch of outcomes other than success, each fenced by its lease token (edges: running -> queued | dead)
-- A row whose token no longer matches (lease lost, job rescued) is left alone and not returned.
-- refund_attempt gives the attempt back (snooze, hand back at shutdown): those were not the job's fault.
-- Rows are locked in id order first, as extend_leases locks them (see there).
WITH outcome AS (
    SELECT *
    FROM unnest(
        %(ids)s::bigint[],
        %(lease_tokens)s::uuid[],
        %(statuses)s::text[],
        %(delays_seconds)s::float8[],
        %(refund_attempts)s::boolean[],
        %(errors)s::text[],
        %(tracebacks)s::text[]
    ) AS outcome(id, lease_token, status, delay_seconds, refund_attempt, error, traceback)
),
locked AS (
    SELECT j.id, j.lease_token
    FROM {schema}.jobs AS j
    JOIN outcome ON j.id = outcome.id AND j.lease_token = outcome.lease_token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR NO KEY UPDATE OF j
)
UPDATE {schema}.jobs AS j
SET status = outcome.status::{schema}.job_status,
    run_at = coalesce(now() + outcome.delay_seconds * interval '1 second', j.run_at),
    attempts = j.attempts - CASE WHEN outcome.refund_attempt THEN 1 ELSE 0 END,
    locked_until = NULL,
    locked_by = NULL,
    finished_at = CASE WHEN outcome.status IN ('succeeded', 'dead') THEN now() END,
    last_error = coalesce(outcome.error, j.last_error),
    errors = CASE
        WHEN outcome.error IS NULL THEN j.errors
        ELSE j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts,
            'at', now(),
            'worker', j.locked_by,
            'error', outcome.error,
            'traceback', outcome.traceback))
    END
FROM locked
JOIN outcome ON outcome.id = locked.id AND outcome.lease_token = locked.lease_token
WHERE j.id = locked.id
RETURNING j.id;

-- finish_succeeded_jobs: record a batch of successes, each fenced by its lease token: two parameters where finish_jobs takes seven (edge: running -> succeeded)
-- The same fence and the same id-order locking as finish_jobs.
WITH outcome AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(lease_tokens)s::uuid[]) AS outcome(id, lease_token)
),
locked AS (
    SELECT j.id
    FROM {schema}.jobs AS j
    JOIN outcome ON j.id = outcome.id AND j.lease_token = outcome.lease_token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR NO KEY UPDATE OF j
)
UPDATE {schema}.jobs AS j
SET status = 'succeeded',
    locked_until = NULL,
    locked_by = NULL,
    finished_at = now()
FROM locked
WHERE j.id = locked.id
RETURNING j.id;

-- find_stale_jobs: up to %(limit)s running jobs whose lease expired, oldest expiry first; read without a lock (rescue_jobs checks each one again under its lock)
-- pgq.rescue decides each one's fate (retry after a backoff, or dead) with the
-- same policy as a handler's failure (pgq.retry), then writes it with rescue_jobs.
SELECT id, attempts, max_attempts
FROM {schema}.jobs
WHERE status = 'running'
  AND locked_until < now()
ORDER BY locked_until
LIMIT %(limit)s;

-- rescue_jobs: requeue after its delay, or kill (no delay), each job find_stale_jobs read that is still as it was read; SKIP LOCKED keeps two rescuers apart (edges: running -> queued | dead)
-- One statement, so that no lock outlives it: a rescuer paused between two round
-- trips would otherwise block the heartbeats of workers still running those jobs.
-- A job whose lease was extended meanwhile, that finished, or whose attempts changed
-- (its delay was decided for the count read) is left alone. Rows are locked in id
-- order, as extend_leases and finish_jobs lock them.
WITH decided AS (
    SELECT *
    FROM unnest(
        %(ids)s::bigint[],
        %(attempts)s::integer[],
        %(max_attempts)s::integer[],
        %(delays_seconds)s::float8[]
    ) AS decided(id, attempts, max_attempts, delay_seconds)
),
stale AS MATERIALIZED (
    SELECT j.id, decided.delay_seconds
    FROM {schema}.jobs AS j
    JOIN decided
      ON decided.id = j.id
     AND decided.attempts = j.attempts
     AND decided.max_attempts = j.max_attempts
    WHERE j.status = 'running'
      AND j.locked_until < now()
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {schema}.jobs AS j
SET status = CASE WHEN stale.delay_seconds IS NULL THEN 'dead' ELSE 'queued' END::{schema}.job_status,
    run_at = coalesce(now() + stale.delay_seconds * interval '1 second', j.run_at),
    finished_at = CASE WHEN stale.delay_seconds IS NULL THEN now() END,
    locked_until = NULL,
    locked_by = NULL,
    last_error = 'worker lost: ' || coalesce(j.locked_by, 'unknown worker')
                 || ' stopped renewing its lease (it crashed, was killed, or lost the database)',
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempts,
        'at', now(),
        'worker', j.locked_by,
        'error', 'worker lost: lease expired at ' || j.locked_until::text))
FROM stale
WHERE j.id = stale.id
RETURNING j.id, j.task, j.queue, j.attempts, j.status::text AS status;

-- try_migration_lock: serialise concurrent `pgq migrate` runs (session-level, polled)
SELECT pg_try_advisory_lock(hashtext('pgq.migrate:' || %(schema_name)s));

-- release_migration_lock: let the next migrator in
SELECT pg_advisory_unlock(hashtext('pgq.migrate:' || %(schema_name)s));

-- read_schema_revision: the pgq revision applied to this database, or no row
SELECT version_num
FROM {schema}.alembic_version;

-- find_schema: does pgq's schema exist at all
SELECT 1
FROM pg_namespace
WHERE nspname = %(schema_name)s;

-- probe_server: is the server answering (`pgq demo` looking for a database, the /health check)
SELECT 1;

-- read_queue_stats: live numbers per queue (operators' view pgq.queue_stats)
SELECT queue, due, scheduled, running, lease_expired, lag_seconds
FROM {schema}.queue_stats
ORDER BY queue;

-- count_jobs: jobs by queue and status, finished ones included (scans the table)
SELECT queue, status, jobs
FROM {schema}.job_counts
ORDER BY queue, status;

-- count_dead_jobs_by_queue: dead jobs per queue and when the last one died (`pgq stats`)
-- Only the index jobs_dead_idx is read (revision 0005): cheap however many jobs
-- succeeded, and proportional to the dead-letter queue, which is what it counts.
SELECT queue, count(*) AS dead, max(died_at) AS last_died_at
FROM {schema}.dead_jobs
GROUP BY queue
ORDER BY queue;

-- count_jobs_by_status: every job by status (what `pgq migrate --downgrade base` would drop; scans the table)
-- The table, not the view job_counts: at revision 0001 there is no view yet. In the
-- statuses' own order (queued, running, succeeded...): the alias keeps the text out of ORDER BY.
SELECT status::text AS status_name, count(*) AS jobs
FROM {schema}.jobs
GROUP BY status
ORDER BY status;

-- list_jobs: newest jobs first, each filter ignored when NULL; pages by id (keyset: before_id), never by OFFSET
-- The search matches the id itself, or a LIKE pattern (its wildcards escaped by pgq.admin)
-- found in the task, the args' text or the last error.
-- The status parameter is typed job_status at both uses (never text cast to the enum, a
-- function call the planner cannot fold): a status then matches the partial indexes, and
-- "queued" or "dead" reads those few rows, not a million finished ones along the key.
SELECT id, queue, task, status::text, priority, attempts, max_attempts, run_at, created_at,
       started_at, finished_at, locked_by, last_error
FROM {schema}.jobs
WHERE (%(status)s::{schema}.job_status IS NULL OR status = %(status)s::{schema}.job_status)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
  AND (%(search_pattern)s::text IS NULL
       OR id = %(search_id)s::bigint
       OR task ILIKE %(search_pattern)s
       OR args::text ILIKE %(search_pattern)s
       OR last_error ILIKE %(search_pattern)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- count_finished_per_minute: jobs succeeded and dead per minute over the last %(minutes)s minutes, and their wait from due to start (the dashboard's chart)
-- Along jobs_finished_idx (status, finished_at): it reads the window's jobs only.
-- Every minute gets a row, zeros included, so that a chart has no gaps.
WITH finished AS (
    SELECT date_trunc('minute', finished_at) AS minute,
           status,
           greatest(extract(epoch FROM started_at - run_at), 0)::float8 AS wait_seconds
    FROM {schema}.jobs
    WHERE status IN ('succeeded', 'dead')
      AND finished_at >= date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute'
)
SELECT minutes.minute,
       count(finished.status) FILTER (WHERE finished.status = 'succeeded') AS succeeded,
       count(finished.status) FILTER (WHERE finished.status = 'dead') AS dead,
       coalesce(avg(finished.wait_seconds), 0)::float8 AS mean_wait_seconds,
       coalesce(max(finished.wait_seconds), 0)::float8 AS max_wait_seconds
FROM generate_series(
         date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute',
         date_trunc('minute', now()),
         interval '1 minute'
     ) AS minutes(minute)
LEFT JOIN finished ON finished.minute = minutes.minute
GROUP BY minutes.minute
ORDER BY minutes.minute;

-- get_job: one job with everything pgq keeps about it; args as text (pgq.admin decodes them, and copes with args Python cannot decode)
SELECT id, queue, task, status::text, priority, attempts, max_attempts, run_at, created_at,
       started_at, finished_at, locked_by, last_error, args::text, errors, locked_until, dedupe_key
FROM {schema}.jobs
WHERE id = %(id)s::bigint;

-- find_dead_jobs: one page of the dead jobs a requeue by filter can requeue (the filter is requeueable_dead_job_ids, in migrations/0003), in id order after %(after_id)s
SELECT j.id, j.queue, j.task, j.attempts, j.finished_at, j.last_error
FROM {schema}.requeueable_dead_job_ids(
    %(task)s, %(queue)s, %(error_pattern)s, %(died_after)s, %(died_before)s
) AS requeueable(id)
JOIN {schema}.jobs AS j ON j.id = requeueable.id
WHERE requeueable.id > %(after_id)s
ORDER BY requeueable.id
LIMIT %(limit)s;

-- count_dead_jobs: how many dead jobs a requeue by filter can requeue (for the dry run and the progress bar)
SELECT count(*)
FROM {schema}.requeueable_dead_job_ids(
    %(task)s, %(queue)s, %(error_pattern)s, %(died_after)s, %(died_before)s
);

-- find_dedupe_holder: the unfinished job holding a dedupe key, if any (why a requeue would be refused)
SELECT id
FROM {schema}.jobs
WHERE dedupe_key = %(dedupe_key)s
  AND status IN ('queued', 'running')
  AND id <> %(id)s::bigint
LIMIT 1;

-- requeue_job: requeue one dead or cancelled job through the operators' function (edge: dead | cancelled -> queued)
SELECT {schema}.requeue(%(id)s::bigint);

-- requeue_dead_jobs: requeue one page of dead jobs (ids from find_dead_jobs) still matching the filters (edge: dead -> queued)
SELECT requeued
FROM {schema}.requeue_dead(
    task => %(task)s,
    queue => %(queue)s,
    error_pattern => %(error_pattern)s,
    died_after => %(died_after)s,
    died_before => %(died_before)s,
    job_ids => %(job_ids)s::bigint[]
) AS requeued;

-- count_jobs_in_statuses: how many of these jobs are in one of these statuses (what a bulk action would touch)
SELECT count(*)
FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[])
  AND status::text = ANY(%(statuses)s::text[]);

-- find_queued_jobs: one page of the queued jobs matching a task and queue (NULL: any), in id order after %(after_id)s
SELECT id
FROM {schema}.jobs
WHERE status = 'queued'
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s;

-- cancel_queued_jobs: cancel those of these jobs still queued, through the operators' function; rows a worker is claiming are skipped (edge: queued -> cancelled)
-- Locked first (and their status checked again under the lock), then cancelled:
-- cancel() would raise for a job claimed between the read and its call.
WITH target AS MATERIALIZED (
    SELECT id
    FROM {schema}.jobs
    WHERE id = ANY(%(ids)s::bigint[])
      AND status = 'queued'
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
SELECT {schema}.cancel(target.id)
FROM target;

-- retry_queued_jobs_now: make those of these jobs still queued due now, through the operators' function; rows a worker is claiming are skipped
WITH target AS MATERIALIZED (
    SELECT id
    FROM {schema}.jobs
    WHERE id = ANY(%(ids)s::bigint[])
      AND status = 'queued'
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
SELECT {schema}.retry_now(target.id)
FROM target;

-- delete_finished_jobs: delete those of these jobs that are finished (succeeded, dead, cancelled) (edge: finished -> deleted)
DELETE FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[])
  AND status IN ('succeeded', 'dead', 'cancelled')
RETURNING id;

-- cancel_job: cancel a queued job through the operators' function (edge: queued -> cancelled)
SELECT {schema}.cancel(%(id)s::bigint);

-- retry_job_now: make a queued job due now
SELECT {schema}.retry_now(%(id)s::bigint);

-- prune_jobs: delete one batch of finished jobs of a status older than an age (edge: finished -> deleted)
SELECT {schema}.prune(%(status)s, %(older_than_seconds)s * interval '1 second', %(batch_size)s);

-- count_prunable_jobs: per status, the jobs that finished before now() minus an age, and that moment (`pgq prune` asks, or dry-runs, before it deletes)
-- A plain read along jobs_finished_idx: it locks no row, so workers and pruners
-- go on while the operator reads the question.
WITH cutoff AS (
    SELECT now() - %(older_than_seconds)s * interval '1 second' AS finished_before
)
SELECT cutoff.finished_before, wanted.status, (
           SELECT count(*)
           FROM {schema}.jobs AS j
           WHERE j.status = wanted.status::{schema}.job_status
             AND j.finished_at < cutoff.finished_before
       ) AS jobs
FROM cutoff, unnest(%(statuses)s::text[]) WITH ORDINALITY AS wanted(status, position)
ORDER BY wanted.position;

-- prune_jobs_finished_before: prune_jobs up to the moment count_prunable_jobs counted to, however long the operator took to answer (edge: finished -> deleted)
SELECT {schema}.prune(
    %(status)s,
    greatest(now() - %(finished_before)s::timestamptz, interval '0'),
    %(batch_size)s
);

-- refresh_queue_stats: refresh the fleet's queue_stats snapshot if stale and nobody else is at it
SELECT {schema}.refresh_queue_stats(%(max_age_seconds)s * interval '1 second');

-- read_queue_stats_snapshot: the fleet's latest queue numbers, for metrics
SELECT queue, due, scheduled, running, lease_expired, lag_seconds
FROM {schema}.queue_stats_snapshot
ORDER BY queue;

-- grant_roles: create the three least-privilege group roles (NOLOGIN) and grant each only what its job needs; safe to re-run
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {producer_name}) THEN
        CREATE ROLE {producer} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {worker_name}) THEN
        CREATE ROLE {worker} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {operator_name}) THEN
        CREATE ROLE {operator} NOLOGIN;
    END IF;
END
$$;
-- Functions are executable by everyone unless revoked; only these roles get them.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM PUBLIC;
GRANT USAGE ON SCHEMA {schema} TO {producer}, {worker}, {operator};
GRANT SELECT ON {schema}.alembic_version TO {producer}, {worker}, {operator};
-- Producer: enqueue, and nothing else (it cannot read args, claim or change jobs).
GRANT EXECUTE ON FUNCTION {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text) TO {producer};
GRANT EXECUTE ON FUNCTION {schema}.resolve_run_at(timestamptz, float8) TO {producer}, {operator};
GRANT EXECUTE ON FUNCTION {schema}.run_at_in_range(timestamptz) TO {producer}, {operator};
-- Only the columns enqueue sets: no chosen id, status, lease or history.
GRANT INSERT (task, args, queue, priority, run_at, max_attempts, dedupe_key)
    ON {schema}.jobs TO {producer};
GRANT SELECT (id, queue, status, dedupe_key) ON {schema}.jobs TO {producer};
-- Worker: claim, heartbeat, finish, rescue and prune jobs; refresh the metrics snapshot.
GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {worker};
GRANT SELECT ON {schema}.queue_stats TO {worker};
GRANT SELECT, INSERT, DELETE ON {schema}.queue_stats_snapshot TO {worker};
GRANT EXECUTE ON FUNCTION {schema}.prune(text, interval, integer) TO {worker};
GRANT EXECUTE ON FUNCTION {schema}.refresh_queue_stats(interval) TO {worker};
-- Operator: inspect everything, requeue, cancel, retry and prune; enqueue by hand.
GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {operator};
GRANT SELECT ON {schema}.queue_stats, {schema}.job_counts, {schema}.dead_jobs, {schema}.running_jobs TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.requeue(bigint) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.requeue_dead(text, text, text, timestamptz, timestamptz, integer, bigint[]) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.dead_job_matches({schema}.jobs, text, text, text, timestamptz, timestamptz) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.requeueable_dead_job_ids(text, text, text, timestamptz, timestamptz) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.cancel(bigint) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.retry_now(bigint) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.prune(text, interval, integer) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text) TO {operator};
GRANT INSERT (task, args, queue, priority, run_at, max_attempts, dedupe_key)
    ON {schema}.jobs TO {operator};
-- Functions that later migrations add are not executable by everyone either.
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

