-- Roles and schema of the event store.
-- lakehouse_pipeline: the pipeline's login role. Read-only, not the table owner, sees every tenant
--   through an explicit policy (below). Role names are cluster-wide, so creation is conditional.
-- eventstore_app: what the products write with; tenant-scoped by row-level security.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lakehouse_pipeline') THEN
    CREATE ROLE lakehouse_pipeline LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eventstore_app') THEN
    CREATE ROLE eventstore_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
END
$$;

-- Belt and braces: every transaction of the pipeline's role is read-only by default.
ALTER ROLE lakehouse_pipeline SET default_transaction_read_only = on;

CREATE SCHEMA IF NOT EXISTS eventstore;
