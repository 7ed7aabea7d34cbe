"""The Dagster definitions in process: partitions in the configured zone, backfills through the repair
path, the checks, and one-line run failures. Real PostgreSQL and Spark; expected values come from
PostgreSQL or are written out here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DefaultScheduleStatus,
    PartitionKeyRange,
)

from dagster_project.definitions import build_definitions
from pipelines.errors import ConfigError
from pipelines.eventstore.generate import generate_events
from pipelines.tables import RAW_EVENTS
from tests.conftest import make_settings
from tests.integration import runs
from tests.integration.faults import assert_exactly_once, lake_ids, write_event


def store_ids_of_days(store, first: str, last: str, zone: str = "Asia/Tokyo") -> set[str]:
    """The events PostgreSQL holds for [first, last] in the zone (its own time zone arithmetic)."""
    with psycopg.connect(store.admin_dsn) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT event_id::text FROM eventstore.events WHERE (event_at AT TIME ZONE %s)::date BETWEEN %s AND %s",
                (zone, first, last),
            )
        }


def test_definitions_partitions_schedules_pools_and_checks(tmp_path):
    settings = make_settings(None, str(tmp_path / "warehouse"))
    defs = build_definitions(settings)
    raw = defs.resolve_assets_def(RAW_EVENTS)
    partitions = raw.partitions_def
    assert (partitions.timezone, partitions.start.date().isoformat(), partitions.end_offset) == (
        "Asia/Tokyo",
        "2024-01-01",
        1,
    )
    window = partitions.time_window_for_partition_key("2025-03-09")
    assert (window.start.isoformat(), window.end.isoformat()) == (
        "2025-03-09T00:00:00+09:00",
        "2025-03-10T00:00:00+09:00",
    )
    assert raw.backfill_policy.max_partitions_per_run is None, "a day range is one run"
    graph = defs.resolve_asset_graph()
    pools = {name: graph.get(AssetKey(name)).pools for name in (RAW_EVENTS, "patient_current", "_snapshots")}
    assert pools == {
        RAW_EVENTS: {"lakehouse_raw_events"},
        "patient_current": {"lakehouse_silver"},
        "_snapshots": {"lakehouse_silver"},
    }
    assert defs.resolve_assets_def("patient_current").partitions_def is None

    incremental = defs.resolve_schedule_def("incremental_sync")
    daily = defs.resolve_schedule_def("daily_reconciliation")
    assert (incremental.cron_schedule, incremental.execution_timezone, incremental.job_name) == (
        "*/15 * * * *",
        "Asia/Tokyo",
        "sync_job",
    )
    assert (daily.cron_schedule, daily.job_name) == ("30 3 * * *", "reconciliation_job")
    assert incremental.default_status == daily.default_status == DefaultScheduleStatus.RUNNING
    reconciliation = defs.resolve_job_def("reconciliation_job")
    assert {(key.asset_key.path[-1], key.name) for key in reconciliation.asset_layer.asset_graph.asset_check_keys} >= {
        ("raw_events", "matches_event_store"),
        ("raw_events", "unique_event_ids"),
        ("raw_events", "freshness"),
    }
    assert not reconciliation.asset_layer.executable_asset_keys, "the daily reconciliation writes no table"

    with pytest.raises(ConfigError, match=r"\[dagster\] sync_cron \(LAKEHOUSE_SYNC_CRON\) must be a cron"):
        build_definitions(settings.with_overrides(sync_cron="every quarter hour"))


def test_daily_partitions_follow_daylight_saving(tmp_path):
    settings = make_settings(None, str(tmp_path / "warehouse"), timezone="America/New_York")
    partitions = build_definitions(settings).resolve_assets_def(RAW_EVENTS).partitions_def
    keys = partitions.get_partition_keys_in_range(PartitionKeyRange("2025-03-08", "2025-03-10"))
    assert keys == ["2025-03-08", "2025-03-09", "2025-03-10"]
    hours, bounds = {}, {}
    for key in ("2025-03-09", "2025-11-02", "2025-11-03"):
        window = partitions.time_window_for_partition_key(key)
        hours[key] = (window.end.astimezone(UTC) - window.start.astimezone(UTC)).total_seconds() / 3600
        bounds[key] = (window.start.isoformat(), window.end.isoformat())
    assert hours == {"2025-03-09": 23.0, "2025-11-02": 25.0, "2025-11-03": 24.0}
    assert bounds["2025-03-09"] == ("2025-03-09T00:00:00-05:00", "2025-03-10T00:00:00-04:00")
    assert bounds["2025-11-02"] == ("2025-11-02T00:00:00-04:00", "2025-11-03T00:00:00-05:00")


def test_backfill_on_an_empty_lake_then_incremental_runs_never_duplicate(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 300, tenants=2, seed=61, days=10)
    defs = runs.definitions(settings, store, local_warehouse)
    instance = DagsterInstance.ephemeral()

    backfill = runs.run(defs, days=("2025-01-03", "2025-01-04"), raw_only=True, instance=instance)
    expected = store_ids_of_days(store, "2025-01-03", "2025-01-04")
    assert expected and set(lake_ids(settings)) == expected, "the lake holds exactly those days' events"
    meta = runs.raw_metadata(backfill)
    assert (meta["run_kind"], meta["rows_added"], meta["cursor_before"], meta["cursor_after"]) == (
        "backfill",
        len(expected),
        0,
        0,
    )
    assert sum(meta["events_per_day"].values()) == len(expected)
    assert instance.get_materialized_partitions(AssetKey(RAW_EVENTS)) == {"2025-01-03", "2025-01-04"}
    checks = runs.checks(backfill)
    reconciled = checks[("raw_events", "matches_event_store")]
    assert reconciled.passed and reconciled.metadata["lake_events"].value == len(expected)
    assert reconciled.metadata["days"].value == "2025-01-03..2025-01-04"
    freshness = checks[("raw_events", "freshness")]
    assert (freshness.passed, freshness.severity) == (False, AssetCheckSeverity.WARN), "eight days are missing"
    with psycopg.connect(store.admin_dsn) as conn:
        newest_store = conn.execute("SELECT max(event_at) FROM eventstore.events").fetchone()[0]
        newest_backfilled = conn.execute(
            "SELECT max(event_at) FROM eventstore.events WHERE event_id = ANY(%s::uuid[])", (sorted(expected),)
        ).fetchone()[0]
    assert freshness.metadata["lag_seconds"].value == pytest.approx(
        (newest_store - newest_backfilled).total_seconds(), abs=0.1
    )

    incremental = runs.run(defs, raw_only=True, instance=instance)
    assert runs.raw_metadata(incremental)["rows_added"] == 300 - len(expected)
    assert_exactly_once(settings, store)
    assert runs.checks(incremental)[("raw_events", "freshness")].passed

    again = runs.run(defs, days=("2025-01-03", "2025-01-04"), raw_only=True, instance=instance)
    assert runs.raw_metadata(again)["rows_added"] == 0
    with psycopg.connect(store.admin_dsn) as conn:
        later = write_event(conn, datetime(2025, 1, 4, 3, 0, tzinfo=UTC))  # a late event for a backfilled day
        conn.commit()
    healed = runs.run(defs, days=("2025-01-04", "2025-01-04"), raw_only=True, instance=instance)
    assert runs.raw_metadata(healed)["rows_added"] == 1
    assert runs.run(defs, raw_only=True, instance=instance).success
    assert_exactly_once(settings, store)
    assert lake_ids(settings)[later] == 1


def test_backfill_in_a_daylight_saving_zone(new_store, spark, local_warehouse):
    """New York: 2025-03-09 has 23 hours, 2025-11-02 has 25; each day's backfill takes exactly its events."""
    store = new_store()
    settings = make_settings(store, local_warehouse, timezone="America/New_York")
    instants = [
        "2025-03-09T04:59:59Z",  # 23:59:59 EST on March 8
        "2025-03-09T05:00:00Z",  # midnight EST: March 9 begins
        "2025-03-10T03:59:59Z",  # 23:59:59 EDT on March 9
        "2025-03-10T04:00:00Z",  # midnight EDT: March 10
        "2025-11-02T03:59:59Z",  # 23:59:59 EDT on November 1
        "2025-11-02T04:00:00Z",  # midnight EDT: November 2 begins
        "2025-11-03T04:59:59Z",  # 23:59:59 EST on November 2 (the day had 25 hours)
        "2025-11-03T05:00:00Z",  # midnight EST: November 3
    ]
    ids = {}
    with psycopg.connect(store.admin_dsn) as conn:
        for moment in instants:
            ids[moment] = write_event(conn, datetime.fromisoformat(moment))
        conn.commit()
    defs = runs.definitions(settings, store, local_warehouse)
    runs.run(defs, days=("2025-03-09", "2025-03-09"), raw_only=True)
    assert set(lake_ids(settings)) == {ids["2025-03-09T05:00:00Z"], ids["2025-03-10T03:59:59Z"]}
    assert set(lake_ids(settings)) == store_ids_of_days(store, "2025-03-09", "2025-03-09", "America/New_York")
    result = runs.run(defs, days=("2025-11-02", "2025-11-02"), raw_only=True)
    assert runs.checks(result)[("raw_events", "matches_event_store")].passed
    assert set(lake_ids(settings)) == {
        ids["2025-03-09T05:00:00Z"],
        ids["2025-03-10T03:59:59Z"],
        ids["2025-11-02T04:00:00Z"],
        ids["2025-11-03T04:59:59Z"],
    }


def test_checks_default_partition_retention_and_an_empty_day_fc05(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    with psycopg.connect(store.admin_dsn) as conn:
        write_event(conn, datetime.now(UTC) - timedelta(days=1))
        write_event(conn, datetime(2031, 4, 15, 3, 0, tzinfo=UTC))  # no partition: the default one
        conn.commit()
    defs = runs.definitions(settings, store, local_warehouse)
    first = runs.run(defs, raw_only=True)
    assert first.success, "events in the default partition are synced all the same"
    default = runs.checks(first)[("raw_events", "default_partition_empty")]
    assert (default.passed, default.severity, default.metadata["default_partition_rows"].value) == (
        False,
        AssetCheckSeverity.WARN,
        1,
    )
    assert "1 events sit in the default partition of eventstore.events" in default.description

    # Someone shortens the log retention of raw_events: the policy check fails and names it.
    spark.sql(
        f"ALTER TABLE delta.`{local_warehouse}/raw_events` SET TBLPROPERTIES ('delta.logRetentionDuration' = 'interval 30 days')"
    )
    # A day for which PostgreSQL has no partition at all: an empty day, not an error.
    empty = runs.run(defs, days=("2024-03-01", "2024-03-01"), raw_only=True)
    assert empty.success
    assert (runs.raw_metadata(empty)["rows_read"], runs.raw_metadata(empty)["rows_added"]) == (0, 0)
    retention = runs.checks(empty)[("raw_events", "retention_policy")]
    assert not retention.passed
    assert retention.metadata["wrong"].value == {
        "delta.logRetentionDuration": {"expected": "interval 1827 days", "found": "interval 30 days"}
    }
    assert "lakehouse vacuum --dry-run --table raw_events" in retention.description


def _failure_lines(result) -> list[str]:
    """The first line of the step failure and of the run failure, as the run's log shows them."""
    [step] = result.get_step_failure_events()
    [run] = [e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE]
    return [
        step.event_specific_data.error.message.splitlines()[0],
        run.event_specific_data.first_step_failure_event.event_specific_data.error.message.splitlines()[0],
    ]


def test_run_failures_say_what_went_wrong_in_one_line(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    with psycopg.connect(store.admin_dsn) as conn:
        write_event(conn, datetime(2025, 5, 1, tzinfo=UTC))
        conn.commit()

    closed = type(store)(store.name, store.admin_dsn, f"postgresql://lakehouse_pipeline@127.0.0.1:1/{store.name}")
    unreachable = runs.run(runs.definitions(settings, closed, local_warehouse), raw_only=True, raise_on_error=False)
    assert not unreachable.success
    for line in _failure_lines(unreachable):
        assert (
            f"raw_events failed: PostgreSQL unreachable at postgresql://lakehouse_pipeline@127.0.0.1:1/{store.name}"
            in line
        )

    with psycopg.connect(store.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP POLICY pipeline_reads_all_tenants ON eventstore.events")
    hidden = runs.run(runs.definitions(settings, store, local_warehouse), raw_only=True, raise_on_error=False)
    for line in _failure_lines(hidden):
        assert "raw_events failed: rows hidden by row-level security on eventstore.events" in line
    assert not lake_ids(settings), "nothing was written"
