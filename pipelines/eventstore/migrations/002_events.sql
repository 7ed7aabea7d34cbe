-- The events table: one append-only row per change, with the aggregate's full state after it.
CREATE TABLE eventstore.events (
    event_id            uuid        NOT NULL,
    tenant_id           uuid        NOT NULL,
    aggregate_kind      text        NOT NULL,
    aggregate_id        uuid        NOT NULL,
    event_name          text        NOT NULL,
    event_payload       jsonb       NOT NULL,
    aggregate_snapshot  jsonb       NOT NULL,
    event_at            timestamptz NOT NULL,
    -- The writing transaction's id: the pipeline's commit-order-safe cursor reads rows whose
    -- transaction lies below the oldest transaction still running, so nothing can appear behind it.
    tx_id               xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- A partitioned table's key must include the partition column; event_id alone is therefore
    -- not unique-enforced by PostgreSQL (the pipeline checks it).
    PRIMARY KEY (event_id, event_at)
) PARTITION BY RANGE (event_at);

CREATE INDEX events_tx_id_idx ON eventstore.events (tx_id);
CREATE INDEX events_aggregate_idx ON eventstore.events (tenant_id, aggregate_id, event_at);

CREATE TABLE eventstore.events_default PARTITION OF eventstore.events DEFAULT;

-- Monthly partitions (UTC month boundaries) for [p_from, p_to). Returns how many were created.
-- A month whose rows already sit in the default partition is skipped with a notice (PostgreSQL
-- refuses to create that partition until the rows are moved).
CREATE FUNCTION eventstore.ensure_monthly_partitions(p_from timestamptz, p_to timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    month_start timestamptz := date_trunc('month', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    month_end   timestamptz;
    part_name   text;
    created     integer := 0;
BEGIN
    WHILE month_start < p_to LOOP
        month_end := ((month_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
        part_name := 'events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass('eventstore.' || part_name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE eventstore.%I PARTITION OF eventstore.events FOR VALUES FROM (%L) TO (%L)',
                    part_name, month_start, month_end);
                EXECUTE format(
                    'CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON eventstore.%I '
                    'FOR EACH STATEMENT EXECUTE FUNCTION eventstore.reject_change()', part_name);
                created := created + 1;
            EXCEPTION WHEN check_violation THEN
                RAISE NOTICE 'partition % not created: the default partition holds rows in its range', part_name;
            END;
        END IF;
        month_start := month_end;
    END LOOP;
    RETURN created;
END
$$;
