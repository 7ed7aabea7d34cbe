"""Assets: raw_events (bronze) and one <kind>_current table per configured aggregate kind."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
    multi_asset,
)

from dagster_project.resources import SparkResource
from pipelines.load import guarantee, sync_raw_events
from pipelines.reconcile import reconcile
from pipelines.settings import Settings
from pipelines.silver import build_current
from pipelines.tables import RAW_EVENTS, current_table_name, table_path

GROUP = "lakehouse"


@asset(name=RAW_EVENTS, group_name=GROUP, kinds={"delta", "spark", "postgres"})
def raw_events(context: AssetExecutionContext, spark: SparkResource) -> MaterializeResult:
    """Every committed event of the event store exactly once, appended incrementally (bronze)."""
    settings = spark.settings
    result = sync_raw_events(spark.session(), settings, run_id=context.run_id)
    context.log.info(
        f"raw_events: +{result.rows_added} rows, version {result.delta_version}, "
        f"cursor {result.cursor_before} -> {result.cursor_after}"
    )
    if result.duplicate_event_ids:
        context.log.warning(
            "the event store holds these event ids more than once; raw_events keeps one copy of each: "
            + ", ".join(result.duplicate_event_ids)
        )
    return MaterializeResult(
        metadata={
            "rows_added": result.rows_added,
            "rows_read": result.rows_read,
            "cursor_mode": result.cursor_mode,
            "guarantee": guarantee(settings),
            "oldest_open_write": result.oldest_open_write or "none",
            "duplicate_event_ids": MetadataValue.json(result.duplicate_event_ids),
            "default_partition_rows": result.default_partition_rows,
            "delta_version": result.delta_version,
            "cursor_before": result.cursor_before,
            "cursor_after": result.cursor_after,
            "pending_events": result.pending_events,
            "store_events": result.store_events,
            "extract_seconds": round(result.extract_seconds, 2),
            "write_seconds": round(result.write_seconds, 2),
            "table": MetadataValue.path(table_path(settings, RAW_EVENTS)),
        }
    )


@asset_check(
    asset=RAW_EVENTS,
    name="matches_event_store",
    blocking=True,
    description="Per day: events in PostgreSQL (up to the cursor) versus raw_events; lists missing and extra ids.",
)
def raw_events_matches_store(context: AssetCheckExecutionContext, spark: SparkResource) -> AssetCheckResult:
    result = reconcile(spark.session(), spark.settings)
    if not result.ok:
        context.log.error(result.summary())
    worst = result.mismatched_days[:10]
    return AssetCheckResult(
        passed=result.ok,
        severity=AssetCheckSeverity.ERROR,
        description=result.summary(),
        metadata={
            "raw_events_version": result.raw_version,
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
            "lake_duplicate_ids": MetadataValue.json(result.lake_duplicate_ids),
            "store_duplicate_ids": MetadataValue.json(result.store_duplicate_ids),
            "repair": (
                f"lakehouse repair --from {worst[0].day} --to {result.mismatched_days[-1].day}" if worst else "none"
            ),
        },
    )


def current_specs(settings: Settings) -> list[AssetSpec]:
    return [
        AssetSpec(
            key=AssetKey(current_table_name(kind)),
            deps=[RAW_EVENTS],
            group_name=GROUP,
            kinds={"delta", "spark"},
            description=f"Latest state of every {kind} aggregate (snapshot fields as columns).",
        )
        for kind in settings.kinds
    ]


def build_current_asset(settings: Settings):
    """One multi-asset for all current tables: they are built from one read of raw_events."""

    @multi_asset(name="current_tables", specs=current_specs(settings), can_subset=False)
    def current_tables(context: AssetExecutionContext, spark: SparkResource):
        run_settings = spark.settings
        results = build_current(spark.session(), run_settings)
        declared = {current_table_name(k) for k in settings.kinds}
        for result in results:
            if result.table not in declared:
                context.log.warning(
                    f"{result.table} built for kind {result.kind!r}, which is not in "
                    "[aggregates] kinds of conf/: add it there to see it as its own asset"
                )
                continue
            yield MaterializeResult(
                asset_key=AssetKey(result.table),
                metadata={
                    "events_read": result.events_read,
                    "rows_added": result.aggregates_changed,
                    "delta_version": result.delta_version,
                    "cursor_before": result.raw_version_before,
                    "cursor_after": result.raw_version_after,
                    "table": MetadataValue.path(table_path(run_settings, result.table)),
                },
            )
        built = {r.table for r in results}
        for name in sorted(declared - built):
            yield MaterializeResult(asset_key=AssetKey(name), metadata={"rows_added": 0})

    return current_tables
