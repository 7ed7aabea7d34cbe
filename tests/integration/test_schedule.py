"""FC-10: overlapping schedule ticks, a schedule switched off for an hour, a daemon down for an hour.

The ticks go through the Dagster daemon's own scheduler code (launch_scheduled_runs) at chosen
clock times; the runs they request are real: launched by Dagster's default run launcher, each in
its own process with its own SparkSession, against real PostgreSQL and a local warehouse.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import psycopg
from dagster import DagsterRunStatus, RunsFilter, build_schedule_context, instance_for_test
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import ModuleTarget
from dagster._scheduler.scheduler import launch_scheduled_runs

from dagster_project.definitions import defs
from tests.conftest import make_settings
from tests.integration.faults import PROJECT, assert_exactly_once, write_event

FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def test_tick_is_skipped_while_a_sync_run_is_unfinished():
    schedule = defs.resolve_schedule_def("incremental_sync")
    job = defs.resolve_job_def("sync_job")
    with instance_for_test() as instance:
        first = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert len(first.run_requests) == 1

        run = instance.create_run_for_job(job_def=job, status=DagsterRunStatus.STARTED)
        skipped = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert not skipped.run_requests
        assert run.run_id in skipped.skip_message

        instance.report_run_failed(run)
        after = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert len(after.run_requests) == 1


def _sync_runs(instance):
    return sorted(instance.get_run_records(RunsFilter(job_name="sync_job")), key=lambda r: r.create_timestamp)


def _wait_for_runs(instance, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [r.dagster_run.status for r in _sync_runs(instance)]
        if all(s in FINISHED for s in statuses):
            return
        time.sleep(1)
    raise AssertionError(f"sync runs did not finish: {statuses}")


def _wait_until_started(instance, run_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while instance.get_run_by_id(run_id).status != DagsterRunStatus.STARTED:
        assert time.monotonic() < deadline, instance.get_run_by_id(run_id).status
        time.sleep(0.5)


def _write_events(store, count: int, day: int) -> None:
    """Patient events only: each run builds one kind's tables, which keeps the runs short."""
    with psycopg.connect(store.admin_dsn) as conn:
        for n in range(count):
            write_event(conn, datetime(2025, 6, day, tzinfo=UTC) + timedelta(minutes=7 * n))
        conn.commit()


def test_overlapping_ticks_pause_and_downtime_launch_no_burst_fc10(new_store, local_warehouse, monkeypatch, tmp_path):
    store = new_store()
    _write_events(store, 60, day=1)
    for name, value in {
        "LAKEHOUSE_PROFILE": "local",
        "LAKEHOUSE_PG_DSN": store.dsn,
        "LAKEHOUSE_PG_ADMIN_DSN": store.admin_dsn,
        "LAKEHOUSE_WAREHOUSE": local_warehouse,
        "LAKEHOUSE_SYNC_CRON": "*/5 * * * *",
    }.items():
        monkeypatch.setenv(name, value)
    logger = logging.getLogger("fc10")
    t0 = datetime(2030, 1, 7, 0, 0, 1, tzinfo=UTC)  # far from 03:30 in Tokyo, the daily reconciliation

    (tmp_path / "dagster").mkdir()
    # Runs start as soon as a tick submits them (no queue daemon here); a queued run would count as
    # unfinished the same way.
    launch_at_once = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    with instance_for_test(overrides=launch_at_once, temp_dir=str(tmp_path / "dagster")) as instance:
        target = ModuleTarget("dagster_project", "defs", str(PROJECT), "lakehouse")
        with create_test_daemon_workspace_context(target, instance) as workspace:

            def daemon_iteration(minutes: float) -> None:
                moment = t0 + timedelta(minutes=minutes)
                with freeze_time(moment):
                    list(launch_scheduled_runs(workspace, logger, moment, {}, max_catchup_runs=5))

            location = next(iter(workspace.create_request_context().get_code_location_entries().values()))
            repository = next(iter(location.code_location.get_repositories().values()))
            schedule = repository.get_schedule("incremental_sync")

            def ticks():
                found = instance.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id)
                return sorted(found, key=lambda t: t.timestamp)

            daemon_iteration(0)  # the schedule (on by default) starts here
            # A run that takes longer than the 5 minutes between ticks: the store is locked.
            lock = psycopg.connect(store.admin_dsn)
            lock.execute("LOCK TABLE eventstore.events IN ACCESS EXCLUSIVE MODE")
            daemon_iteration(5)
            [first] = _sync_runs(instance)
            _wait_until_started(instance, first.dagster_run.run_id)
            daemon_iteration(10)
            assert len(_sync_runs(instance)) == 1, "a tick while the run is unfinished starts no second run"
            assert [t.status for t in ticks()] == [TickStatus.SUCCESS, TickStatus.SKIPPED]
            assert first.dagster_run.run_id in ticks()[-1].skip_reason
            lock.rollback()
            lock.close()
            _wait_for_runs(instance)

            # Off for an hour, then on again: no catch-up of the ticks it missed.
            with freeze_time(t0 + timedelta(minutes=11)):
                instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
            _write_events(store, 40, day=2)
            daemon_iteration(40)
            with freeze_time(t0 + timedelta(minutes=71)):
                instance.start_schedule(schedule)
            daemon_iteration(71)
            assert len(_sync_runs(instance)) == 1
            daemon_iteration(75)
            assert len(_sync_runs(instance)) == 2, "one run at the first tick after the pause"
            _wait_for_runs(instance)

            # The daemon down for an hour: the missed ticks launch one run, not a burst.
            _write_events(store, 30, day=3)
            daemon_iteration(140)
            assert len(_sync_runs(instance)) == 3
            recent = [t for t in ticks() if t.timestamp > (t0 + timedelta(minutes=75)).timestamp()]
            assert [t.status for t in recent].count(TickStatus.SUCCESS) == 1
            assert all(t.status == TickStatus.SKIPPED for t in recent if t.status != TickStatus.SUCCESS)
            _wait_for_runs(instance)

            records = _sync_runs(instance)
            assert [r.dagster_run.status for r in records] == [DagsterRunStatus.SUCCESS] * 3
            print("run seconds:", [round(r.end_time - r.start_time, 1) for r in records])
            for earlier, later in zip(records, records[1:], strict=False):
                assert earlier.end_time <= later.start_time, "two sync runs overlapped"
    settings = make_settings(store, local_warehouse)
    assert_exactly_once(settings, store)
