"""Tenant-scoped readers never show another tenant's row: a property test over tenants, tables and SQL.

The expected counts come from PostgreSQL itself, read as the product role under row-level security
with the tenant set, not from the lake.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.audit import AggregateNotFoundError
from pipelines.errors import LakehouseError, TenantScopeError
from pipelines.eventstore.generate import generate_events
from pipelines.sync import run_sync
from pipelines.tables import table_path
from pipelines.tenant import TenantReader
from tests.conftest import make_settings

TABLES = ["raw_events", "patient_history", "patient_current", "prescription_history", "dispensing_current"]
KIND_OF = {"patient": "Patient", "prescription": "Prescription", "dispensing": "Dispensing"}
UNKNOWN_TENANT = "00000000-0000-4000-8000-0000000000ff"


class Lake:
    def __init__(self, settings, tenants, truth, aggregates):
        self.settings = settings
        self.tenants = tenants
        self.truth = truth  # (tenant, table) -> rows PostgreSQL's RLS lets the tenant see
        self.aggregates = aggregates  # tenant -> one of its Patient aggregates


def _rls_counts(store, tenant: str) -> dict[str, int]:
    with psycopg.connect(store.admin_dsn) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE eventstore_app")
        conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", (tenant,))

        def one(sql: str, *params) -> int:
            return conn.execute(sql, params).fetchone()[0]

        counts = {"raw_events": one("SELECT count(*) FROM eventstore.events")}
        for prefix, kind in KIND_OF.items():
            counts[f"{prefix}_history"] = one("SELECT count(*) FROM eventstore.events WHERE aggregate_kind = %s", kind)
            counts[f"{prefix}_current"] = one(
                "SELECT count(DISTINCT aggregate_id) FROM eventstore.events WHERE aggregate_kind = %s", kind
            )
        return counts


@pytest.fixture(scope="module")
def tenant_lake(new_store, spark, tmp_path_factory) -> Lake:
    store = new_store()
    lake_settings = make_settings(store, str(tmp_path_factory.mktemp("tenants") / "warehouse"))
    generate_events(store.admin_dsn, 500, tenants=3, seed=31)
    run_sync(spark, lake_settings)
    with psycopg.connect(store.admin_dsn) as conn:
        tenants = [r[0] for r in conn.execute("SELECT DISTINCT tenant_id::text FROM eventstore.events ORDER BY 1")]
        aggregates = {
            t: conn.execute(
                "SELECT min(aggregate_id::text) FROM eventstore.events WHERE tenant_id = %s AND aggregate_kind = 'Patient'",
                (t,),
            ).fetchone()[0]
            for t in tenants
        }
    truth = {}
    for tenant in [*tenants, UNKNOWN_TENANT]:
        for table, count in _rls_counts(store, tenant).items():
            truth[(tenant, table)] = count
    assert len(tenants) == 3 and all(truth[(t, "raw_events")] > 0 for t in tenants)
    return Lake(lake_settings, tenants, truth, aggregates)


FILTERS = [
    "1 = 1",
    "tenant_id <> '{me}'",
    "tenant_id = '{other}'",
    "1 = 1 OR tenant_id = '{other}'",
    "NOT (tenant_id = '{me}') OR tenant_id IS NULL",
    "tenant_id IN ('{other}', '{me}')",
    "aggregate_id = '{other_aggregate}'",
    "aggregate_id <> '{other_aggregate}'",
]
SHAPES = [
    "SELECT * FROM {table} WHERE {filter}",
    "SELECT tenant_id FROM {table} WHERE {filter} UNION ALL SELECT tenant_id FROM {table2}",
    "WITH x AS (SELECT * FROM {table} WHERE {filter}) SELECT x.tenant_id FROM x",
    "SELECT t.tenant_id FROM (SELECT * FROM {table} WHERE {filter}) t"
    " JOIN {table2} u ON t.tenant_id = u.tenant_id OR u.tenant_id = '{other}' LIMIT 50",
    "SELECT tenant_id FROM {table} WHERE {filter} AND EXISTS (SELECT 1 FROM {table2} WHERE tenant_id = '{other}')",
    "SELECT tenant_id, count(*) AS n FROM {table} WHERE {filter} GROUP BY tenant_id",
]
ESCAPES = [
    "SELECT * FROM delta.`{path}`",
    "SELECT tenant_id FROM {table} UNION ALL SELECT tenant_id FROM delta.`{path}`",
    "SELECT * FROM {table} WHERE aggregate_id IN (SELECT aggregate_id FROM delta.`{path}` WHERE tenant_id = '{other}')",
    "SELECT * FROM parquet.`{path}`",
    "WITH x AS (SELECT * FROM delta.`{path}`) SELECT * FROM x",
]


def _words(lake: Lake, tenant: str, table: str, table2: str) -> dict[str, str]:
    other = next(t for t in lake.tenants if t != tenant)
    return {
        "me": tenant,
        "other": other,
        "other_aggregate": lake.aggregates[other],
        "table": table,
        "table2": table2,
        "path": table_path(lake.settings, table),
    }


tenants_st = st.sampled_from(["a", "b", "c", "unknown"])
tables_st = st.sampled_from(TABLES)


def _tenant(lake: Lake, pick: str) -> str:
    return UNKNOWN_TENANT if pick == "unknown" else lake.tenants["abc".index(pick)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pick=tenants_st, table=tables_st, table2=tables_st, shape=st.sampled_from(SHAPES), where=st.sampled_from(FILTERS)
)
def test_sql_bound_to_a_tenant_never_shows_another_tenants_row(tenant_lake, spark, pick, table, table2, shape, where):
    tenant = _tenant(tenant_lake, pick)
    words = _words(tenant_lake, tenant, table, table2)
    query = shape.format(filter=where.format(**words), **words)
    reader = TenantReader(tenant_lake.settings, tenant)
    frame, pinned = reader.sql(spark, query)
    rows = frame.collect()
    assert {r["tenant_id"] for r in rows} <= {tenant}, query
    assert pinned.tenant == tenant
    if shape == SHAPES[0] and where == "1 = 1":
        assert len(rows) == tenant_lake.truth[(tenant, table)], query


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=tenants_st, table=tables_st, shape=st.sampled_from(ESCAPES))
def test_sql_bound_to_a_tenant_cannot_read_around_its_views(tenant_lake, spark, pick, table, shape):
    tenant = _tenant(tenant_lake, pick)
    query = shape.format(**_words(tenant_lake, tenant, table, table))
    with pytest.raises(TenantScopeError, match=f"bound to tenant {tenant} may read only its views"):
        TenantReader(tenant_lake.settings, tenant).sql(spark, query)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pick=tenants_st,
    table=tables_st,
    column=st.sampled_from(["tenant_id", "aggregate_id", "event_name", None]),
    foreign=st.booleans(),
)
def test_jvm_free_reads_bound_to_a_tenant(tenant_lake, pick, table, column, foreign):
    tenant = _tenant(tenant_lake, pick)
    other = next(t for t in tenant_lake.tenants if t != tenant)
    value = {"tenant_id": other if foreign else tenant, "aggregate_id": tenant_lake.aggregates[other]}.get(
        column, "PatientRegistered"
    )
    where = [f"{column}={value}"] if column else None
    result = TenantReader(tenant_lake.settings, tenant).read(table, where=where)
    assert set(result.rows.column("tenant_id").to_pylist()) <= {tenant}
    if column is None:
        assert result.total_rows == tenant_lake.truth[(tenant, table)]
    if column == "aggregate_id" or (column == "tenant_id" and foreign):
        assert result.total_rows == 0


def test_another_tenants_aggregate_is_not_found(tenant_lake):
    first, second = tenant_lake.tenants[:2]
    mine = TenantReader(tenant_lake.settings, first).lookup("patient", tenant_lake.aggregates[first])
    assert mine.tenant_id == first
    with pytest.raises(AggregateNotFoundError, match="not found for tenant"):
        TenantReader(tenant_lake.settings, first).lookup("patient", tenant_lake.aggregates[second])
    with pytest.raises(AggregateNotFoundError):
        TenantReader(tenant_lake.settings, str(uuid.uuid4())).lookup("patient", tenant_lake.aggregates[first])
    with pytest.raises(TenantScopeError, match="lake.s own tables"):
        TenantReader(tenant_lake.settings, first).read("_snapshots")


def test_tenant_ids_are_checked_and_compared_as_the_store_writes_them(tenant_lake):
    tenant = tenant_lake.tenants[0]
    lower = TenantReader(tenant_lake.settings, tenant).read("patient_current")
    upper = TenantReader(tenant_lake.settings, tenant.upper()).read("patient_current")
    assert upper.total_rows == lower.total_rows == tenant_lake.truth[(tenant, "patient_current")]
    for bad in ("", "   ", "nonsense", tenant[:-1]):
        with pytest.raises(LakehouseError):
            TenantReader(tenant_lake.settings, bad)
    # The lake's own tables are not a tenant's, even where they have a tenant_id column.
    with pytest.raises(TenantScopeError, match="lake's own tables"):
        TenantReader(tenant_lake.settings, tenant).read("_audit_log")
