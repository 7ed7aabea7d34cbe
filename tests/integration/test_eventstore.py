"""The event store's reference schema on a real PostgreSQL server, and the generator."""

import uuid

import psycopg
import pytest

from pipelines.eventstore import init_eventstore
from pipelines.eventstore.generate import generate_events, tenant_id_for


def rows(dsn: str, sql: str, params=None, setup: str | None = None):
    with psycopg.connect(dsn) as conn:
        if setup:
            conn.execute(setup)
        return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def filled_store(new_store):
    store = new_store()
    generate_events(store.admin_dsn, 600, tenants=3, seed=7)
    return store


def test_init_is_idempotent(filled_store):
    assert init_eventstore(filled_store.admin_dsn) == []
    versions = [
        r[0] for r in rows(filled_store.admin_dsn, "SELECT version FROM eventstore.schema_migrations ORDER BY 1")
    ]
    assert versions == [
        "001_roles_and_schema",
        "002_events",
        "003_append_only",
        "004_row_level_security",
        "005_pipeline_monitoring",
    ]


def test_table_is_partitioned_with_a_default_partition(filled_store):
    parts = [
        r[0]
        for r in rows(
            filled_store.admin_dsn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'eventstore.events'::regclass",
        )
    ]
    assert "events_default" in parts
    assert "events_2025_01" in parts and "events_2026_06" in parts
    # the generator's events landed in monthly partitions, not in the default one
    assert rows(filled_store.admin_dsn, "SELECT count(*) FROM eventstore.events_default")[0][0] == 0


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE eventstore.events SET event_name = 'x'",
        "DELETE FROM eventstore.events",
        "TRUNCATE eventstore.events",
        "DELETE FROM eventstore.events_2025_03",
    ],
)
def test_append_only_even_for_the_owner(filled_store, statement):
    # The admin DSN is the table's owner and a superuser: the trigger stops it all the same.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        rows(filled_store.admin_dsn, statement)
    assert rows(filled_store.admin_dsn, "SELECT count(*) FROM eventstore.events")[0][0] == 600


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO eventstore.events (event_id, tenant_id, aggregate_kind, aggregate_id, event_name,"
        " event_payload, aggregate_snapshot, event_at) VALUES (gen_random_uuid(), gen_random_uuid(),"
        " 'Patient', gen_random_uuid(), 'X', '{}', '{}', now())",
        "UPDATE eventstore.events SET event_name = 'x'",
        "DELETE FROM eventstore.events",
        "CREATE TABLE eventstore.sneaky (id int)",
        "CREATE TABLE public.sneaky (id int)",
    ],
)
def test_pipeline_role_cannot_write(filled_store, statement):
    # Read-only by default; and with read-only switched off in the session, by privileges.
    with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
        rows(filled_store.dsn, statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        rows(filled_store.dsn, statement, setup="SET TRANSACTION READ WRITE")


def test_pipeline_sessions_are_read_only_by_default(filled_store):
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        rows(filled_store.dsn, "CREATE TEMP TABLE scratch (id int)")


def test_pipeline_role_is_not_the_owner_and_sees_every_tenant(filled_store):
    owner = rows(filled_store.admin_dsn, "SELECT tableowner FROM pg_tables WHERE tablename = 'events'")[0][0]
    assert owner != "lakehouse_pipeline"
    per_tenant = dict(rows(filled_store.dsn, "SELECT tenant_id::text, count(*) FROM eventstore.events GROUP BY 1"))
    assert set(per_tenant) == {tenant_id_for(n) for n in (1, 2, 3)}
    assert sum(per_tenant.values()) == 600


def test_row_level_security_scopes_products_to_their_tenant(filled_store):
    tenant = tenant_id_for(2)
    expected = rows(filled_store.admin_dsn, "SELECT count(*) FROM eventstore.events WHERE tenant_id = %s", (tenant,))[
        0
    ][0]
    assert 0 < expected < 600
    setup = f"SET ROLE eventstore_app; SET app.current_tenant_id = '{tenant}'"
    seen = rows(
        filled_store.admin_dsn, "SELECT DISTINCT tenant_id::text, count(*) OVER () FROM eventstore.events", setup=setup
    )
    assert seen == [(tenant, expected)]
    # without the tenant setting a product sees nothing
    assert (
        rows(filled_store.admin_dsn, "SELECT count(*) FROM eventstore.events", setup="SET ROLE eventstore_app")[0][0]
        == 0
    )
    # and cannot write another tenant's row
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        rows(
            filled_store.admin_dsn,
            "INSERT INTO eventstore.events (event_id, tenant_id, aggregate_kind, aggregate_id, event_name,"
            " event_payload, aggregate_snapshot, event_at) VALUES (%s, %s, 'Patient', %s, 'X', '{}', '{}', now())",
            (str(uuid.uuid4()), tenant_id_for(1), str(uuid.uuid4())),
            setup=setup,
        )


def test_each_row_records_its_writing_transaction(filled_store):
    with psycopg.connect(filled_store.admin_dsn) as conn:
        # tx_id is the database's value, whatever the writer sends (the app role cannot set it)
        conn.execute("SET ROLE eventstore_app")
        conn.execute(f"SET app.current_tenant_id = '{tenant_id_for(1)}'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO eventstore.events (event_id, tenant_id, aggregate_kind, aggregate_id, event_name,"
                " event_payload, aggregate_snapshot, event_at, tx_id) VALUES (gen_random_uuid(), %s, 'Patient',"
                " gen_random_uuid(), 'X', '{}', '{}', now(), '1')",
                (tenant_id_for(1),),
            )
    indexed = rows(
        filled_store.admin_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'events' AND indexdef LIKE '%tx_id%'"
    )
    assert indexed


def test_generator_is_deterministic_for_a_seed(new_store):
    first, second = new_store(), new_store()
    for store in (first, second):
        generate_events(store.admin_dsn, 300, tenants=2, seed=11)
    query = "SELECT event_id, aggregate_id, event_name, aggregate_snapshot, event_payload, event_at FROM eventstore.events ORDER BY event_at, event_id"
    assert rows(first.admin_dsn, query) == rows(second.admin_dsn, query)
    other = new_store()
    generate_events(other.admin_dsn, 300, tenants=2, seed=12)
    assert rows(other.admin_dsn, query) != rows(first.admin_dsn, query)


def test_generated_workload_looks_like_a_pharmacy(filled_store):
    kinds = {r[0] for r in rows(filled_store.dsn, "SELECT DISTINCT aggregate_kind FROM eventstore.events")}
    assert kinds == {"Patient", "Prescription", "Dispensing", "MedicationGuidance"}
    names = {r[0] for r in rows(filled_store.dsn, "SELECT DISTINCT event_name FROM eventstore.events")}
    assert {"PatientRegistered", "PatientAddressChanged", "PrescriptionReceived", "DispensingCompleted"} <= names
    family, prefecture, actor, months = rows(
        filled_store.dsn,
        "SELECT aggregate_snapshot->'name'->>'family', aggregate_snapshot->'address'->>'prefecture',"
        " event_payload->'actor'->>'name', (SELECT count(DISTINCT date_trunc('month', event_at)) FROM eventstore.events)"
        " FROM eventstore.events WHERE event_name = 'PatientRegistered' LIMIT 1",
    )[0]
    assert family and prefecture.endswith(("都", "道", "府", "県"))
    assert actor
    assert months >= 12
    # every snapshot is the state after its event: versions of one aggregate count up by one
    gaps = rows(
        filled_store.dsn,
        "SELECT count(*) FROM (SELECT (aggregate_snapshot->>'version')::int - lag((aggregate_snapshot->>'version')::int)"
        " OVER (PARTITION BY aggregate_id ORDER BY event_at) AS step FROM eventstore.events) s WHERE step <> 1",
    )[0][0]
    assert gaps == 0


def test_generator_continues_existing_aggregates_later_in_time(new_store):
    store = new_store()
    generate_events(store.admin_dsn, 400, tenants=2, seed=5)
    (last_before,) = rows(store.admin_dsn, "SELECT max(event_at) FROM eventstore.events")[0]
    generate_events(store.admin_dsn, 200, tenants=2, seed=5)
    assert rows(store.admin_dsn, "SELECT count(*), count(DISTINCT event_id) FROM eventstore.events")[0] == (600, 600)
    continued = rows(
        store.admin_dsn,
        "SELECT count(*) FROM eventstore.events e WHERE e.event_at > %s AND EXISTS ("
        " SELECT 1 FROM eventstore.events o WHERE o.aggregate_id = e.aggregate_id AND o.event_at <= %s)",
        (last_before, last_before),
    )[0][0]
    assert continued > 0
