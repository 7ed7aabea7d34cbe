"""Table layout for lookups: a tenant's or an aggregate's rows are read without opening every file.

Measured with the file statistics in the Delta log (what every JVM-free read prunes with), before
and after `lakehouse optimize`, which must change neither the rows nor what time travel returns.
"""

from __future__ import annotations

import psycopg
import pytest

from pipelines import lake
from pipelines.audit import lookup
from pipelines.eventstore.generate import generate_events
from pipelines.maintenance import lookup_files, optimize
from pipelines.read import read_table
from pipelines.sync import run_sync
from pipelines.tables import RAW_EVENTS, SNAPSHOTS
from tests.conftest import make_settings
from tests.integration.test_readers import canonical


@pytest.fixture(scope="module")
def laid_out(new_store, spark, tmp_path_factory):
    store = new_store()
    # Tiny files, so that a few hundred events spread over several of them.
    settings = make_settings(store, str(tmp_path_factory.mktemp("layout") / "warehouse"), layout_file_mb=0.012)
    generate_events(store.admin_dsn, 900, tenants=3, seed=41)
    run_sync(spark, settings)
    generate_events(store.admin_dsn, 300, tenants=3, seed=42, days=5)
    run_sync(spark, settings)
    with psycopg.connect(store.admin_dsn) as conn:
        tenant, aggregate = conn.execute(
            "SELECT tenant_id::text, aggregate_id::text FROM eventstore.events WHERE aggregate_kind = 'Patient'"
            " ORDER BY event_id LIMIT 1"
        ).fetchone()
    tables = ["patient_history", "patient_current", RAW_EVENTS]
    before = {name: lake.delta_version(settings, name) for name in tables}
    rows_before = {name: canonical(read_table(settings, name, limit=None).rows.to_pylist()) for name in tables}
    audit_before = lookup(settings, "patient", aggregate, as_of="2030-01-01")
    measured_before = {
        name: (lookup_files(settings, name, tenant_id=tenant, aggregate_id=aggregate), lookup_files(settings, name))
        for name in tables
    }
    results = {r["table"]: r for r in optimize(spark, settings)}
    return settings, tenant, aggregate, before, rows_before, audit_before, measured_before, results


def test_optimize_lays_silver_tables_out_by_tenant_and_aggregate(laid_out):
    settings, tenant, aggregate, _, _, _, measured_before, results = laid_out
    assert {results[n]["how"] for n in ("patient_history", "patient_current")} == {"sorted"}
    assert results[RAW_EVENTS]["how"] == "zorder" and results[SNAPSHOTS]["how"] == "compact"
    for name in ("patient_history", "patient_current"):
        (point_before, total_before), _ = measured_before[name]
        assert point_before == total_before, f"{name}: before the layout a point lookup opens every file"
        point, total = lookup_files(settings, name, tenant_id=tenant, aggregate_id=aggregate)
        tenant_files, _ = lookup_files(settings, name, tenant_id=tenant)
        assert total >= 8, name
        # Its own file, and at most the two files that straddle its tenant's boundaries.
        assert point <= 3, f"{name}: a point lookup opens {point} of {total} files"
        # One of three tenants: about a third of the files, plus the two boundary files.
        assert tenant_files <= total // 3 + 2, f"{name}: a tenant's read opens {tenant_files} of {total} files"
    # raw_events is laid out by business time (a partition per month) and Z-ordered within each
    # month; in a lake this small a month is one file after compaction, so there is nothing to skip
    # within it, and an aggregate's events span months. Point lookups read the history tables.
    files_before = measured_before[RAW_EVENTS][1][1]
    assert results[RAW_EVENTS]["files_after"] <= files_before
    one_month, total = lookup_files(settings, RAW_EVENTS, event_month="2025-03")
    assert 0 < one_month < total


def test_optimize_changes_neither_rows_nor_time_travel(laid_out, spark):
    settings, _, aggregate, before, rows_before, audit_before, _, results = laid_out
    for name, version in before.items():
        assert results[name]["delta_version"] > version
        assert canonical(read_table(settings, name, limit=None).rows.to_pylist()) == rows_before[name], name
        assert canonical(read_table(settings, name, version=version, limit=None).rows.to_pylist()) == rows_before[name]
    after = lookup(settings, "patient", aggregate, as_of="2030-01-01")
    assert (after.state, after.trail) == (audit_before.state, audit_before.trail)
    # A rearrangement is no data change: the next sync finds nothing to build and records the new layout.
    again = run_sync(spark, settings)
    assert all(r.rows_changed == 0 for r in again.silver)
    assert again.snapshot.tables["patient_history"] == results["patient_history"]["delta_version"]
