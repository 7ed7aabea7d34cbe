-- The pipeline reports how long the oldest open write transaction has been holding its cursor
-- back (freshness lag). pg_stat_activity shows other roles' transactions only to members of
-- pg_read_all_stats, a read-only monitoring role. Granting it needs a superuser (or a role with
-- ADMIN on it); without it the lag is reported as unknown and nothing else changes.
DO $$
BEGIN
    GRANT pg_read_all_stats TO lakehouse_pipeline;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_read_all_stats not granted to lakehouse_pipeline: the open-transaction lag will be unknown';
END
$$;
