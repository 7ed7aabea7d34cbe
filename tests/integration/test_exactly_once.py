"""The correctness contract under attack: late commits, many writers, duplicates, hidden rows,
crashes, overlapping runs, outages. After every scenario raw_events holds each committed event
exactly once (compared with PostgreSQL, not with anything the pipeline computed).
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from pipelines import lake
from pipelines.errors import SourceError
from pipelines.eventstore.generate import generate_events
from pipelines.load import read_cursor, repair_days, sync_raw_events
from pipelines.reconcile import reconcile
from pipelines.tables import RAW_EVENTS
from tests.conftest import make_settings
from tests.integration.faults import (
    PROJECT,
    Process,
    assert_exactly_once,
    cli_env,
    lake_ids,
    store_ids,
    write_event,
)

T0 = datetime(2025, 3, 10, 1, 0, 0, tzinfo=UTC)


def test_late_commit_fc04(new_store, spark, local_warehouse):
    """A transaction that began first and commits last is synced once, never skipped."""
    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 40, tenants=2, seed=1)

    late = psycopg.connect(store.admin_dsn)  # transaction A: stays open
    late_id = write_event(late, T0)
    with psycopg.connect(store.admin_dsn) as conn:  # transaction B: commits at once
        early_id = write_event(conn, T0 + timedelta(seconds=5))

    first = sync_raw_events(spark, settings)
    # A holds the horizon: B waits with it (freshness), nothing is skipped.
    assert first.rows_added == 40
    assert late_id not in lake_ids(settings) and early_id not in lake_ids(settings)
    assert first.pending_events == 1  # B is committed and visible, not yet synced
    assert first.oldest_open_write is not None

    late.commit()
    late.close()
    second = sync_raw_events(spark, settings)
    assert second.rows_added == 2
    assert lake_ids(settings)[late_id] == 1 and lake_ids(settings)[early_id] == 1
    assert second.pending_events == 0

    third = sync_raw_events(spark, settings)
    assert third.rows_added == 0
    assert third.delta_version == second.delta_version
    assert_exactly_once(settings, store)


WRITER = textwrap.dedent(
    """
    import random, sys, time
    from datetime import UTC, datetime, timedelta
    import psycopg
    sys.path.insert(0, sys.argv[3])
    from tests.integration.faults import write_event
    rng = random.Random(int(sys.argv[2]))
    with psycopg.connect(sys.argv[1]) as conn:
        for _ in range(int(sys.argv[4])):
            for _ in range(rng.randint(1, 3)):
                write_event(conn, datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 90 * 1440)))
            time.sleep(rng.uniform(0, 0.4))  # commit delay: others commit meanwhile
            if rng.random() < 0.1:
                conn.rollback()  # an aborted writer leaves nothing and holds nothing
            else:
                conn.commit()
    """
)


def test_many_writers_with_commit_delays(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, store.admin_dsn, str(seed), str(PROJECT), "25"])
        for seed in range(4)
    ]
    syncs = 0
    while any(w.poll() is None for w in writers):
        sync_raw_events(spark, settings)
        syncs += 1
    assert all(w.returncode == 0 for w in writers)
    sync_raw_events(spark, settings)
    assert syncs >= 2, "the syncs should have run while the writers were writing"
    assert sum(store_ids(store).values()) > 50
    assert_exactly_once(settings, store)


def test_duplicate_event_id_in_store_is_kept_once_and_reported(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    twin = str(uuid.uuid4())
    with psycopg.connect(store.admin_dsn) as conn:
        write_event(conn, T0 + timedelta(days=40), event_id=twin)  # April
        write_event(conn, T0, event_id=twin)  # March: the earliest copy of this read wins
        write_event(conn, T0 + timedelta(hours=1))
    first = sync_raw_events(spark, settings)
    assert first.duplicate_event_ids == [twin]
    assert first.rows_added == 2
    raw = lake.open_table(settings, RAW_EVENTS).to_pyarrow_table().to_pylist()
    kept = [r for r in raw if r["event_id"] == twin]
    assert len(kept) == 1 and kept[0]["event_at"].replace(tzinfo=UTC) == T0

    # A third copy, committed later with an even earlier event_at: the lake already holds one.
    with psycopg.connect(store.admin_dsn) as conn:
        write_event(conn, T0 - timedelta(days=60), event_id=twin)
    second = sync_raw_events(spark, settings)
    assert second.duplicate_event_ids == [twin]
    assert second.rows_added == 0
    assert lake_ids(settings)[twin] == 1
    check = reconcile(spark, settings)
    assert check.ok, check.summary()
    assert check.store_duplicate_ids == [twin]


@pytest.mark.parametrize("missing_ok", [True, False], ids=["current_setting-true", "current_setting-strict"])
def test_rows_hidden_by_rls_fail_loudly_fc13(missing_ok, new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 10, tenants=2, seed=3)
    sync_raw_events(spark, settings)
    cursor = read_cursor(settings)
    version = lake.delta_version(settings, RAW_EVENTS)
    generate_events(store.admin_dsn, 10, tenants=2, seed=4)

    setting = (
        "current_setting('app.current_tenant_id', true)" if missing_ok else "current_setting('app.current_tenant_id')"
    )
    with psycopg.connect(store.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP POLICY pipeline_reads_all_tenants ON eventstore.events")
        conn.execute("DROP POLICY tenant_isolation ON eventstore.events")
        conn.execute(f"CREATE POLICY tenant_isolation ON eventstore.events USING (tenant_id = {setting}::uuid)")
    with pytest.raises(SourceError, match="row-level security") as failure:
        sync_raw_events(spark, settings)
    assert "lakehouse_pipeline" in str(failure.value)
    assert read_cursor(settings) == cursor
    assert lake.delta_version(settings, RAW_EVENTS) == version
    assert sum(lake_ids(settings).values()) == 10


def test_partitioned_source_fc05(new_store, spark, local_warehouse):
    """An event beyond the created partitions (default partition) is synced and reported;
    a repair of a day without any partition succeeds with 0 rows."""
    store = new_store()
    settings = make_settings(store, local_warehouse)
    with psycopg.connect(store.admin_dsn, autocommit=True) as conn:
        # Partitions exist from 24 months back to 3 months ahead (init); Jan-Mar 2031 are added
        # here, April 2031 has none and lands in the default partition.
        conn.execute("SELECT eventstore.ensure_monthly_partitions('2031-01-01', '2031-04-01')")
        write_event(conn, datetime(2031, 2, 3, tzinfo=UTC))
        april = write_event(conn, datetime(2031, 4, 15, 3, 0, tzinfo=UTC))
        in_default = conn.execute(
            "SELECT count(*) FROM eventstore.events_default WHERE event_id = %s", (april,)
        ).fetchone()[0]
    assert in_default == 1
    result = sync_raw_events(spark, settings)
    assert result.rows_added == 2 and lake_ids(settings)[april] == 1
    assert result.default_partition_rows == 1  # reported: the warning of the case

    version = lake.delta_version(settings, RAW_EVENTS)
    empty = repair_days(spark, settings, date(2033, 7, 1), date(2033, 7, 1))
    assert empty.rows_read == 0 and empty.rows_added == 0
    assert lake.delta_version(settings, RAW_EVENTS) == version


def test_reconcile_finds_a_gap_and_repair_heals_it(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 300, tenants=2, seed=5, days=10)
    sync_raw_events(spark, settings)
    assert reconcile(spark, settings).ok

    victim = _delete_one_lake_row(spark, settings)
    check = reconcile(spark, settings)
    assert not check.ok
    [diff] = check.mismatched_days
    assert diff.missing_ids == [victim["event_id"]]
    assert diff.store_events == diff.lake_events + 1
    assert diff.day == str(victim["event_date"])

    healed = repair_days(spark, settings, victim["event_date"], victim["event_date"])
    assert healed.rows_added == 1
    again = repair_days(spark, settings, victim["event_date"], victim["event_date"])
    assert again.rows_added == 0  # idempotent
    assert reconcile(spark, settings).ok
    assert_exactly_once(settings, store)


def _delete_one_lake_row(spark, settings) -> dict:
    """Simulate a lost row: lift appendOnly for one DELETE, then restore it."""
    path = f"{settings.warehouse}/{RAW_EVENTS}"
    victim = spark.read.format("delta").load(path).orderBy("event_id").first().asDict()
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.appendOnly' = 'false')")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE event_id = '{victim['event_id']}'")
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.appendOnly' = 'true')")
    return victim


def test_lookback_mode_without_tx_id(new_store, spark, local_warehouse):
    """The weaker mode for stores without tx_id: late commits inside the window are caught, one
    beyond it is missed (the stated limit), reconciliation reports it and a repair heals it."""
    store = new_store()
    with psycopg.connect(store.admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE eventstore.events DROP COLUMN tx_id")
    settings = make_settings(store, local_warehouse).with_overrides(cursor_mode="lookback", lookback_seconds=3600)
    newest = T0 + timedelta(days=5)
    with psycopg.connect(store.admin_dsn) as conn:
        for i in range(20):
            write_event(conn, T0 + timedelta(hours=6 * i))
        write_event(conn, newest)
    first = sync_raw_events(spark, settings)
    assert first.rows_added == 21
    assert first.cursor_after == int((newest - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))

    with psycopg.connect(store.admin_dsn) as conn:
        inside = write_event(conn, newest - timedelta(minutes=10))
        beyond = write_event(conn, newest - timedelta(hours=3))
    second = sync_raw_events(spark, settings)
    assert second.rows_added == 1
    assert lake_ids(settings)[inside] == 1
    assert beyond not in lake_ids(settings)
    assert sync_raw_events(spark, settings).rows_added == 0

    check = reconcile(spark, settings)
    assert [d.missing_ids for d in check.mismatched_days] == [[beyond]]
    day = (newest - timedelta(hours=3)).astimezone(settings.zone).date()
    assert repair_days(spark, settings, day, day).rows_added == 1
    assert reconcile(spark, settings).ok
    assert_exactly_once(settings, store)


# --- processes killed, overlapping, cut off ------------------------------------------------------

KILL_POINTS = ["start", "extracting", "writing", "committed"]


def crash_rounds(rounds: int, new_store, spark, warehouse: str, profile: str, seed: int) -> list[str]:
    store = new_store()
    settings = make_settings(store, warehouse, profile=profile)
    env = cli_env(store, warehouse, profile)
    rng = random.Random(seed)
    seen = []
    for number in range(rounds):
        generate_events(store.admin_dsn, rng.randint(50, 400), tenants=2, seed=seed * 1000 + number, days=15)
        point = KILL_POINTS[number % len(KILL_POINTS)] if number < len(KILL_POINTS) else rng.choice(KILL_POINTS)
        sync = Process(["-v", "sync"], env)
        if point == "start":
            time.sleep(rng.uniform(0, 10))
        elif point == "extracting":
            sync.wait_for("extracting")
        elif point == "writing":
            sync.wait_for("extracted")
            time.sleep(rng.uniform(0, 2.5))
        else:
            sync.wait_for("rows added in version")
        sync.kill()
        seen.append(point)
        sync_raw_events(spark, settings)
        assert_exactly_once(settings, store)
        assert reconcile(spark, settings).ok
    return seen


def test_crash_anywhere_local(new_store, spark, local_warehouse):
    seen = crash_rounds(5, new_store, spark, local_warehouse, "local", seed=7)
    assert set(seen) == set(KILL_POINTS)


@pytest.mark.stress
def test_crash_anywhere_stress_s3(new_store, spark, s3_warehouse, stress_rounds):
    crash_rounds(stress_rounds, new_store, spark, s3_warehouse, "s3", seed=11)


def test_overlapping_syncs(new_store, spark, local_warehouse):
    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 2000, tenants=3, seed=8)
    env = cli_env(store, local_warehouse)
    both = [Process(["sync"], env) for _ in range(2)]
    outcomes = [p.finish() for p in both]
    for code, _, err in outcomes:
        assert code == 0 or (code == 2 and "another sync" in err), err
        assert "Traceback" not in err
    assert any(code == 0 for code, _, _ in outcomes)
    assert_exactly_once(settings, store)
    assert lake.open_table(settings, RAW_EVENTS).to_pyarrow_table().num_rows == 2000


def test_postgres_stopped_mid_run(spare_postgres, spark, local_warehouse):
    store = spare_postgres.store
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 500, tenants=2, seed=9)
    sync_raw_events(spark, settings)
    version = lake.delta_version(settings, RAW_EVENTS)
    generate_events(store.admin_dsn, 20000, tenants=2, seed=10, days=30)

    sync = Process(["-v", "sync"], cli_env(store, local_warehouse))
    assert sync.wait_for("extracting")
    spare_postgres.stop()
    code, _, err = sync.finish()
    assert code == 2, err
    assert "Traceback" not in err
    assert "PostgreSQL" in err.splitlines()[-1]
    # Readers see a whole version: the previous one, or the run's complete commit.
    now = lake.open_table(settings, RAW_EVENTS)
    assert now.to_pyarrow_table().num_rows in {500, 20500}
    assert now.version() in {version, version + 1}

    spare_postgres.start()
    sync_raw_events(spark, settings)
    assert_exactly_once(settings, store)


def test_s3_endpoint_stopped_mid_run(new_store, spark, s3_proxy):
    store = new_store()
    warehouse = s3_proxy.warehouse
    settings = make_settings(store, warehouse, profile="s3", s3_endpoint=s3_proxy.endpoint)
    generate_events(store.admin_dsn, 300, tenants=2, seed=12)
    env = cli_env(store, warehouse, "s3", AWS_ENDPOINT_URL=s3_proxy.endpoint)
    # In-process runs use the session's direct route to the same moto server; only the run under
    # test goes through the relay that is cut.
    sync_raw_events(spark, settings)
    version = lake.delta_version(settings, RAW_EVENTS)
    generate_events(store.admin_dsn, 300, tenants=2, seed=13, days=20)

    sync = Process(["-v", "sync"], env)
    assert sync.wait_for("extracted")
    s3_proxy.stop()
    started = time.monotonic()
    code, _, err = sync.finish()
    assert code != 0
    assert time.monotonic() - started < 240, "an unreachable endpoint must fail in bounded time"
    assert err.strip().splitlines()[-1].startswith("lakehouse: error: "), err[-2000:]
    s3_proxy.start()
    assert lake.delta_version(settings, RAW_EVENTS) in {version, version + 1}
    sync_raw_events(spark, settings)
    assert_exactly_once(settings, store)


def test_failing_reconciliation_blocks_downstream_fc11(new_store, spark, local_warehouse):
    from tests.integration import runs

    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 400, tenants=2, seed=14, days=10)
    defs = runs.definitions(settings, store, local_warehouse)
    first = runs.run(defs)
    assert first.success
    evaluation = runs.checks(first)[("raw_events", "matches_event_store")]
    assert evaluation.passed and evaluation.metadata["lake_events"].value == 400

    victim = _delete_one_lake_row(spark, settings)
    generate_events(store.admin_dsn, 50, tenants=2, seed=15, days=5)
    second = runs.run(defs, raise_on_error=False)
    assert not second.success
    materialized = {e.asset_key.path[-1] for e in second.get_asset_materialization_events()}
    assert materialized == {"raw_events"}, "downstream assets must not run after a failed blocking check"
    evaluation = runs.checks(second)[("raw_events", "matches_event_store")]
    assert not evaluation.passed
    [day] = evaluation.metadata["mismatched_days"].value
    assert day["missing_ids"] == [victim["event_id"]]
    assert day["store_events"] == day["lake_events"] + 1
    assert evaluation.metadata["store_events"].value == 450
    assert evaluation.metadata["lake_events"].value == 449
    assert f"lakehouse repair --from {day['day']} --to {day['day']}" in evaluation.description
    assert runs.checks(second)[("raw_events", "unique_event_ids")].passed

    # A backfill of that day from Dagster heals the gap; the check passes again.
    healed = runs.run(defs, days=(day["day"], day["day"]))
    assert runs.raw_metadata(healed)["rows_added"] == 1
    assert runs.checks(healed)[("raw_events", "matches_event_store")].passed
    assert_exactly_once(settings, store)


@pytest.mark.stress
def test_parallel_day_repairs_fc08(new_store, spark, local_warehouse, stress_rounds):
    """Five days (two in the bounded run) re-synced by separate `lakehouse repair` processes, two at
    a time, into one table, outside Dagster's pools: every day whole, nothing twice, every repair
    its own commit (Delta conflicts are retried, never lost). The same through Dagster, where the
    pool serializes them: tests/integration/test_ui.py."""
    count = 5 if stress_rounds >= 5 else 2
    store = new_store()
    settings = make_settings(store, local_warehouse)
    generate_events(store.admin_dsn, 600, tenants=2, seed=16, days=8)
    sync_raw_events(spark, settings)
    path = f"{local_warehouse}/{RAW_EVENTS}"
    days = [
        r[0]
        for r in spark.read.format("delta").load(path).select("event_date").distinct().orderBy("event_date").collect()
    ][:count]
    assert len(days) == count
    day_list = ", ".join(f"DATE'{d}'" for d in days)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.appendOnly' = 'false')")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE event_date IN ({day_list})")
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.appendOnly' = 'true')")
    lost = reconcile(spark, settings)
    assert sorted(d.day for d in lost.mismatched_days) == [str(d) for d in days]
    version_before = lake.delta_version(settings, RAW_EVENTS)

    env = cli_env(store, local_warehouse)
    pending = [str(d) for d in days]
    running: list[Process] = []
    outcomes = []
    while pending or running:
        while pending and len(running) < 2:
            day = pending.pop(0)
            running.append(Process(["repair", "--from", day, "--to", day, "--format", "json"], env))
        running[0].proc.wait(600)
        outcomes.append(running.pop(0).finish())
    for code, _, err in outcomes:
        assert code == 0, err
    assert reconcile(spark, settings).ok
    assert_exactly_once(settings, store)
    repairs = [
        c
        for c in lake.commits(settings, RAW_EVENTS)
        if c.version > version_before and (c.user_metadata or {}).get("repair")
    ]
    assert sorted(c.user_metadata["repair"][0] for c in repairs) == [str(d) for d in days]
    assert len({c.version for c in repairs}) == count


STAGE_AND_MEASURE = textwrap.dedent(
    """
    import resource, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from pipelines import extract
    from tests.conftest import Store, make_settings
    store = Store("x", sys.argv[2], sys.argv[3])
    settings = make_settings(store, "/tmp/unused").with_overrides(batch_rows=int(sys.argv[4]))
    staged = extract.stage_events(settings, extract.Range(), Path(tempfile.mkdtemp()))
    print(staged.rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def test_extraction_memory_follows_the_batch_not_the_run(new_store):
    """Peak memory of extraction with 8x the events stays within a few MB (batches of 2,000)."""
    small, large = new_store(), new_store()
    generate_events(small.admin_dsn, 10_000, tenants=2, seed=17)
    generate_events(large.admin_dsn, 80_000, tenants=2, seed=17)

    def peak_mb(store) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", STAGE_AND_MEASURE, str(PROJECT), store.admin_dsn, store.dsn, "2000"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        rows, peak = done.stdout.split()
        return int(rows), int(peak)

    small_rows, small_peak = peak_mb(small)
    large_rows, large_peak = peak_mb(large)
    assert (small_rows, large_rows) == (10_000, 80_000)
    # Held in memory at once, 70,000 more events would add about 70 MB of Arrow data.
    assert large_peak - small_peak < 25, (small_peak, large_peak)
