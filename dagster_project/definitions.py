"""The Definitions object Dagster loads (`dagster dev -m dagster_project`)."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    EnvVar,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)

from dagster_project.assets import build_current_asset, raw_events
from dagster_project.resources import PostgresResource, SparkResource, WarehouseResource
from pipelines.settings import load_settings


def _env_or_default(name: str):
    """EnvVar when set (resolved at launch, hidden in the UI); otherwise the conf/ default."""
    return EnvVar(name) if os.environ.get(name) else None


def build_definitions() -> Definitions:
    settings = load_settings()  # conf/ only: kinds and the schedule; secrets resolve at launch
    sync_job = define_asset_job(
        "sync_job",
        selection=AssetSelection.all(),
        description="Incremental sync: raw_events, then every current-state table.",
    )
    postgres = PostgresResource(dsn=_env_or_default("LAKEHOUSE_PG_DSN"))
    warehouse = WarehouseResource(root=_env_or_default("LAKEHOUSE_WAREHOUSE"))
    return Definitions(
        assets=[raw_events, build_current_asset(settings)],
        jobs=[sync_job],
        schedules=[
            ScheduleDefinition(
                name="incremental_sync",
                job=sync_job,
                cron_schedule=settings.sync_cron,
                execution_timezone=settings.timezone,
                # On from the start: `make ui` runs the daemon, so incremental syncs just happen.
                default_status=DefaultScheduleStatus.RUNNING,
            )
        ],
        resources={
            "spark": SparkResource(postgres=postgres, warehouse=warehouse),
        },
        # One process and one SparkSession per run: every asset of the run shares them.
        executor=in_process_executor,
    )


defs = build_definitions()
