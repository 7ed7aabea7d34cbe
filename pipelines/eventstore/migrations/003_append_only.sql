-- Append-only, enforced by the database for everybody, the owner included.
CREATE FUNCTION eventstore.reject_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'eventstore.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON eventstore.events
    FOR EACH ROW EXECUTE FUNCTION eventstore.reject_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore.reject_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON eventstore.events_default
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore.reject_change();

-- Monthly partitions from two years back to three months ahead; the generator and the products'
-- operations add more ahead of time with eventstore.ensure_monthly_partitions.
SELECT eventstore.ensure_monthly_partitions(now() - interval '24 months', now() + interval '3 months');
