"""The lakehouse command line as a user runs it, and time-travel edges (FC-01, FC-02)."""

import json
import os
import subprocess
import sys
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from pipelines import lake
from pipelines.errors import BeforeHistoryError, VersionNotFoundError
from pipelines.eventstore.generate import generate_events
from pipelines.read import read_table
from pipelines.sync import run_sync
from pipelines.tables import RAW_EVENTS
from tests.conftest import make_settings

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")


@pytest.fixture(scope="module")
def synced(new_store, spark, tmp_path_factory):
    """A store with two syncs behind it: raw_events versions 0 (create), 1 (800 rows), 2 (+200)."""
    store = new_store()
    warehouse = str(tmp_path_factory.mktemp("cli") / "warehouse")
    settings = make_settings(store, warehouse)
    generate_events(store.admin_dsn, 800, tenants=2, seed=3)
    run_sync(spark, settings)
    generate_events(store.admin_dsn, 200, tenants=2, seed=4, days=10)
    run_sync(spark, settings)
    return store, warehouse, settings


def cli(synced, *args: str, zone: str | None = None, tz: str | None = None) -> subprocess.CompletedProcess:
    store, warehouse, _ = synced
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "LAKEHOUSE_PG_DSN": store.dsn,
        "LAKEHOUSE_PG_ADMIN_DSN": store.admin_dsn,
        "LAKEHOUSE_WAREHOUSE": warehouse,
    }
    if os.environ.get("LAKEHOUSE_CACHE"):
        env["LAKEHOUSE_CACHE"] = os.environ["LAKEHOUSE_CACHE"]
    if zone:
        env["LAKEHOUSE_TIMEZONE"] = zone
    if tz:
        env["TZ"] = tz
    return subprocess.run([LAKEHOUSE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_status_json_counts_store_and_lake(synced):
    done = cli(synced, "status", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["store_events"] == report["lake_events"] == 1000
    assert report["pending_events"] == 0
    assert report["store_reachable"] and report["warehouse_reachable"]
    assert {t["table"] for t in report["tables"]} >= {"raw_events", "patient_current"}


def test_status_masks_the_password(synced):
    store, warehouse, _ = synced
    env = {
        **os.environ,
        "LAKEHOUSE_PG_DSN": store.dsn.replace("lakehouse_pipeline@", "lakehouse_pipeline:hunter2@"),
        "LAKEHOUSE_WAREHOUSE": warehouse,
    }
    done = subprocess.run([LAKEHOUSE, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert "hunter2" not in done.stdout + done.stderr
    assert "lakehouse_pipeline:***@" in done.stdout


def test_history_json_lists_versions_with_rows_added(synced):
    done = cli(synced, "history", "raw_events", "--format", "json")
    assert done.returncode == 0, done.stderr
    versions = json.loads(done.stdout)
    assert [v["version"] for v in versions] == [2, 1, 0]
    assert [v["rows_added"] for v in versions] == [200, 800, 0]
    assert versions[0]["cursor"] > versions[1]["cursor"] > 0


def test_read_version_zero_and_limits(synced):
    done = cli(synced, "read", "raw_events", "--version", "0", "--limit", "5")
    assert done.returncode == 0, done.stderr
    assert "version 0" in done.stdout
    rows = json.loads(cli(synced, "read", "raw_events", "--version", "1", "--limit", "5", "--format", "json").stdout)
    assert len(rows) == 5


def test_read_before_history_is_one_line_without_traceback(synced):
    done = cli(synced, "read", "raw_events", "--as-of", "1970-01-01T00:00:00Z")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "before the history of raw_events" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["read", "no_such_table"], "does not exist"),
        (["read", "raw_events", "--version", "99"], "no version 99"),
        (["read", "raw_events", "--as-of", "last tuesday"], "ISO 8601"),
        (["read", "raw_events", "--where", "nope=1"], "no column 'nope'"),
    ],
)
def test_read_errors_are_clear(synced, args, message):
    done = cli(synced, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_time_travel_edges_fc01(synced):
    _, _, settings = synced
    commits = {c.version: c for c in lake.commits(settings, RAW_EVENTS)}
    v0, v1, v2 = commits[0].timestamp, commits[1].timestamp, commits[2].timestamp
    with pytest.raises(BeforeHistoryError, match="before the history of raw_events"):
        lake.resolve(settings, RAW_EVENTS, as_of=(v0 - timedelta(seconds=1)).isoformat())
    assert lake.resolve(settings, RAW_EVENTS, as_of=v0.isoformat()).version == 0
    assert lake.resolve(settings, RAW_EVENTS, as_of=v1.isoformat()).version == 1
    assert lake.resolve(settings, RAW_EVENTS, as_of=(v2 - timedelta(microseconds=1)).isoformat()).version == 1
    assert lake.resolve(settings, RAW_EVENTS, as_of=v2.isoformat()).version == 2
    now = read_table(settings, RAW_EVENTS, as_of=(v2 + timedelta(days=1)).isoformat(), limit=None)
    plain = read_table(settings, RAW_EVENTS, limit=None)
    assert now.point.version == plain.point.version == 2
    assert now.total_rows == plain.total_rows == 1000
    with pytest.raises(VersionNotFoundError):
        lake.resolve(settings, RAW_EVENTS, version=3)


@pytest.mark.parametrize("process_tz", ["America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("configured_zone", ["America/New_York", "Asia/Kolkata", "Asia/Tokyo"])
def test_time_zones_fc02(synced, spark, process_tz, configured_zone):
    _, _, settings = synced
    commits = {c.version: c for c in lake.commits(settings, RAW_EVENTS)}
    midpoint = commits[1].timestamp + (commits[2].timestamp - commits[1].timestamp) / 2
    # Spark's session zone must not matter to the reader either.
    spark.conf.set("spark.sql.session.timeZone", process_tz)
    try:
        explicit = midpoint.astimezone(timezone(timedelta(hours=-3, minutes=-30))).isoformat()
        done = cli(
            synced, "read", "raw_events", "--as-of", explicit, "--limit", "0", zone=configured_zone, tz=process_tz
        )
        assert done.returncode == 0, done.stderr
        assert "at version 1 " in done.stdout
        assert "offset given" in done.stdout

        from zoneinfo import ZoneInfo

        naive = midpoint.astimezone(ZoneInfo(configured_zone)).replace(tzinfo=None).isoformat()
        done = cli(synced, "read", "raw_events", "--as-of", naive, "--limit", "0", zone=configured_zone, tz=process_tz)
        assert done.returncode == 0, done.stderr
        assert "at version 1 " in done.stdout
        assert f"naive time read in {configured_zone}" in done.stdout
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


@pytest.mark.parametrize(
    ("where", "code", "reachable"),
    [("not-yet-created/warehouse", 0, True), ("/etc/hostname/warehouse", 1, False)],
    ids=["before-first-sync", "parent-is-a-file"],
)
def test_status_before_the_first_sync_and_for_an_impossible_warehouse(synced, tmp_path, where, code, reachable):
    store, _, _ = synced
    warehouse = str(tmp_path / where) if not where.startswith("/") else where
    env = {**os.environ, "LAKEHOUSE_PG_DSN": store.dsn, "LAKEHOUSE_WAREHOUSE": warehouse}
    done = subprocess.run(
        [LAKEHOUSE, "status", "--format", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == code, done.stderr
    report = json.loads(done.stdout)
    assert report["warehouse_reachable"] is reachable
    assert report["store_events"] == 1000 and report["lake_events"] is None
    assert not os.path.exists(warehouse), "status must not create the warehouse"
