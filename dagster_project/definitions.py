"""The Definitions object Dagster loads (`dagster dev -m dagster_project`)."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DagsterRunStatus,
    DefaultScheduleStatus,
    Definitions,
    EnvVar,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    schedule,
)

from dagster_project.assets import build_silver_asset, raw_events, raw_events_matches_store
from dagster_project.resources import PostgresResource, SparkResource, WarehouseResource
from pipelines.settings import load_settings


def _env_or_default(name: str):
    """EnvVar when set (resolved at launch, hidden in the UI); otherwise the conf/ default."""
    return EnvVar(name) if os.environ.get(name) else None


# A run in one of these states still may write: a new tick must not start another beside it.
UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def build_sync_schedule(job, cron: str, timezone: str):
    """Every tick requests one incremental run, unless the previous one has not finished."""

    @schedule(
        name="incremental_sync",
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        # On from the start: `make ui` runs the daemon, so incremental syncs just happen.
        default_status=DefaultScheduleStatus.RUNNING,
    )
    def incremental_sync(context: ScheduleEvaluationContext):
        running = context.instance.get_run_records(RunsFilter(job_name=job.name, statuses=UNFINISHED), limit=1)
        if running:
            return SkipReason(
                f"run {running[0].dagster_run.run_id} of {job.name} has not finished; "
                "the next tick syncs whatever this one would have"
            )
        return RunRequest()

    return incremental_sync


def build_definitions() -> Definitions:
    settings = load_settings()  # conf/ only: kinds and the schedule; secrets resolve at launch
    sync_job = define_asset_job(
        "sync_job",
        selection=AssetSelection.all(),
        description="Incremental sync: raw_events, then every history and current table.",
    )
    postgres = PostgresResource(dsn=_env_or_default("LAKEHOUSE_PG_DSN"))
    warehouse = WarehouseResource(root=_env_or_default("LAKEHOUSE_WAREHOUSE"))
    return Definitions(
        assets=[raw_events, build_silver_asset(settings)],
        asset_checks=[raw_events_matches_store],
        jobs=[sync_job],
        schedules=[build_sync_schedule(sync_job, settings.sync_cron, settings.timezone)],
        resources={
            "spark": SparkResource(postgres=postgres, warehouse=warehouse),
        },
        # One process and one SparkSession per run: every asset of the run shares them.
        executor=in_process_executor,
    )


defs = build_definitions()
