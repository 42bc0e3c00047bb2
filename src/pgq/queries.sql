-- Every statement pgq runs at runtime. Each block starts with "-- name: purpose".
-- {schema} is pgq's schema and {channel} the wake-up channel, both quoted as
-- identifiers by pgq.queries; %(name)s are parameters. Literal braces are doubled.
-- The schema (tables, indexes, functions) lives in migrations/, not here; the
-- statements of `pgq demo` and `pgq bench` live beside them (demo.sql, bench.sql).
-- "edge:" names the state-machine edge a statement performs (docs/concepts/lifecycle.md).

-- enqueue_job: insert one job through the SQL function (edge: new -> queued)
-- A NULL queue, priority or max_attempts is the task's (the function reads task_defaults).
-- %(declared_queue)s and %(declared_priority)s are a registered Task's own, for a task
-- no worker registered yet; the function then sees them as chosen (PlannedJob.statement).
SELECT id, created
FROM {schema}.enqueue(
    task => %(task)s,
    args => %(args)s::jsonb,
    queue => coalesce(%(queue)s::text, CASE WHEN NOT EXISTS (
        SELECT FROM {schema}.tasks WHERE name = %(task)s) THEN %(declared_queue)s::text END),
    priority => coalesce(%(priority)s::integer, CASE WHEN NOT EXISTS (
        SELECT FROM {schema}.tasks WHERE name = %(task)s) THEN %(declared_priority)s::integer END),
    run_at => {schema}.resolve_run_at(%(run_at)s, %(delay_seconds)s),
    max_attempts => %(max_attempts)s,
    dedupe_key => %(dedupe_key)s
);

-- insert_job: enqueue_job for a job without a dedupe key: a plain INSERT, with no plpgsql call and no ON CONFLICT (edge: new -> queued)
-- The function's extra work buys nothing here: Python has validated the args, and
-- without a key there is nothing to deduplicate. Its ON CONFLICT alone makes every
-- insert a speculative one. pg_notify runs once per inserted row, and PostgreSQL
-- delivers identical notifications of one transaction once, at commit.
-- An option left out is the task's registered default (task_defaults), else the
-- declared one (a registered Task's own, or 'default' and 0), marked *_from_task so
-- that a worker registering another default moves the job along. One lookup of the
-- task's row serves both options (measured: 4 us a statement, where a subquery per
-- option cost 9 us). A NULL max_attempts is resolved by the first claim.
-- trace_context is the enqueuer's (pgq.contrib.otel), NULL when it does not trace.
WITH registered AS (
    SELECT t.queue, t.priority
    FROM {schema}.tasks AS t
    WHERE t.name = %(task)s
),
job AS (
    INSERT INTO {schema}.jobs
        (task, args, queue, priority, run_at, max_attempts, queue_from_task, priority_from_task,
         trace_context)
    SELECT %(task)s, %(args)s::jsonb,
           coalesce(%(queue)s, registered.queue, %(declared_queue)s),
           coalesce(%(priority)s, registered.priority, %(declared_priority)s),
           {schema}.resolve_run_at(%(run_at)s, %(delay_seconds)s),
           %(max_attempts)s, %(queue)s IS NULL, %(priority)s IS NULL,
           %(trace_context)s::jsonb
    FROM (SELECT) AS one
    LEFT JOIN registered ON true
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
    dedupe_key text,
    queue_from_task boolean,
    priority_from_task boolean
) ON COMMIT DELETE ROWS;

-- copy_to_enqueue_staging: stream validated jobs into the staging table (COPY is the fastest way in)
COPY pgq_enqueue_staging (task, args, queue, priority, run_at, delay_seconds, max_attempts, dedupe_key, queue_from_task, priority_from_task)
FROM STDIN;

-- copy_to_jobs: stream validated jobs straight into jobs: enqueue_many(return_ids=False), for chunks without dedupe keys, run_at or delay (edge: new -> queued)
COPY {schema}.jobs (task, args, queue, priority, max_attempts, queue_from_task, priority_from_task)
FROM STDIN;

-- enqueue_staged_jobs: move staged jobs into jobs; a taken dedupe key skips its row (edge: new -> queued)
WITH staged AS (
    DELETE FROM pgq_enqueue_staging
    RETURNING *
)
INSERT INTO {schema}.jobs AS j
    (task, args, queue, priority, run_at, max_attempts, dedupe_key, queue_from_task, priority_from_task)
SELECT staged.task,
       staged.args::jsonb,
       staged.queue,
       staged.priority,
       {schema}.resolve_run_at(staged.run_at, staged.delay_seconds),
       staged.max_attempts,
       staged.dedupe_key,
       staged.queue_from_task,
       staged.priority_from_task
FROM staged
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
DO NOTHING
RETURNING j.id;

-- read_task_queues: every registered task's queue and priority (enqueue_many resolves the options its jobs leave out once per call)
SELECT name, queue, priority
FROM {schema}.tasks;

-- notify_queues: wake idle workers serving these queues, once per queue, at commit
SELECT pg_notify(%(channel)s, queue_name)
FROM unnest(%(queues)s::text[]) AS queue_name;

-- listen_for_jobs: subscribe this connection to enqueue wake-ups
LISTEN {channel};

-- listen_for_cancels: subscribe this connection to cancels of running jobs (pgq.cancel() notifies "<id> <lease token>")
LISTEN {cancel_channel};

-- listen_for_finishes: subscribe this connection to finished jobs (pgq.wait; payload "<lowest id>-<highest id>" of a batch)
LISTEN {finished_channel};

-- unlisten_finishes: pgq.wait is done with the caller's connection
UNLISTEN {finished_channel};

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
        started_at = now(),
        -- Left to the task at enqueue: its registered value, kept from now on (retries too).
        max_attempts = coalesce(
            j.max_attempts,
            (SELECT t.max_attempts FROM {schema}.tasks AS t WHERE t.name = j.task),
            5)
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
              j.lease_token, j.created_at, j.trace_context::text AS trace_context,
              j.priority, j.run_at
)
SELECT id, queue, task, args, attempts, max_attempts, lease_token, created_at, trace_context
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
        started_at = now(),
        -- Left to the task at enqueue: its registered value, kept from now on (retries too).
        max_attempts = coalesce(
            j.max_attempts,
            (SELECT t.max_attempts FROM {schema}.tasks AS t WHERE t.name = j.task),
            5)
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
              j.lease_token, j.created_at, j.trace_context::text AS trace_context,
              j.priority, j.run_at
)
SELECT id, queue, task, args, attempts, max_attempts, lease_token, created_at, trace_context
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
-- A row whose token no longer matches (lease lost, job rescued), or that is no longer
-- running (cancelled by an operator), is left alone and not returned.
-- One NOTIFY per batch (an InitPlan, run once) wakes pgq.wait callers: the payload
-- is the batch's lowest and highest id, "12-40", so a waiter for another job sleeps on.
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
  AND (SELECT true FROM pg_notify(%(finished_channel)s, %(finished_ids)s))
RETURNING j.id, locked.lease_token;

-- finish_succeeded_jobs: record a batch of successes and their results, each fenced by its lease token: three parameters where finish_jobs takes seven (edge: running -> succeeded)
-- The same fence, the same id-order locking and the same NOTIFY as finish_jobs.
-- results are JSON texts, NULL for a handler that returned None; the whole array is
-- NULL when every handler of the batch did (unnest pads it), which costs nothing.
WITH outcome AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(lease_tokens)s::uuid[], %(results)s::text[])
        AS outcome(id, lease_token, result)
),
locked AS (
    SELECT j.id, j.lease_token, outcome.result
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
    finished_at = now(),
    result = locked.result::jsonb
FROM locked
WHERE j.id = locked.id
  AND (SELECT true FROM pg_notify(%(finished_channel)s, %(finished_ids)s))
RETURNING j.id, locked.lease_token;

-- record_progress: store the latest progress each running job reported, fenced by its lease token (not an edge: the job stays running)
-- Rows are locked in id order, as extend_leases and the finish statements lock them.
WITH reported AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(lease_tokens)s::uuid[], %(progress)s::text[])
        AS reported(id, lease_token, progress)
),
locked AS (
    SELECT j.id, reported.progress
    FROM {schema}.jobs AS j
    JOIN reported ON j.id = reported.id AND j.lease_token = reported.lease_token
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR NO KEY UPDATE OF j
)
UPDATE {schema}.jobs AS j
SET progress = locked.progress::jsonb
FROM locked
WHERE j.id = locked.id
RETURNING j.id;

-- find_stale_jobs: up to %(limit)s running jobs whose lease expired, oldest expiry first, with their task's registered retry policy; read without a lock (rescue_jobs checks each one again under its lock)
-- pgq.rescue decides each one's fate (retry after a backoff, or dead) with the
-- same policy as a handler's failure (pgq.retry), then writes it with rescue_jobs.
-- A claim always resolves max_attempts; a row set running by hand may not have: the task's, else 5.
SELECT j.id, j.attempts, coalesce(j.max_attempts, t.max_attempts, 5),
       t.retry_base_seconds, t.retry_cap_seconds
FROM {schema}.jobs AS j
LEFT JOIN {schema}.tasks AS t ON t.name = j.task
WHERE j.status = 'running'
  AND j.locked_until < now()
ORDER BY j.locked_until
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
    SELECT j.id, decided.delay_seconds, decided.max_attempts
    FROM {schema}.jobs AS j
    JOIN decided
      ON decided.id = j.id
     AND decided.attempts = j.attempts
     AND decided.max_attempts = coalesce(j.max_attempts, decided.max_attempts)
    WHERE j.status = 'running'
      AND j.locked_until < now()
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {schema}.jobs AS j
SET status = CASE WHEN stale.delay_seconds IS NULL THEN 'dead' ELSE 'queued' END::{schema}.job_status,
    run_at = coalesce(now() + stale.delay_seconds * interval '1 second', j.run_at),
    finished_at = CASE WHEN stale.delay_seconds IS NULL THEN now() END,
    max_attempts = stale.max_attempts,
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

-- declare_schedule: a worker's schedule: created at its first declaration (its ticks start then), else marked declared again; returns its id and progress
-- The last declaration sets misfire. greatest(): a worker whose clock lags does not
-- move declared_at back.
INSERT INTO {schema}.schedules AS s (task, cron, tz, args, misfire, ticked_through, declared_at)
VALUES (%(task)s, %(cron)s, %(tz)s, %(args)s::jsonb, %(misfire)s, %(now)s, %(now)s)
ON CONFLICT (task, cron, tz, md5(args::text))
DO UPDATE SET misfire = EXCLUDED.misfire,
              declared_at = greatest(s.declared_at, EXCLUDED.declared_at)
RETURNING s.id, s.ticked_through;

-- prune_undeclared_schedules: delete schedules that no worker declared for %(forget_after_seconds)s (removed from the code)
DELETE FROM {schema}.schedules
WHERE declared_at < %(now)s::timestamptz - %(forget_after_seconds)s * interval '1 second';

-- read_schedule_progress: the tick a schedule is done through (another worker may have moved it)
SELECT ticked_through
FROM {schema}.schedules
WHERE id = %(schedule_id)s;

-- advance_schedule: move a schedule's ticked_through forward to %(tick)s and, if %(run)s, insert that tick's job, in one statement; no row if another worker got there first (edge: new -> queued)
-- The row lock serialises the workers racing for one tick: the first moves
-- ticked_through; the others wait for its commit, then find ticked_through no longer
-- before the tick (READ COMMITTED re-checks a locked row's WHERE) and make nothing.
-- Returns the tick before this one (for the log line) and the new job's id.
WITH claimed AS (
    SELECT id, task, args, ticked_through AS previous
    FROM {schema}.schedules
    WHERE id = %(schedule_id)s
      AND ticked_through < %(tick)s
    FOR UPDATE
), job AS (
    INSERT INTO {schema}.jobs (task, args, queue, run_at, max_attempts)
    SELECT task, args, %(queue)s, %(tick)s, %(max_attempts)s
    FROM claimed
    WHERE %(run)s
    RETURNING id, queue
), advanced AS (
    UPDATE {schema}.schedules AS s
    SET ticked_through = %(tick)s,
        last_tick = CASE WHEN %(run)s THEN %(tick)s ELSE s.last_tick END,
        last_job_id = CASE WHEN %(run)s THEN (SELECT id FROM job) ELSE s.last_job_id END
    FROM claimed
    WHERE s.id = claimed.id
)
SELECT claimed.previous, made.id
FROM claimed
LEFT JOIN (SELECT job.id FROM job, pg_notify(%(channel)s, job.queue)) AS made ON true;
-- lock_registered_tasks: the stored defaults of a starting worker's tasks, locked until it has registered its own (register_tasks), so that it can say what it changed
-- In name order, as register_tasks writes: two workers starting together wait, never deadlock.
SELECT name, queue, priority, max_attempts, timeout_seconds, retry_base_seconds,
       retry_cap_seconds, registered_by
FROM {schema}.tasks
WHERE name = ANY(%(names)s::text[])
ORDER BY name
FOR UPDATE;

-- register_tasks: a starting worker stores its tasks' declared defaults: the latest started worker wins
INSERT INTO {schema}.tasks AS t
    (name, queue, priority, max_attempts, timeout_seconds, retry_base_seconds,
     retry_cap_seconds, registered_by, registered_at)
SELECT declared.*, %(worker)s, now()
FROM unnest(
    %(names)s::text[],
    %(queues)s::text[],
    %(priorities)s::integer[],
    %(max_attempts)s::integer[],
    %(timeouts_seconds)s::float8[],
    %(retry_base_seconds)s::float8[],
    %(retry_cap_seconds)s::float8[]
) AS declared(name, queue, priority, max_attempts, timeout_seconds,
              retry_base_seconds, retry_cap_seconds)
ORDER BY declared.name
ON CONFLICT (name) DO UPDATE
SET queue = excluded.queue,
    priority = excluded.priority,
    max_attempts = excluded.max_attempts,
    timeout_seconds = excluded.timeout_seconds,
    retry_base_seconds = excluded.retry_base_seconds,
    retry_cap_seconds = excluded.retry_cap_seconds,
    registered_by = excluded.registered_by,
    registered_at = excluded.registered_at;

-- reroute_jobs: queued jobs that left queue or priority to their task take the task's registered ones (after register_tasks changed them), waking the workers of each new queue
-- Reads every queued job of these tasks: run only when a declaration changed.
WITH moved AS (
    UPDATE {schema}.jobs AS j
    SET queue = CASE WHEN j.queue_from_task THEN t.queue ELSE j.queue END,
        priority = CASE WHEN j.priority_from_task THEN t.priority ELSE j.priority END
    FROM {schema}.tasks AS t
    WHERE t.name = ANY(%(names)s::text[])
      AND j.task = t.name
      AND j.status = 'queued'
      AND ((j.queue_from_task AND j.queue <> t.queue)
           OR (j.priority_from_task AND j.priority <> t.priority))
    RETURNING j.queue
),
woken AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM moved) AS queues
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM woken);

-- register_worker: a starting worker's row in the fleet's list (live_workers); a name used before is taken over
INSERT INTO {schema}.workers AS w
    (name, host, pid, version, queues, tasks, concurrency, running, lease_seconds,
     started_at, last_seen_at)
VALUES (%(name)s, %(host)s, %(pid)s, %(version)s, %(queues)s::text[], %(tasks)s::text[],
        %(concurrency)s, %(running)s, %(lease_seconds)s, now(), now())
ON CONFLICT (name) DO UPDATE
SET host = excluded.host,
    pid = excluded.pid,
    version = excluded.version,
    queues = excluded.queues,
    tasks = excluded.tasks,
    concurrency = excluded.concurrency,
    running = excluded.running,
    lease_seconds = excluded.lease_seconds,
    started_at = excluded.started_at,
    last_seen_at = excluded.last_seen_at;

-- touch_worker: the heartbeat: this worker is alive, running this many jobs (no row: it was pruned, register again)
UPDATE {schema}.workers
SET last_seen_at = now(),
    running = %(running)s
WHERE name = %(name)s;

-- remove_worker: a worker that stopped cleanly leaves the list at once
DELETE FROM {schema}.workers
WHERE name = %(name)s;

-- prune_workers: forget workers not seen for their lease plus %(keep_seconds)s (maintenance; live_workers already hides them)
DELETE FROM {schema}.workers
WHERE last_seen_at < now() - (lease_seconds + %(keep_seconds)s) * interval '1 second';

-- list_tasks: the task registry (`pgq tasks`)
SELECT task, queue, priority, max_attempts, timeout_seconds, retry_base_seconds,
       retry_cap_seconds, registered_by, registered_at
FROM {schema}.task_defaults
ORDER BY task;

-- list_live_workers: the workers alive now (`pgq workers`)
SELECT name, host, pid, version, queues, tasks, concurrency, running, started_at, last_seen_at
FROM {schema}.live_workers
ORDER BY started_at, name;

-- read_unserved_jobs: queued jobs per task and queue that no live worker serves (`pgq stats`, the metric)
SELECT task, queue, due, scheduled, oldest_run_at
FROM {schema}.unserved_jobs
ORDER BY task, queue;

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

-- read_schedule_status: every schedule, its last tick and that job's status (operators' view pgq.schedule_status)
SELECT id, task, cron, tz, args::text, misfire, ticked_through, last_tick, last_job_id,
       last_job_status, declared_at
FROM {schema}.schedule_status
ORDER BY task, id;

-- list_jobs: newest jobs first, each filter ignored when NULL; pages by id (keyset: before_id), never by OFFSET
-- The search matches the id itself, or a LIKE pattern (its wildcards escaped by pgq.admin)
-- found in the task, the args' text or the last error.
-- The status parameter is typed job_status at both uses (never text cast to the enum, a
-- function call the planner cannot fold): a status then matches the partial indexes, and
-- "queued" or "dead" reads those few rows, not a million finished ones along the key.
SELECT id, queue, task, status::text, priority, attempts,
       coalesce(max_attempts, (SELECT t.max_attempts FROM {schema}.tasks AS t WHERE t.name = task)),
       run_at, created_at,
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

-- get_job: one job with everything pgq keeps about it; args, errors, result and progress as text (pgq.admin decodes them, copes with JSON Python cannot decode, and does not depend on the connection's jsonb loader); a max_attempts left to the task shows the task's registered one
SELECT id, queue, task, status::text, priority, attempts,
       coalesce(max_attempts, (SELECT t.max_attempts FROM {schema}.tasks AS t WHERE t.name = task)),
       run_at, created_at,
       started_at, finished_at, locked_by, last_error, args::text, errors::text, locked_until, dedupe_key,
       result::text, progress::text
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

-- cancel_job: cancel a queued or running job through the operators' function (edges: queued | running -> cancelled)
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
GRANT INSERT (task, args, queue, priority, run_at, max_attempts, dedupe_key, queue_from_task, priority_from_task, trace_context)
    ON {schema}.jobs TO {producer};
-- The task defaults an enqueue reads are readable by PUBLIC (migrations/0006).
GRANT SELECT (id, queue, status, dedupe_key) ON {schema}.jobs TO {producer};
-- Worker: claim, heartbeat, finish, rescue and prune jobs; refresh the metrics snapshot.
GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {worker};
GRANT SELECT ON {schema}.queue_stats TO {worker};
GRANT SELECT, INSERT, DELETE ON {schema}.queue_stats_snapshot TO {worker};
GRANT EXECUTE ON FUNCTION {schema}.prune(text, interval, integer) TO {worker};
-- Periodic tasks: declare schedules, make their ticks' jobs (the columns advance_schedule sets).
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.schedules TO {worker};
GRANT INSERT (task, args, queue, run_at, max_attempts) ON {schema}.jobs TO {worker};
GRANT EXECUTE ON FUNCTION {schema}.refresh_queue_stats(interval) TO {worker};
-- Register its tasks and itself, heartbeat, leave.
GRANT SELECT, INSERT, UPDATE ON {schema}.tasks TO {worker};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.workers TO {worker};
GRANT SELECT ON {schema}.live_workers, {schema}.unserved_jobs TO {worker};
-- Operator: inspect everything, requeue, cancel, retry and prune; enqueue by hand.
GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {operator};
GRANT SELECT ON {schema}.queue_stats, {schema}.job_counts, {schema}.dead_jobs, {schema}.running_jobs TO {operator};
GRANT SELECT ON {schema}.schedule_status TO {operator};
GRANT SELECT ON {schema}.tasks, {schema}.task_defaults, {schema}.live_workers, {schema}.unserved_jobs TO {operator};
GRANT SELECT ON {schema}.job_results TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.requeue(bigint) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.requeue_dead(text, text, text, timestamptz, timestamptz, integer, bigint[]) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.dead_job_matches({schema}.jobs, text, text, text, timestamptz, timestamptz) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.requeueable_dead_job_ids(text, text, text, timestamptz, timestamptz) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.cancel(bigint) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.retry_now(bigint) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.prune(text, interval, integer) TO {operator};
GRANT EXECUTE ON FUNCTION {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text) TO {operator};
GRANT INSERT (task, args, queue, priority, run_at, max_attempts, dedupe_key, queue_from_task, priority_from_task, trace_context)
    ON {schema}.jobs TO {operator};
-- Functions that later migrations add are not executable by everyone either.
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;


-- find_enqueued_jobs: queued jobs matching every filter given (NULL: any), oldest first; args by JSON containment (pgq.testing)
SELECT id
FROM {schema}.jobs
WHERE status = 'queued'
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(args)s::jsonb IS NULL OR args @> %(args)s::jsonb)
ORDER BY id;

-- drop_test_schema: the pytest plugin's session schema, at the end of the session (pgq.testing.plugin)
DROP SCHEMA IF EXISTS {schema} CASCADE;
