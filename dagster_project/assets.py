"""Assets: raw_events (bronze), and <kind>_history and <kind>_current per configured aggregate kind."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
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
from pipelines.silver import recorded_conflicts
from pipelines.sync import build_and_record
from pipelines.tables import RAW_EVENTS, SNAPSHOTS, current_table_name, history_table_name, table_path

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


def silver_specs(settings: Settings) -> list[AssetSpec]:
    tables = []
    for kind in settings.kinds:
        tables.append(
            (
                history_table_name(kind),
                f"Every state of every {kind} aggregate: one row per event, valid_from / valid_to.",
            )
        )
        tables.append(
            (current_table_name(kind), f"Latest state of every {kind} aggregate (snapshot fields as columns).")
        )
    specs = [
        AssetSpec(key=AssetKey(name), deps=[RAW_EVENTS], group_name=GROUP, kinds={"delta", "spark"}, description=text)
        for name, text in tables
    ]
    snapshot = AssetSpec(
        key=AssetKey(SNAPSHOTS),
        deps=[RAW_EVENTS, *(spec.key for spec in specs)],
        group_name=GROUP,
        kinds={"delta", "spark"},
        description="One row per completed run: the Delta version of every table it left behind "
        "(consistent snapshots across tables).",
    )
    return [*specs, snapshot]


def silver_check_specs(settings: Settings) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            name="snapshot_types",
            asset=history_table_name(kind),
            description="Snapshot fields whose JSON type no longer fits their column (the raw JSON is kept).",
        )
        for kind in settings.kinds
    ]


def _silver_metadata(settings: Settings, result) -> dict:
    return {
        "events_read": result.events_read,
        "rows_changed": result.rows_changed,
        "delta_version": result.delta_version,
        "cursor_before": result.raw_version_before,
        "cursor_after": result.raw_version_after,
        "added_columns": MetadataValue.json(list(result.added_columns)),
        "type_conflicts": MetadataValue.json(list(result.conflicts)),
        "table": MetadataValue.path(table_path(settings, result.table)),
    }


def _snapshot_metadata(settings: Settings, snapshot) -> dict:
    if snapshot is None:
        return {"recorded": False}
    return {
        "sequence": snapshot.sequence,
        "completed_at": snapshot.completed_at.isoformat(),
        "delta_version": snapshot.snapshots_version,
        "tables": MetadataValue.json(dict(sorted(snapshot.tables.items()))),
        "table": MetadataValue.path(table_path(settings, SNAPSHOTS)),
    }


def build_silver_asset(settings: Settings):
    """One multi-asset for all history and current tables: they are built from one read of raw_events."""

    @multi_asset(
        name="silver_tables",
        specs=silver_specs(settings),
        check_specs=silver_check_specs(settings),
        can_subset=False,
    )
    def silver_tables(context: AssetExecutionContext, spark: SparkResource):
        run_settings = spark.settings
        # The snapshot is recorded last, after every table write of the run has committed.
        results, snapshot = build_and_record(spark.session(), run_settings, context.run_id, "dagster")
        declared = {t for k in settings.kinds for t in (history_table_name(k), current_table_name(k))}
        checked = {history_table_name(k) for k in settings.kinds}
        for result in results:
            if result.table not in declared:
                context.log.warning(
                    f"{result.table} built for kind {result.kind!r}, which is not in "
                    "[aggregates] kinds of conf/: add it there to see it as its own asset"
                )
                continue
            yield MaterializeResult(asset_key=AssetKey(result.table), metadata=_silver_metadata(run_settings, result))
        built = {r.table for r in results}
        for name in sorted(declared - built):
            yield MaterializeResult(asset_key=AssetKey(name), metadata={"rows_changed": 0})
        yield MaterializeResult(asset_key=AssetKey(SNAPSHOTS), metadata=_snapshot_metadata(run_settings, snapshot))
        by_table = {r.table: r for r in results}
        for name in sorted(checked):
            result = by_table.get(name)
            conflicts = list(result.conflicts) if result else []
            earlier = recorded_conflicts(run_settings, name)
            description = (
                "; ".join(
                    f"{c['rows']} snapshots hold a {c['seen_type']} at {c['path']} where the table has "
                    f"{c['column_type']} (e.g. event {c['example_event_id']})"
                    for c in conflicts
                )
                + "; the raw JSON is kept in aggregate_snapshot"
                if conflicts
                else "every snapshot value of this run fits its column"
            )
            yield AssetCheckResult(
                asset_key=AssetKey(name),
                check_name="snapshot_types",
                passed=not conflicts,
                severity=AssetCheckSeverity.WARN,
                description=description,
                metadata={
                    "conflicts": MetadataValue.json(conflicts),
                    "conflicts_recorded_in_table_history": len(earlier),
                },
            )

    return silver_tables
