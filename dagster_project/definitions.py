"""The Definitions object Dagster loads (`dagster dev -m dagster_project`)."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DagsterInvalidDefinitionError,
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

from dagster_project.assets import build_raw_events_asset, build_silver_asset
from dagster_project.checks import build_raw_events_checks
from dagster_project.resources import PostgresResource, SparkResource, WarehouseResource
from pipelines.errors import ConfigError
from pipelines.settings import Settings, load_settings


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


def build_schedule(job, name: str, cron: str, timezone: str, setting: str, description: str):
    """Every tick requests one run of job, unless the previous one has not finished.

    After downtime the daemon evaluates at most a few missed ticks, one after the other; the first
    requests a run and the others find it unfinished, so a catch-up is one run, never a burst.
    """

    def evaluate(context: ScheduleEvaluationContext):
        running = context.instance.get_run_records(RunsFilter(job_name=job.name, statuses=UNFINISHED), limit=1)
        if running:
            return SkipReason(
                f"run {running[0].dagster_run.run_id} of {job.name} has not finished; "
                "the next tick does whatever this one would have"
            )
        return RunRequest()

    try:
        return schedule(
            name=name,
            job=job,
            cron_schedule=cron,
            execution_timezone=timezone,
            description=description,
            # On from the start: `make ui` runs the daemon, so the runs just happen.
            default_status=DefaultScheduleStatus.RUNNING,
        )(evaluate)
    except DagsterInvalidDefinitionError:
        raise ConfigError(f"{setting} must be a cron schedule such as '*/15 * * * *', not {cron!r}") from None


def build_definitions(settings: Settings | None = None, spark: SparkResource | None = None) -> Definitions:
    """The assets, checks, jobs and schedules for these settings (default: conf/ and the environment).

    Args:
        settings: what the definitions are shaped by (kinds, partitions, schedules); connections
            and secrets are the Spark resource's, resolved at launch.
        spark: the resource runs use; default one built from LAKEHOUSE_PG_DSN and LAKEHOUSE_WAREHOUSE.
    """
    settings = settings or load_settings()
    raw_events = build_raw_events_asset(settings)
    checks = build_raw_events_checks(settings)
    sync_job = define_asset_job(
        "sync_job",
        selection=AssetSelection.all(),
        description="Without a partition: incremental sync of raw_events, then every history and current "
        "table and the snapshot. With a day range (a backfill): those days re-synced first.",
    )
    reconciliation_job = define_asset_job(
        "reconciliation_job",
        selection=AssetSelection.checks(*checks),
        description="Daily reconciliation: raw_events against the event store, day by day, and freshness.",
    )
    if spark is None:
        spark = SparkResource(
            postgres=PostgresResource(dsn=_env_or_default("LAKEHOUSE_PG_DSN")),
            warehouse=WarehouseResource(root=_env_or_default("LAKEHOUSE_WAREHOUSE")),
        )
    return Definitions(
        assets=[raw_events, build_silver_asset(settings)],
        asset_checks=checks,
        jobs=[sync_job, reconciliation_job],
        schedules=[
            build_schedule(
                sync_job,
                "incremental_sync",
                settings.sync_cron,
                settings.timezone,
                "[dagster] sync_cron (LAKEHOUSE_SYNC_CRON)",
                "Incremental sync: every new event into raw_events, then the history and current tables.",
            ),
            build_schedule(
                reconciliation_job,
                "daily_reconciliation",
                settings.reconcile_cron,
                settings.timezone,
                "[dagster] reconcile_cron (LAKEHOUSE_RECONCILE_CRON)",
                "raw_events against the event store, every day; a failure names the days to backfill.",
            ),
        ],
        resources={"spark": spark},
        # One process and one SparkSession per run: every asset of the run shares them.
        executor=in_process_executor,
    )


defs = build_definitions()
