"""Checks on raw_events that run as steps of their own: reconciliation with the store, and freshness.

The checks that belong to one write (default partition, retention policy, schema drift) are
yielded by the assets themselves (dagster_project/assets.py).
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    asset_check,
    multi_asset_check,
)

from dagster_project.assets import run_days, settings_of_run
from dagster_project.failures import reported_failures
from dagster_project.resources import SparkResource
from pipelines.health import freshness
from pipelines.lake import commit_of_run
from pipelines.reconcile import reconcile
from pipelines.settings import Settings
from pipelines.tables import RAW_EVENTS

RECONCILE_CHECK = "matches_event_store"
UNIQUE_CHECK = "unique_event_ids"
FRESHNESS_CHECK = "freshness"
# Up to this many days, the check's metadata lists every day's counts (a backfill's range).
DAYS_LISTED = 62


def _repair_command(days) -> str:
    if not days:
        return "none"
    first, last = days[0].day, days[-1].day
    return f"launch a backfill of {first}..{last}, or: lakehouse repair --from {first} --to {last}"


def build_raw_events_checks(settings: Settings) -> list:
    """The reconciliation and freshness checks, for definitions shaped by these settings."""

    @multi_asset_check(
        name="raw_events_reconciliation",
        specs=[
            AssetCheckSpec(
                name=RECONCILE_CHECK,
                asset=RAW_EVENTS,
                blocking=True,
                description="Per day (event day in the configured zone): the events PostgreSQL holds below the "
                "cursor (a backfill: below the horizon it read) against raw_events; lists missing and extra ids. "
                "While it fails, the history and current tables are not built in that run.",
            ),
            AssetCheckSpec(
                name=UNIQUE_CHECK,
                asset=RAW_EVENTS,
                blocking=True,
                description="No event id appears more than once in raw_events.",
            ),
        ],
    )
    def raw_events_reconciliation(context, spark: SparkResource):
        """Reconciliation of the run's days (a backfill) or of every day (an incremental or daily run)."""
        run_settings = settings_of_run(settings, spark)
        days = run_days(context.op_execution_context)
        bound = None
        if days is not None:
            # A backfill read every transaction below its horizon: that is what its days must hold.
            commit = commit_of_run(run_settings, RAW_EVENTS, context.op_execution_context.run_id)
            bound = (commit.user_metadata or {}).get("horizon") if commit else None
        with reported_failures(context, "reconciliation of raw_events with the event store"):
            result = reconcile(spark.session(), run_settings, *(days or (None, None)), bound=bound)
        if not result.ok:
            context.log.error(result.summary())
        worst = result.mismatched_days[:10]
        per_day = result.day_counts if len(result.day_counts) <= DAYS_LISTED else {}
        yield AssetCheckResult(
            check_name=RECONCILE_CHECK,
            passed=result.matches,
            severity=AssetCheckSeverity.ERROR,
            description=(
                result.summary() + f"; to heal it, {_repair_command(result.mismatched_days)}"
                if not result.matches
                else result.summary()
            ),
            metadata={
                "raw_events_version": result.raw_version,
                "days": f"{result.first_day}..{result.last_day}" if result.first_day else "all",
                "compared_below": result.bound,
                "days_checked": result.days_checked,
                "store_events": result.store_events,
                "lake_events": result.lake_events,
                "mismatched_days": MetadataValue.json(
                    [
                        {
                            "day": d.day,
                            "store_events": d.store_events,
                            "lake_events": d.lake_events,
                            "missing_ids": d.missing_ids,
                            "extra_ids": d.extra_ids,
                        }
                        for d in worst
                    ]
                ),
                "events_per_day": MetadataValue.json({d: {"store": s, "lake": n} for d, (s, n) in per_day.items()}),
                "store_duplicate_ids": MetadataValue.json(result.store_duplicate_ids),
                "repair": _repair_command(result.mismatched_days),
            },
        )
        yield AssetCheckResult(
            check_name=UNIQUE_CHECK,
            passed=result.unique_ok,
            severity=AssetCheckSeverity.ERROR,
            description=(
                "every event id appears once in raw_events"
                if result.unique_ok
                else f"{len(result.lake_duplicate_ids)} event id(s) appear more than once in raw_events "
                f"(first: {', '.join(result.lake_duplicate_ids[:5])})"
            ),
            metadata={"lake_duplicate_ids": MetadataValue.json(result.lake_duplicate_ids)},
        )

    @asset_check(
        asset=RAW_EVENTS,
        name=FRESHNESS_CHECK,
        description="Lag between the newest committed event in PostgreSQL and the newest in raw_events "
        "(business time), against [dagster] freshness_max_lag_minutes. Warns; needs no Spark.",
    )
    def raw_events_freshness(context: AssetCheckExecutionContext, spark: SparkResource) -> AssetCheckResult:
        run_settings = settings_of_run(settings, spark)  # settings only: this check starts no SparkSession
        with reported_failures(context, "freshness of raw_events"):
            lag = freshness(run_settings)
        return AssetCheckResult(
            passed=lag.ok,
            severity=AssetCheckSeverity.WARN,
            description=lag.summary(),
            metadata={
                "lag_seconds": round(lag.lag_seconds, 1),
                "max_lag_minutes": lag.max_lag_minutes,
                "newest_store_event_at": lag.newest_store_event_at.isoformat() if lag.newest_store_event_at else "none",
                "newest_lake_event_at": lag.newest_lake_event_at.isoformat() if lag.newest_lake_event_at else "none",
                "pending_events": lag.pending_events,
                "oldest_open_write": lag.oldest_open_write.isoformat() if lag.oldest_open_write else "none",
            },
        )

    return [raw_events_reconciliation, raw_events_freshness]
