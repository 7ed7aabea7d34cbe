"""Consistent snapshots across tables and SQL over pinned views (real PostgreSQL, Spark, Delta)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pipelines import lake, silver
from pipelines.errors import LakehouseError
from pipelines.read import read_table
from pipelines.snapshots import NoSnapshotError, list_snapshots, read_snapshot, record_snapshot
from pipelines.sync import run_sync
from pipelines.tables import RAW_EVENTS, SNAPSHOTS, current_table_name, history_table_name
from pipelines.views import check_query, register_views, run_sql
from tests.conftest import make_settings
from tests.integration.faults import LAKEHOUSE, TENANT_A, TENANT_B, cli_env, put


def new_patients(store, count: int, day: str, tenant: str = TENANT_A) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(store.admin_dsn) as conn:
        for hour, aggregate in enumerate(ids):
            at = f"{day}T{9 + hour % 10:02d}:00:00+09:00"
            put(
                conn,
                "Patient",
                aggregate,
                "PatientRegistered",
                at,
                {"name": f"患者 {hour}", "version": 1},
                tenant=tenant,
            )
            put(
                conn,
                "Prescription",
                str(uuid.uuid4()),
                "PrescriptionReceived",
                at,
                {"patient": aggregate},
                tenant=tenant,
            )
    return ids


def consistent(settings, tables: dict[str, int]) -> bool:
    """Do the tables at these versions describe the same events? Counted from the data itself."""
    raw = read_table(settings, RAW_EVENTS, version=tables[RAW_EVENTS], limit=None).rows.to_pylist()
    events = Counter(r["aggregate_kind"] for r in raw)
    aggregates = Counter(k for k, _, _ in {(r["aggregate_kind"], r["tenant_id"], r["aggregate_id"]) for r in raw})
    for kind, count in events.items():
        history = read_table(settings, history_table_name(kind), version=tables[history_table_name(kind)], limit=0)
        current = read_table(settings, current_table_name(kind), version=tables[current_table_name(kind)], limit=0)
        if history.total_rows != count or current.total_rows != aggregates[kind]:
            return False
    return True


@dataclass
class TwoRuns:
    store: object
    settings: object
    warehouse: str
    first: object
    second: object


@pytest.fixture(scope="module")
def two_runs(new_store, spark, tmp_path_factory) -> TwoRuns:
    store = new_store()
    warehouse = str(tmp_path_factory.mktemp("snapshots") / "warehouse")
    settings = make_settings(store, warehouse)
    new_patients(store, 6, "2025-11-01")
    new_patients(store, 4, "2025-11-01", tenant=TENANT_B)
    first = run_sync(spark, settings)
    new_patients(store, 3, "2025-11-02")
    second = run_sync(spark, settings)
    return TwoRuns(store, settings, warehouse, first, second)


def test_every_run_records_the_versions_of_every_served_table(two_runs):
    first, second = two_runs.first.snapshot, two_runs.second.snapshot
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.run_id == two_runs.first.raw.run_id and first.run_kind == "sync"
    served = {RAW_EVENTS, "patient_history", "patient_current", "prescription_history", "prescription_current"}
    assert set(first.tables) == set(second.tables) == served
    assert first.tables[RAW_EVENTS] == two_runs.first.raw.delta_version
    assert second.tables[RAW_EVENTS] == two_runs.second.raw.delta_version
    for name in served:
        assert second.tables[name] > first.tables[name], name
        assert second.tables[name] == lake.delta_version(two_runs.settings, name)
    assert consistent(two_runs.settings, first.tables) and consistent(two_runs.settings, second.tables)
    assert [s.sequence for s in list_snapshots(two_runs.settings)] == [2, 1]
    # The second run added three patients: `lakehouse history` counts a MERGE's inserts, not its output.
    for name in ("patient_history", "patient_current"):
        assert lake.commits(two_runs.settings, name)[0].rows_added == 3, name


def test_read_snapshot_by_lake_time(two_runs):
    settings = two_runs.settings
    first, second = two_runs.first.snapshot, two_runs.second.snapshot
    assert read_snapshot(settings).sequence == 2
    assert read_snapshot(settings, at=first.completed_at).sequence == 1
    assert read_snapshot(settings, at=second.completed_at - timedelta(milliseconds=1)).sequence == 1
    assert read_snapshot(settings, at=second.completed_at).sequence == 2
    # A naive time is read in the configured zone (Asia/Tokyo) and the snapshot says so.
    naive = first.completed_at.astimezone(settings.zone).replace(tzinfo=None).isoformat()
    named = read_snapshot(settings, at=naive)
    assert (named.sequence, named.zone_used) == (1, "Asia/Tokyo")
    with pytest.raises(NoSnapshotError, match="no run had completed by then"):
        read_snapshot(settings, at=first.completed_at - timedelta(days=1))
    # read_table can take its version from a snapshot.
    pinned = read_table(settings, "patient_current", snapshot_at=first.completed_at, limit=None)
    assert pinned.point.version == first.tables["patient_current"] and pinned.total_rows == 10
    with pytest.raises(LakehouseError, match="not in snapshot"):
        read_table(settings, SNAPSHOTS, snapshot_at=first.completed_at)


def test_no_snapshot_before_the_first_run(new_store, tmp_path):
    settings = make_settings(new_store(), str(tmp_path / "warehouse"))
    with pytest.raises(NoSnapshotError, match="no run has completed yet"):
        read_snapshot(settings)


def test_a_run_failing_between_two_table_writes_is_never_visible(new_store, spark, tmp_path, monkeypatch):
    store = new_store()
    settings = make_settings(store, str(tmp_path / "warehouse"))
    new_patients(store, 5, "2025-11-01")
    old = run_sync(spark, settings).snapshot

    # The fault: the run dies after patient_history's commit, before patient_current's.
    real_merge = silver._merge_current

    def failing_merge(spark, settings, name, *args, **kwargs):
        if name == "patient_current":
            raise RuntimeError("injected fault between patient_history and patient_current")
        return real_merge(spark, settings, name, *args, **kwargs)

    monkeypatch.setattr(silver, "_merge_current", failing_merge)
    new_patients(store, 4, "2025-11-02")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_sync(spark, settings)
    monkeypatch.setattr(silver, "_merge_current", real_merge)

    half = {name: lake.delta_version(settings, name) for name in old.tables}
    assert half[RAW_EVENTS] > old.tables[RAW_EVENTS] and half["patient_history"] > old.tables["patient_history"]
    assert half["patient_current"] == old.tables["patient_current"], "the fault must land between the two writes"
    assert not consistent(settings, half), "per-table latest versions show the half run"
    assert [s.sequence for s in list_snapshots(settings)] == [1]

    new = run_sync(spark, settings).snapshot
    assert new.sequence == 2 and consistent(settings, new.tables)
    # Every lake time from before the failed run to after the next one: all old or all new.
    moments = [old.completed_at, new.completed_at, datetime.now(UTC)]
    for name in old.tables:
        moments += [c.timestamp for c in lake.commits(settings, name) if c.timestamp > old.completed_at]
    for moment in sorted(set(moments)):
        for at in (moment - timedelta(milliseconds=1), moment, moment + timedelta(milliseconds=1)):
            if at < old.completed_at:
                with pytest.raises(NoSnapshotError):
                    read_snapshot(settings, at=at)
                continue
            seen = read_snapshot(settings, at=at)
            expected = old if at < new.completed_at else new
            assert seen.tables == expected.tables, at
    # Per-table time travel at the moment patient_history took the half run's rows shows the mix.
    partial = min(c.timestamp for c in lake.commits(settings, "patient_history") if c.timestamp > old.completed_at)
    mixed = {name: lake.resolve(settings, name, as_of=partial).version for name in old.tables}
    assert not consistent(settings, mixed)


def test_sql_views_pinned_to_a_snapshot_or_a_lake_time(two_runs, spark):
    settings = two_runs.settings
    first = two_runs.first.snapshot
    query = "SELECT count(*) AS events, count(DISTINCT aggregate_id) AS aggregates FROM raw_events"
    frame, pinned = run_sql(spark, settings, query, snapshot_at=first.completed_at)
    assert (pinned.snapshot.sequence, frame.first().asDict()) == (1, {"events": 20, "aggregates": 20})
    frame, pinned = run_sql(spark, settings, query)
    assert (pinned.snapshot.sequence, frame.first()["events"]) == (2, 26)
    frame, pinned = run_sql(spark, settings, "SELECT count(*) AS n FROM patient_current", as_of=first.completed_at)
    assert pinned.snapshot is None and pinned.tables["patient_current"] == first.tables["patient_current"]
    assert frame.first()["n"] == 10
    # Joins across tables see one snapshot.
    joined, _ = run_sql(
        spark,
        settings,
        "SELECT count(*) AS n FROM patient_current c JOIN patient_history h USING (tenant_id, aggregate_id)",
        snapshot_at=first.completed_at,
    )
    assert joined.first()["n"] == 10
    with pytest.raises(LakehouseError, match="only queries are run"):
        run_sql(spark, settings, "DROP VIEW raw_events")
    with pytest.raises(LakehouseError, match="not one query"):
        run_sql(spark, settings, "SELECT 1; DROP VIEW raw_events")
    with pytest.raises(LakehouseError, match="does not resolve"):
        run_sql(spark, settings, "SELECT * FROM no_such_table")
    # run_sql works in a session of its own: the caller's catalog is untouched.
    assert not [t for t in spark.catalog.listTables() if t.name == RAW_EVENTS]


def test_register_views_in_a_pyspark_session(two_runs, spark):
    session = spark.newSession()
    pinned = register_views(session, two_runs.settings, snapshot_at=two_runs.first.snapshot.completed_at)
    assert pinned.tables == two_runs.first.snapshot.tables
    assert session.sql("SELECT count(*) AS n FROM patient_current").first()["n"] == 10
    tenant = register_views(session, two_runs.settings, tenant=TENANT_B)
    assert tenant.tables == two_runs.second.snapshot.tables
    rows = session.sql("SELECT DISTINCT tenant_id FROM raw_events").collect()
    assert [r["tenant_id"] for r in rows] == [TENANT_B]


def test_cli_snapshot_and_sql(two_runs):
    env = cli_env(two_runs.store, two_runs.warehouse)
    first = two_runs.first.snapshot
    shown = subprocess.run(
        [LAKEHOUSE, "snapshot", "--format", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert (document["sequence"], document["tables"]) == (2, two_runs.second.snapshot.tables)
    listed = subprocess.run([LAKEHOUSE, "snapshot", "--all"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and first.completed_at.isoformat() in listed.stdout
    counted = subprocess.run(
        [
            LAKEHOUSE,
            "sql",
            "SELECT count(*) AS events FROM raw_events",
            "--snapshot-at",
            first.completed_at.isoformat(),
            "--format",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == [{"events": 20}]
    assert "snapshot 1 of run" in counted.stderr
    refused = subprocess.run(
        [LAKEHOUSE, "sql", "SELECT * FROM raw_events", "--tenant", TENANT_A, "--snapshot-at", "2000-01-01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "no run had completed by then" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_a_run_overtaken_by_a_later_one_records_no_mixed_snapshot(two_runs, spark):
    # Two runs at once: the first finishes last, after the second built every table from a newer
    # raw_events version. Its row would pair the old raw_events with the new tables; it is skipped.
    settings = two_runs.settings
    before = [s.sequence for s in list_snapshots(settings)]
    stale = two_runs.first.snapshot.tables[RAW_EVENTS]
    assert record_snapshot(spark, settings, "overtaken-run", "sync", stale) is None
    assert [s.sequence for s in list_snapshots(settings)] == before
    assert read_snapshot(settings).run_id == two_runs.second.snapshot.run_id


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty query"),
        ("  ;  ", "empty query"),
        ("-- just a comment", "empty query"),
        ("DROP TABLE raw_events", "only queries are run .* not DROP"),
        ("set spark.sql.ansi.enabled=false", "only queries are run .* not SET"),
        ("INSERT INTO raw_events SELECT * FROM raw_events", "only queries are run .* not INSERT"),
        ("/* note */ DELETE FROM raw_events", "only queries are run .* not DELETE"),
    ],
)
def test_only_queries_are_accepted_before_spark_starts(query, message):
    with pytest.raises(LakehouseError, match=message):
        check_query(query)


def test_queries_pass_the_check_as_written():
    assert check_query("  -- count\nSELECT 1;") == "-- count\nSELECT 1"
    assert check_query("with x AS (SELECT 1) SELECT * FROM x") == "with x AS (SELECT 1) SELECT * FROM x"
