"""Event store -> Dagster -> Delta, on a local warehouse and on S3 (moto over s3a).

The lake must equal the store exactly: the same event_id set in raw_events, and for every
aggregate the current table holds the latest snapshot (computed independently, in PostgreSQL).
Every asset and every check of the project's definitions runs in each of three runs, made with
Dagster's materialize one after the other in this process (FC-09: one live SparkSession serves
them all).
"""

import json
from datetime import UTC, datetime

import psycopg
import pytest

from pipelines import lake
from pipelines.audit import access_log, audit
from pipelines.eventstore.generate import generate_events
from pipelines.read import read_table
from pipelines.tables import RAW_EVENTS, current_table_name, history_table_name
from tests.conftest import make_settings
from tests.integration import runs

VALID_TO = """
    SELECT event_id::text, aggregate_kind, aggregate_snapshot,
           lead(event_at) OVER (PARTITION BY tenant_id, aggregate_id ORDER BY event_at, tx_id, event_id)
    FROM eventstore.events
"""
LATEST_SNAPSHOTS = """
    SELECT DISTINCT ON (tenant_id, aggregate_id)
           aggregate_kind, tenant_id::text, aggregate_id::text, event_id::text, event_name,
           aggregate_snapshot
    FROM eventstore.events
    ORDER BY tenant_id, aggregate_id, event_at DESC, tx_id DESC, event_id DESC
"""


def store_event_ids(store) -> list[str]:
    with psycopg.connect(store.admin_dsn) as conn:
        return [r[0] for r in conn.execute("SELECT event_id::text FROM eventstore.events")]


ASSETS = {
    "raw_events",
    "patient_history",
    "patient_current",
    "prescription_history",
    "prescription_current",
    "dispensing_history",
    "dispensing_current",
    "medication_guidance_history",
    "medication_guidance_current",
    "_snapshots",
}
CHECKS = (
    {("raw_events", name) for name in ("matches_event_store", "unique_event_ids", "freshness")}
    | {("raw_events", "default_partition_empty")}
    | {(name, "retention_policy") for name in ASSETS}
    | {(f"{kind}_history", "schema_drift") for kind in ("patient", "prescription", "dispensing", "medication_guidance")}
)


def run_dagster(settings, store, warehouse: str, profile: str):
    """One run of every asset and check; all materialized, all checks passed, one SparkSession."""
    result = runs.run(runs.definitions(settings, store, warehouse, profile))
    assert result.success
    materialized = result.get_asset_materialization_events()
    assert {e.asset_key.path[-1] for e in materialized} == ASSETS
    evaluations = runs.checks(result)
    assert set(evaluations) == CHECKS
    failed = {key: e.description for key, e in evaluations.items() if not e.passed}
    assert not failed, failed
    apps = {
        e.step_materialization_data.materialization.metadata["spark_application"].value
        for e in materialized
        if "spark_application" in e.step_materialization_data.materialization.metadata
    }
    assert len(apps) == 1, f"every asset of a run shares one SparkSession, not {apps}"
    return result, apps.pop()


def assert_history_equals_store(settings, store) -> None:
    """Every event is one history row with its snapshot, and valid_to is the next event's event_at."""
    with psycopg.connect(store.admin_dsn) as conn:
        expected = {r[0]: r[1:] for r in conn.execute(VALID_TO)}
    for kind in ("Patient", "Prescription", "Dispensing", "MedicationGuidance"):
        rows = read_table(settings, history_table_name(kind), limit=None).rows.to_pylist()
        assert len(rows) == sum(1 for v in expected.values() if v[0] == kind), f"{kind}: one history row per event"
        for row in rows:
            store_kind, snapshot, valid_to = expected[row["event_id"]]
            assert store_kind == kind
            assert row["valid_to"] == valid_to
            assert row["valid_from"] == row["event_at"]
            assert json.loads(row["aggregate_snapshot"]) == snapshot
            assert row["actor_id"] is not None


def assert_lake_equals_store(settings, store) -> None:
    expected_ids = store_event_ids(store)
    raw = read_table(settings, RAW_EVENTS, limit=None).rows
    lake_ids = raw.column("event_id").to_pylist()
    assert len(lake_ids) == len(expected_ids), "raw_events holds a different number of events"
    assert sorted(lake_ids) == sorted(expected_ids)

    with psycopg.connect(store.admin_dsn) as conn:
        latest = conn.execute(LATEST_SNAPSHOTS).fetchall()
    by_kind: dict[str, dict] = {}
    for kind, tenant, aggregate, event_id, event_name, snapshot in latest:
        by_kind.setdefault(kind, {})[(tenant, aggregate)] = (event_id, event_name, snapshot)
    assert set(by_kind) == {"Patient", "Prescription", "Dispensing", "MedicationGuidance"}
    assert_history_equals_store(settings, store)
    for kind, expected in by_kind.items():
        current = read_table(settings, current_table_name(kind), limit=None).rows.to_pylist()
        assert len(current) == len(expected), f"{kind}: one row per aggregate"
        for row in current:
            event_id, event_name, snapshot = expected[(row["tenant_id"], row["aggregate_id"])]
            assert row["event_id"] == event_id
            assert row["event_name"] == event_name
            assert json.loads(row["aggregate_snapshot"]) == snapshot
            assert row["version"] == snapshot["version"]
            assert row["status"] == snapshot["status"]
            assert row["is_deleted"] == event_name.endswith("Deleted")
            if kind == "Patient":
                assert row["name_family"] == snapshot["name"]["family"]
                assert row["address_prefecture"] == snapshot["address"]["prefecture"]
                assert row["address_line1"] == snapshot["address"]["line1"]


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_generate_materialize_and_time_travel(kind, new_store, spark, request):
    warehouse = request.getfixturevalue(f"{kind}_warehouse")
    profile = "s3" if kind == "s3" else "local"
    store = new_store()
    settings = make_settings(store, warehouse, profile=profile)
    generate_events(store.admin_dsn, 1500, tenants=3, seed=21)

    first, spark_app = run_dagster(settings, store, warehouse, profile)
    raw_meta = runs.raw_metadata(first)
    assert raw_meta["rows_added"] == 1500
    assert raw_meta["cursor_after"] > raw_meta["cursor_before"] == 0
    assert (raw_meta["run_kind"], raw_meta["lag_seconds"], raw_meta["pending_events"]) == ("incremental", 0.0, 0)
    # The days the run added events to show as materialized partitions.
    with psycopg.connect(store.admin_dsn) as conn:
        store_days = {
            str(r[0])
            for r in conn.execute("SELECT DISTINCT (event_at AT TIME ZONE 'Asia/Tokyo')::date FROM eventstore.events")
        }
    assert {e.partition for e in first.get_asset_materialization_events() if e.partition} == store_days
    assert_lake_equals_store(settings, store)
    after_first = datetime.now(UTC)
    first_version = lake.delta_version(settings, RAW_EVENTS)

    generate_events(store.admin_dsn, 400, tenants=3, seed=22, days=20)
    second, second_app = run_dagster(settings, store, warehouse, profile)
    assert runs.raw_metadata(second)["rows_added"] == 400
    assert second_app == spark_app, "the second materialize reuses the live session"
    assert_lake_equals_store(settings, store)

    # A run with nothing new adds nothing and writes no version.
    version_before = lake.delta_version(settings, RAW_EVENTS)
    third, _ = run_dagster(settings, store, warehouse, profile)
    assert runs.raw_metadata(third)["rows_added"] == 0
    assert lake.delta_version(settings, RAW_EVENTS) == version_before
    assert_lake_equals_store(settings, store)

    # Time travel: as of the end of the first run the lake held the first 1500 events.
    then = read_table(settings, RAW_EVENTS, as_of=after_first.isoformat(), limit=None)
    assert then.point.version == first_version
    assert then.total_rows == 1500
    assert read_table(settings, RAW_EVENTS, version=first_version, limit=None).total_rows == 1500
    assert read_table(settings, RAW_EVENTS, limit=None).total_rows == 1900

    # Tables carry the retention policy and in-commit timestamps.
    properties = lake.open_table(settings, RAW_EVENTS).metadata().configuration
    assert properties["delta.enableInCommitTimestamps"] == "true"
    assert properties["delta.logRetentionDuration"] == "interval 1827 days"
    assert properties["delta.deletedFileRetentionDuration"] == "interval 1827 days"
    assert properties["delta.appendOnly"] == "true"
    current_properties = lake.open_table(settings, "patient_current").metadata().configuration
    assert current_properties["delta.logRetentionDuration"] == "interval 1827 days"

    # An audit lookup answers from the history table and is logged (on S3 too, without a JVM).
    patient = read_table(settings, "patient_current", limit=1).rows.to_pylist()[0]
    answer = audit(settings, "Patient", patient["aggregate_id"], asked_by="e2e")
    assert answer.event["event_id"] == patient["event_id"]
    assert answer.tenant_id == patient["tenant_id"]
    assert [(r["asked_by"], r["outcome"]) for r in access_log(settings)] == [("e2e", "found")]
