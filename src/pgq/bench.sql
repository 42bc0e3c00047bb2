-- The statements of `pgq bench` (pgq/bench.py), which works in a temporary
-- schema of its own. Loaded by pgq.queries like queries.sql.

-- count_unfinished_jobs: jobs still queued or running (`pgq bench` waits for zero)
SELECT count(*)
FROM {schema}.jobs
WHERE status IN ('queued', 'running');

-- drop_schema: remove a temporary pgq schema and everything in it (`pgq bench` cleaning up)
DROP SCHEMA IF EXISTS {schema} CASCADE;
