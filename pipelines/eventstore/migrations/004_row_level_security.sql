-- Row-level security by tenant, the products' way: SET app.current_tenant_id = '<uuid>'.
-- Enabled and forced, so the table owner is subject to it too (superusers and BYPASSRLS roles
-- are not, by PostgreSQL's design).
ALTER TABLE eventstore.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE eventstore.events FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON eventstore.events
    USING (tenant_id = nullif(current_setting('app.current_tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = nullif(current_setting('app.current_tenant_id', true), '')::uuid);

-- The pipeline sees every tenant, explicitly, and only reads.
CREATE POLICY pipeline_reads_all_tenants ON eventstore.events
    FOR SELECT TO lakehouse_pipeline
    USING (true);

GRANT USAGE ON SCHEMA eventstore TO lakehouse_pipeline, eventstore_app;
GRANT SELECT ON eventstore.events TO lakehouse_pipeline;
-- Products insert and read their own tenant's rows; tx_id is always the database's own value.
GRANT SELECT ON eventstore.events TO eventstore_app;
GRANT INSERT (event_id, tenant_id, aggregate_kind, aggregate_id, event_name, event_payload,
              aggregate_snapshot, event_at)
    ON eventstore.events TO eventstore_app;
