"""History, current state and audit lookups on both clocks, against real PostgreSQL, Spark and Delta.

Expected states are written out literally. Times are given with explicit offsets, in UTC and as
naive strings read in the configured zone (Asia/Tokyo).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pipelines import lake
from pipelines.audit import AggregateNotFoundError, access_log, audit, lookup
from pipelines.errors import BeforeHistoryError, LakehouseError
from pipelines.read import read_table
from pipelines.silver import recorded_conflicts
from pipelines.sync import run_sync
from tests.conftest import make_settings
from tests.integration.faults import LAKEHOUSE, TENANT_A, TENANT_B, cli_env, put

JST = "+09:00"


PATIENT = "10000000-0000-4000-8000-000000000001"
STATE_1 = {"city": None, "name": "佐藤 花子", "phone": "090-1111", "status": "active", "version": 1}
STATE_2 = {"city": None, "name": "佐藤 花子", "phone": "090-2222", "status": "active", "version": 2}
STATE_3 = {"city": "札幌市", "name": "佐藤 花子", "phone": "090-2222", "status": "active", "version": 3}
STATE_4 = {"city": "札幌市", "name": "佐藤 花子", "phone": "090-4444", "status": "active", "version": 4}
STATE_5 = {"city": "札幌市", "name": "佐藤 花子", "phone": "090-4444", "status": "deleted", "version": 5}
# A correction that happened between events 3 and 4 but reaches the lake after the first sync.
STATE_LATE = {"city": "札幌市", "name": "佐藤 花子", "phone": "090-3333", "status": "active", "version": 4}
EVENTS = [
    ("PatientRegistered", "2025-10-01T09:00:00", "u-1", STATE_1),
    ("PatientContactChanged", "2025-10-02T10:00:00", "u-2", STATE_2),
    ("PatientAddressChanged", "2025-10-03T11:00:00", "u-1", STATE_3),
    ("PatientContactChanged", "2025-10-04T12:00:00", "u-3", STATE_4),
    ("PatientDeleted", "2025-10-05T13:00:00", "u-2", STATE_5),
]


def _snapshot(state: dict) -> dict:
    return {k: v for k, v in state.items() if v is not None}


@dataclass
class Lake:
    settings: object
    store: object
    warehouse: str
    ids: list[str]
    late_id: str
    first_history_version: int
    first_run_done: datetime  # lake time after the first sync, before the correction
    results: list


@pytest.fixture(scope="module")
def patient_lake(new_store, spark, tmp_path_factory) -> Lake:
    store = new_store()
    warehouse = str(tmp_path_factory.mktemp("audit") / "warehouse")
    settings = make_settings(store, warehouse)
    with psycopg.connect(store.admin_dsn) as conn:
        ids = [put(conn, "Patient", PATIENT, n, at + JST, _snapshot(s), actor=a) for n, at, a, s in EVENTS]
    first = run_sync(spark, settings)
    history_version = lake.delta_version(settings, "patient_history")
    first_done = lake.commits(settings, "patient_history")[0].timestamp + timedelta(milliseconds=1)
    with psycopg.connect(store.admin_dsn) as conn:
        late = put(
            conn, "Patient", PATIENT, "PatientContactCorrected", "2025-10-03T12:00:00" + JST, STATE_LATE, actor="u-9"
        )
    second = run_sync(spark, settings)
    return Lake(settings, store, warehouse, ids, late, history_version, first_done, [first, second])


def state_at(patient_lake: Lake, as_of: str, as_seen_at=None) -> dict:
    return lookup(patient_lake.settings, "patient", PATIENT, as_of=as_of, as_seen_at=as_seen_at).state


# (as_of, the state valid then). Exactly at, just before and just after every event, in three spellings.
GOLDEN = [
    ("2025-10-01T09:00:00+09:00", STATE_1),
    ("2025-10-01T00:00:00Z", STATE_1),
    ("2025-10-01T09:00:00", STATE_1),  # naive: Asia/Tokyo
    ("2025-10-01T09:00:01", STATE_1),
    ("2025-10-02T09:59:59", STATE_1),
    ("2025-10-02T00:59:59.999999Z", STATE_1),
    ("2025-10-02T10:00:00+09:00", STATE_2),
    ("2025-10-02T01:00:00+00:00", STATE_2),
    ("2025-10-02T10:00:00", STATE_2),
    ("2025-10-02T10:00:01+09:00", STATE_2),
    ("2025-10-03T10:59:59", STATE_2),
    ("2025-10-03T11:00:00", STATE_3),
    ("2025-10-03T11:00:01", STATE_3),
    ("2025-10-03T11:59:59", STATE_3),
    ("2025-10-03T12:00:00", STATE_LATE),  # the correction, known to the lake now
    ("2025-10-04T11:59:59", STATE_LATE),
    ("2025-10-04T12:00:00", STATE_4),
    ("2025-10-04T03:00:01Z", STATE_4),
    ("2025-10-05T12:59:59", STATE_4),
    ("2025-10-05T13:00:00", STATE_5),
    ("2025-10-05T04:00:00Z", STATE_5),
    ("2025-10-05T13:00:01-05:00", STATE_5),
    ("2030-01-01T00:00:00", STATE_5),
]


@pytest.mark.parametrize(("as_of", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_states_at_business_times(patient_lake, as_of, expected):
    assert state_at(patient_lake, as_of) == expected


def test_before_the_first_event_is_not_found(patient_lake):
    for as_of in ("2025-10-01T08:59:59", "2025-09-30T23:59:59.999999Z"):
        with pytest.raises(AggregateNotFoundError, match=r"not found at 2025-09-30T23:59:59.*first event is at"):
            state_at(patient_lake, as_of)


def test_producing_event_trail_and_deletion(patient_lake):
    settings = patient_lake.settings
    result = lookup(settings, "Patient", PATIENT, as_of="2025-10-04T12:30:00")
    assert result.event["event_id"] == patient_lake.ids[3]
    assert result.event["event_name"] == "PatientContactChanged"
    assert result.event["event_at"] == datetime(2025, 10, 4, 3, 0, tzinfo=UTC)
    assert (result.event["actor_id"], result.event["actor_name"]) == ("u-3", "薬剤師 u-3")
    assert result.as_of_zone == "Asia/Tokyo"
    assert not result.deleted
    assert [(e["event_name"], e["actor_id"]) for e in result.trail] == [
        ("PatientRegistered", "u-1"),
        ("PatientContactChanged", "u-2"),
        ("PatientAddressChanged", "u-1"),
        ("PatientContactCorrected", "u-9"),
        ("PatientContactChanged", "u-3"),
    ]
    assert [e["valid_to"] for e in result.trail] == [
        datetime(2025, 10, 2, 1, 0, tzinfo=UTC),
        datetime(2025, 10, 3, 2, 0, tzinfo=UTC),
        datetime(2025, 10, 3, 3, 0, tzinfo=UTC),
        datetime(2025, 10, 4, 3, 0, tzinfo=UTC),
        datetime(2025, 10, 5, 4, 0, tzinfo=UTC),
    ]
    deleted = lookup(settings, "patient", PATIENT)
    assert deleted.deleted and deleted.event["event_name"] == "PatientDeleted"
    assert deleted.trail[-1]["valid_to"] is None


def test_current_table_keeps_the_newest_state_against_a_late_event(patient_lake):
    rows = read_table(patient_lake.settings, "patient_current", limit=None).rows.to_pylist()
    assert len(rows) == 1
    row = rows[0]
    # The correction arrived last but happened before the deletion: the deletion stays current.
    assert (row["event_id"], row["event_name"], row["is_deleted"]) == (patient_lake.ids[4], "PatientDeleted", True)
    assert (row["phone"], row["status"], row["version"], row["city"]) == ("090-4444", "deleted", 5, "札幌市")


def test_history_has_one_row_per_event_with_valid_intervals(patient_lake):
    rows = read_table(patient_lake.settings, "patient_history", limit=None).rows.to_pylist()
    got = sorted((r["valid_from"], r["valid_to"], r["event_name"], r["phone"], r["is_deleted"]) for r in rows)
    utc = UTC
    assert got == [
        (datetime(2025, 10, 1, 0, tzinfo=utc), datetime(2025, 10, 2, 1, tzinfo=utc), "PatientRegistered", "090-1111", False),
        (datetime(2025, 10, 2, 1, tzinfo=utc), datetime(2025, 10, 3, 2, tzinfo=utc), "PatientContactChanged", "090-2222", False),
        (datetime(2025, 10, 3, 2, tzinfo=utc), datetime(2025, 10, 3, 3, tzinfo=utc), "PatientAddressChanged", "090-2222", False),
        (datetime(2025, 10, 3, 3, tzinfo=utc), datetime(2025, 10, 4, 3, tzinfo=utc), "PatientContactCorrected", "090-3333", False),
        (datetime(2025, 10, 4, 3, tzinfo=utc), datetime(2025, 10, 5, 4, tzinfo=utc), "PatientContactChanged", "090-4444", False),
        (datetime(2025, 10, 5, 4, tzinfo=utc), None, "PatientDeleted", "090-4444", True),
    ]  # fmt: skip
    # The second run touched only the one aggregate: one insert and one moved valid_to.
    second = {r.table: r for r in patient_lake.results[1].silver}
    assert (second["patient_history"].events_read, second["patient_history"].rows_changed) == (1, 2)


def test_bitemporal_as_seen_at_before_and_after_the_correction(patient_lake):
    as_of = "2025-10-03T12:30:00+09:00"
    before = lookup(patient_lake.settings, "patient", PATIENT, as_of=as_of, as_seen_at=patient_lake.first_run_done)
    assert before.state == STATE_3
    assert before.seen.version == patient_lake.first_history_version
    after = lookup(patient_lake.settings, "patient", PATIENT, as_of=as_of)
    assert after.state == STATE_LATE
    assert after.seen.version > patient_lake.first_history_version


def test_time_travel_edges_of_audit_lookups_fc01(patient_lake):
    settings = patient_lake.settings
    history = sorted(lake.commits(settings, "patient_history"), key=lambda c: c.version)
    first, latest = history[0], history[-1]
    with pytest.raises(BeforeHistoryError, match="before the history of patient_history"):
        lookup(settings, "patient", PATIENT, as_seen_at=first.timestamp - timedelta(seconds=1))
    exactly = lookup(settings, "patient", PATIENT, as_seen_at=latest.timestamp)
    now = lookup(settings, "patient", PATIENT, as_seen_at=datetime.now(UTC))
    plain = lookup(settings, "patient", PATIENT)
    assert exactly.seen.version == now.seen.version == plain.seen.version == latest.version
    assert exactly.state == now.state == plain.state == STATE_5


def test_every_lookup_is_logged_append_only(patient_lake):
    settings = patient_lake.settings
    before = len(access_log(settings))
    audit(settings, "patient", PATIENT, asked_by="auditor-1", as_of="2025-10-02T10:00:00", tenant=TENANT_A)
    with pytest.raises(AggregateNotFoundError):
        audit(settings, "patient", str(uuid.uuid4()), asked_by="auditor-2")
    with pytest.raises(AggregateNotFoundError):
        audit(settings, "patient", PATIENT, asked_by="auditor-3", tenant=TENANT_B)
    with pytest.raises(LakehouseError, match="who asks"):
        audit(settings, "patient", PATIENT, asked_by=" ")
    rows = access_log(settings)[before:]
    assert [(r["asked_by"], r["outcome"], r["tenant_id"], r["found_tenant_id"]) for r in rows] == [
        ("auditor-1", "found", TENANT_A, TENANT_A),
        ("auditor-2", "not_found", None, None),
        ("auditor-3", "not_found", TENANT_B, None),
    ]
    first = rows[0]
    assert first["as_of"] == "2025-10-02T10:00:00"
    assert first["as_of_utc"] == datetime(2025, 10, 2, 1, 0, tzinfo=UTC)
    assert first["state_event_id"] == patient_lake.ids[1]
    assert first["history_version"] == lake.delta_version(settings, "patient_history")
    assert first["kind"] == "patient" and first["aggregate_id"] == PATIENT
    log_table = lake.open_table(settings, "_audit_log")
    assert log_table.metadata().configuration["delta.appendOnly"] == "true"
    with pytest.raises(Exception, match="append-only"):
        log_table.delete("asked_by = 'auditor-1'")


def test_cli_audit_table_json_and_not_found(patient_lake):
    env = cli_env(patient_lake.store, patient_lake.warehouse, LAKEHOUSE_AUDITOR="cli-auditor")
    shown = subprocess.run(
        [LAKEHOUSE, "audit", "patient", PATIENT, "--as-of", "2025-10-03T11:30:00"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "naive time read in Asia/Tokyo" in shown.stdout
    assert "PatientAddressChanged" in shown.stdout and "札幌市" in shown.stdout and "u-1" in shown.stdout
    assert "trail: 3 events" in shown.stdout
    as_json = subprocess.run(
        [LAKEHOUSE, "audit", "patient", PATIENT, "--as-of", "2025-10-03T11:30:00", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["state"] == STATE_3
    assert document["produced_by"]["event_id"] == patient_lake.ids[2]
    assert len(document["trail"]) == 3
    missing = subprocess.run(
        [LAKEHOUSE, "audit", "patient", str(uuid.uuid4())], env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 3
    assert "not found" in missing.stderr and "Traceback" not in missing.stderr
    assert access_log(patient_lake.settings)[-1]["asked_by"] == "cli-auditor"


def test_new_kind_and_schema_drift_never_fail_a_run(new_store, spark, tmp_path):
    store = new_store()
    settings = make_settings(store, str(tmp_path / "warehouse"))
    device = "20000000-0000-4000-8000-000000000001"
    with psycopg.connect(store.admin_dsn) as conn:
        e1 = put(conn, "InfusionPump", device, "PumpRegistered", "2025-11-01T09:00:00+09:00", {"rate": 5})
    run_sync(spark, settings)
    with psycopg.connect(store.admin_dsn) as conn:
        put(conn, "InfusionPump", device, "PumpUnitSet", "2025-11-01T10:00:00+09:00", {"rate": 5, "unit": "ml/h"})
        put(conn, "InfusionPump", device, "PumpRateCleared", "2025-11-01T11:00:00+09:00", {"unit": "ml/h"})
        e4 = put(conn, "InfusionPump", device, "PumpRateTyped", "2025-11-01T12:00:00+09:00", {"rate": "five"})
        e5 = put(
            conn,
            "InfusionPump",
            device,
            "PumpRateDetailed",
            "2025-11-01T13:00:00+09:00",
            {"rate": {"value": 5, "per": "h"}, "unit": "ml"},
        )
    result = run_sync(spark, settings)
    by_table = {r.table: r for r in result.silver}
    history = by_table["infusion_pump_history"]
    assert set(by_table) >= {"infusion_pump_history", "infusion_pump_current"}
    assert history.added_columns == ("unit",)
    conflicts = [(c["path"], c["column_type"], c["rows"]) for c in history.conflicts]
    assert conflicts == [("rate", "bigint", 2)]
    assert history.conflicts[0]["example_event_id"] in {e4, e5}
    assert [(c["path"], c["rows"]) for c in recorded_conflicts(settings, "infusion_pump_history")] == [("rate", 2)]

    rows = read_table(settings, "infusion_pump_history", limit=None).rows.to_pylist()
    got = sorted((r["valid_from"], r["rate"], r["unit"], json.loads(r["aggregate_snapshot"])) for r in rows)
    assert [(g[1], g[2], g[3]) for g in got] == [
        (5, None, {"rate": 5}),
        (5, "ml/h", {"rate": 5, "unit": "ml/h"}),
        (None, "ml/h", {"unit": "ml/h"}),  # removed field: NULL from then on
        (None, None, {"rate": "five"}),  # does not fit bigint: NULL, the raw JSON keeps "five"
        (None, "ml", {"rate": {"value": 5, "per": "h"}, "unit": "ml"}),
    ]
    current = read_table(settings, "infusion_pump_current", limit=None).rows.to_pylist()
    assert [(r["event_id"], r["rate"], r["unit"]) for r in current] == [(e5, None, "ml")]
    assert lookup(settings, "InfusionPump", device, as_of="2025-11-01T09:30:00").state == {"rate": 5, "unit": None}
    assert lookup(settings, "infusion_pump", device, as_of="2025-11-01T09:30:00").event["event_id"] == e1


def test_rls_not_forced_owner_tenant_and_pipeline_fc12(new_store, spark, tmp_path):
    store = new_store()
    settings = make_settings(store, str(tmp_path / "warehouse"))
    aggregates = {TENANT_A: str(uuid.uuid4()), TENANT_B: str(uuid.uuid4())}
    with psycopg.connect(store.admin_dsn) as conn:
        conn.execute("ALTER TABLE eventstore.events NO FORCE ROW LEVEL SECURITY")
        conn.commit()
        for tenant, aggregate in aggregates.items():
            for hour in (9, 10, 11):
                put(
                    conn,
                    "Patient",
                    aggregate,
                    "PatientUpdated",
                    f"2025-10-01T{hour:02d}:00:00+09:00",
                    {"v": hour},
                    tenant=tenant,
                )
        owner = conn.execute("SELECT count(*) FROM eventstore.events").fetchone()[0]
        with conn.transaction():
            conn.execute("SET LOCAL ROLE eventstore_app")
            conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", (TENANT_A,))
            tenant_view = conn.execute("SELECT count(*) FROM eventstore.events").fetchone()[0]
    assert (owner, tenant_view) == (6, 3)
    run_sync(spark, settings)
    raw = read_table(settings, "raw_events", limit=None).rows.to_pylist()
    assert sorted(r["tenant_id"] for r in raw) == [TENANT_A] * 3 + [TENANT_B] * 3
    mine = lookup(settings, "patient", aggregates[TENANT_A], tenant=TENANT_A)
    assert (mine.tenant_id, mine.state, len(mine.trail)) == (TENANT_A, {"v": 11}, 3)
    with pytest.raises(AggregateNotFoundError, match=f"not found for tenant {TENANT_A}"):
        lookup(settings, "patient", aggregates[TENANT_B], tenant=TENANT_A)


def test_dagster_check_reports_snapshot_type_conflicts(new_store, spark, tmp_path):
    from dagster import AssetCheckSeverity

    from tests.integration import runs

    store = new_store()
    warehouse = str(tmp_path / "warehouse")
    settings = make_settings(store, warehouse, kinds=("Patient",))
    defs = runs.definitions(settings, store, warehouse)
    aggregate = str(uuid.uuid4())
    with psycopg.connect(store.admin_dsn) as conn:
        put(conn, "Patient", aggregate, "PatientRegistered", "2025-10-01T09:00:00+09:00", {"weight": 60})
    first = runs.run(defs)
    check = runs.checks(first)[("patient_history", "schema_drift")]
    assert check.passed, "creating the table is no drift"
    with psycopg.connect(store.admin_dsn) as conn:
        bad = put(conn, "Patient", aggregate, "PatientWeighed", "2025-10-02T09:00:00+09:00", {"weight": "60 kg"})
        put(conn, "Patient", aggregate, "PatientMeasured", "2025-10-03T09:00:00+09:00", {"weight": 61, "height": 170})
    second = runs.run(defs)
    assert second.success, "drift never fails the run"
    check = runs.checks(second)[("patient_history", "schema_drift")]
    assert (check.passed, check.severity) == (False, AssetCheckSeverity.WARN)
    assert check.metadata["conflicts"].value == [
        {
            "path": "weight",
            "column": "weight",
            "column_type": "bigint",
            "seen_type": "string",
            "rows": 1,
            "example_event_id": bad,
        }
    ]
    assert check.metadata["added_columns"].value == ["height"]
    assert "raw JSON is kept" in check.description
    assert "new snapshot fields, added as columns: height" in check.description
    history_meta = [
        m.metadata
        for m in second.asset_materializations_for_node("silver_tables")
        if m.asset_key.path[-1] == "patient_history"
    ]
    assert history_meta and history_meta[0]["type_conflicts"].value[0]["rows"] == 1
