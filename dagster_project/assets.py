"""Assets: raw_events (bronze, partitioned by event day), <kind>_history, <kind>_current, _snapshots.

Thin: each asset reads its settings from the Spark resource, calls one library function and turns
the result into materialization metadata and check results.
"""

import time
import warnings
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from dagster_project.failures import reported_failures
from dagster_project.resources import SparkResource
from pipelines.health import freshness, policy_report
from pipelines.load import guarantee, repair_days, sync_raw_events
from pipelines.settings import Settings
from pipelines.silver import recorded_conflicts
from pipelines.sync import build_and_record
from pipelines.tables import RAW_EVENTS, SNAPSHOTS, current_table_name, history_table_name, table_path

GROUP = "lakehouse"
# Concurrency pools: a run that writes a table group waits until no other run does (the limits
# are the Dagster instance's: conf/dagster.yaml sets one run per pool).
RAW_POOL = "lakehouse_raw_events"
SILVER_POOL = "lakehouse_silver"
RETENTION_CHECK = "retention_policy"
DEFAULT_PARTITION_CHECK = "default_partition_empty"
DRIFT_CHECK = "schema_drift"
POOL_ADVICE = "set `concurrency: pools: default_limit: 1` in dagster.yaml (conf/dagster.yaml does)"


def daily_partitions(settings: Settings) -> DailyPartitionsDefinition:
    """One partition per event day in the configured zone (its own midnights, daylight saving
    included), from [dagster] partitions_start up to today (today's can be re-synced too)."""
    return DailyPartitionsDefinition(
        start_date=settings.partitions_start.isoformat(), timezone=settings.timezone, end_offset=1
    )


def backfill_policy(settings: Settings) -> BackfillPolicy:
    """A whole day range in one run (one SparkSession), unless [dagster] backfill_days_per_run splits it."""
    if settings.backfill_days_per_run:
        return BackfillPolicy.multi_run(max_partitions_per_run=settings.backfill_days_per_run)
    return BackfillPolicy.single_run()


def run_days(context) -> tuple[date, date] | None:
    """The days a partitioned run covers (first, last), or None for an incremental run."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)


def settings_of_run(shaped_by: Settings, spark: SparkResource) -> Settings:
    """The resource's settings (connections, warehouse, storage) with what the definitions were shaped by.

    A run reads its partition keys as days of the zone its partitions were defined in, and builds
    the kinds its assets were declared for, whatever the environment of the run process says.
    """
    return spark.settings.with_overrides(
        timezone=shaped_by.timezone,
        kinds=shaped_by.kinds,
        freshness_max_lag_minutes=shaped_by.freshness_max_lag_minutes,
    )


def warn_if_pool_unlimited(context, pool: str) -> None:
    """Say so when this Dagster instance lets two runs write the same tables at once."""
    try:
        limit = context.instance.event_log_storage.get_concurrency_info(pool).limit
    except Exception:  # an instance without concurrency support (an ephemeral test instance)
        return
    if limit is None:
        context.log.warning(
            f"pool {pool} has no limit in this Dagster instance, so two runs may write its tables at once "
            f"(Delta conflicts are retried, nothing is lost, but runs fail more often): {POOL_ADVICE}"
        )


def retention_result(settings: Settings, name: str) -> AssetCheckResult:
    report = policy_report(settings, name)
    return AssetCheckResult(
        asset_key=AssetKey(name),
        check_name=RETENTION_CHECK,
        passed=report.ok,
        severity=AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata={"retention_days": settings.retention_days, "wrong": MetadataValue.json(report.wrong)},
    )


def retention_spec(name: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        name=RETENTION_CHECK,
        asset=name,
        description="The table carries the retention policy (log and deleted-file retention), in-commit "
        "timestamps and, for append-only tables, delta.appendOnly.",
    )


def _lag_metadata(settings: Settings) -> dict:
    lag = freshness(settings)
    return {
        "lag_seconds": round(lag.lag_seconds, 1),
        "newest_event_at": lag.newest_lake_event_at.isoformat() if lag.newest_lake_event_at else "none",
    }


def build_raw_events_asset(settings: Settings):
    """raw_events: an incremental sync when the run has no partition, a re-sync of its days when it has."""
    # backfill_policy is marked beta in Dagster 1.13; it is what makes a day range one run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return _raw_events_asset(settings)


def _raw_events_asset(settings: Settings):
    @asset(
        name=RAW_EVENTS,
        group_name=GROUP,
        kinds={"delta", "spark", "postgres"},
        partitions_def=daily_partitions(settings),
        backfill_policy=backfill_policy(settings),
        pool=RAW_POOL,
        check_specs=[
            AssetCheckSpec(
                name=DEFAULT_PARTITION_CHECK,
                asset=RAW_EVENTS,
                description="No events sit in the event store's default partition (their month has no "
                "partition of its own).",
            ),
            retention_spec(RAW_EVENTS),
        ],
    )
    def raw_events(context: AssetExecutionContext, spark: SparkResource):
        """Every committed event of the event store exactly once (bronze). Daily partitions by event day:
        a backfill re-syncs those days; a run without a partition adds every new event."""
        run_settings = settings_of_run(settings, spark)
        warn_if_pool_unlimited(context, RAW_POOL)
        days = run_days(context)
        started = time.monotonic()
        with reported_failures(context, "raw_events"):
            session = spark.session()
            if days is None:
                result = sync_raw_events(session, run_settings, run_id=context.run_id)
                metadata = _sync_metadata(context, run_settings, result)
            else:
                result = repair_days(session, run_settings, *days, run_id=context.run_id)
                metadata = _backfill_metadata(context, run_settings, result)
            metadata.update(_lag_metadata(run_settings))
        metadata["duration_seconds"] = round(time.monotonic() - started, 2)
        metadata["spark_application"] = session.sparkContext.applicationId
        metadata["table"] = MetadataValue.path(table_path(run_settings, RAW_EVENTS))
        yield MaterializeResult(metadata=metadata)
        rows = result.default_partition_rows
        yield AssetCheckResult(
            check_name=DEFAULT_PARTITION_CHECK,
            passed=rows == 0,
            severity=AssetCheckSeverity.WARN,
            description=(
                f"{rows} events sit in the default partition of {run_settings.source_schema}."
                f"{run_settings.source_table}: create the partitions of their months (in the reference "
                "schema: SELECT eventstore.ensure_monthly_partitions(from, to)); they are synced all the same"
                if rows
                else "the default partition holds no events"
            ),
            metadata={"default_partition_rows": rows},
        )
        yield retention_result(run_settings, RAW_EVENTS)

    return raw_events


def _warn_of_duplicates(context, event_ids: list[str]) -> None:
    if event_ids:
        context.log.warning(
            "the event store holds these event ids more than once; raw_events keeps one copy of each: "
            + ", ".join(event_ids)
        )


def _sync_metadata(context, settings: Settings, result) -> dict:
    context.log.info(
        f"raw_events: +{result.rows_added} rows, version {result.delta_version}, "
        f"cursor {result.cursor_before} -> {result.cursor_after}"
    )
    _warn_of_duplicates(context, result.duplicate_event_ids)
    # The days this run added events to show as materialized partitions too, so the partition bar
    # tells which days hold data whichever kind of run brought them.
    partitions = daily_partitions(settings)
    for day, events in result.events_per_day.items():
        if partitions.has_partition_key(day):
            context.log_event(
                AssetMaterialization(
                    asset_key=RAW_EVENTS,
                    partition=day,
                    description="events of this day added by an incremental run",
                    metadata={"events_read": events, "delta_version": result.delta_version},
                )
            )
    return {
        "run_kind": "incremental",
        "rows_added": result.rows_added,
        "rows_read": result.rows_read,
        "delta_version": result.delta_version,
        "cursor_before": result.cursor_before,
        "cursor_after": result.cursor_after,
        "pending_events": result.pending_events,
        "store_events": result.store_events,
        "days_touched": len(result.events_per_day),
        "cursor_mode": result.cursor_mode,
        "guarantee": guarantee(settings),
        "oldest_open_write": result.oldest_open_write or "none",
        "duplicate_event_ids": MetadataValue.json(result.duplicate_event_ids),
        "extract_seconds": round(result.extract_seconds, 2),
        "write_seconds": round(result.write_seconds, 2),
    }


def _backfill_metadata(context, settings: Settings, result) -> dict:
    context.log.info(
        f"raw_events {result.first_day}..{result.last_day}: read {result.rows_read} events, "
        f"{result.rows_added} were missing and are now added (version {result.delta_version})"
    )
    _warn_of_duplicates(context, result.duplicate_event_ids)
    return {
        "run_kind": "backfill",
        "days": f"{result.first_day}..{result.last_day}",
        "rows_added": result.rows_added,
        "rows_read": result.rows_read,
        "events_per_day": MetadataValue.json(result.events_per_day),
        "delta_version": result.delta_version,
        # A backfill never moves the cursor: before and after are the same.
        "cursor_before": result.cursor,
        "cursor_after": result.cursor,
        "read_below_transaction": result.horizon,
        "store_events": result.store_events,
        "guarantee": guarantee(settings),
        "duplicate_event_ids": MetadataValue.json(result.duplicate_event_ids),
    }


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


def silver_table_names(settings: Settings) -> list[str]:
    return [t for k in settings.kinds for t in (history_table_name(k), current_table_name(k))]


def silver_check_specs(settings: Settings) -> list[AssetCheckSpec]:
    drift = [
        AssetCheckSpec(
            name=DRIFT_CHECK,
            asset=history_table_name(kind),
            description="Snapshot JSON drift in this run: new fields (added as columns) and values whose "
            "type no longer fits their column (kept as raw JSON). Warns; never fails the run.",
        )
        for kind in settings.kinds
    ]
    return drift + [retention_spec(name) for name in [*silver_table_names(settings), SNAPSHOTS]]


def _silver_metadata(settings: Settings, result, seconds: float, spark_app: str) -> dict:
    return {
        "events_read": result.events_read,
        "rows_changed": result.rows_changed,
        "delta_version": result.delta_version,
        # The raw_events version the table had consumed before this run, and after it.
        "cursor_before": result.raw_version_before,
        "cursor_after": result.raw_version_after,
        "added_columns": MetadataValue.json(list(result.added_columns)),
        "type_conflicts": MetadataValue.json(list(result.conflicts)),
        "duration_seconds": round(seconds, 2),
        "spark_application": spark_app,
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


def _drift_result(run_settings: Settings, name: str, result) -> AssetCheckResult:
    conflicts = list(result.conflicts) if result else []
    added = list(result.added_columns) if result else []
    parts = [f"new snapshot fields, added as columns: {', '.join(added)}"] if added else []
    parts += [
        f"{c['rows']} snapshots hold a {c['seen_type']} at {c['path']} where the table has "
        f"{c['column_type']} (e.g. event {c['example_event_id']}); the raw JSON is kept in aggregate_snapshot"
        for c in conflicts
    ]
    return AssetCheckResult(
        asset_key=AssetKey(name),
        check_name=DRIFT_CHECK,
        passed=not parts,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(parts) if parts else "no drift: every snapshot field of this run fits its column",
        metadata={
            "added_columns": MetadataValue.json(added),
            "conflicts": MetadataValue.json(conflicts),
            "conflicts_recorded_in_table_history": len(recorded_conflicts(run_settings, name)),
        },
    )


def build_silver_asset(settings: Settings):
    """One multi-asset for all history and current tables: they are built from one read of raw_events."""

    @multi_asset(
        name="silver_tables",
        specs=silver_specs(settings),
        check_specs=silver_check_specs(settings),
        can_subset=False,
        pool=SILVER_POOL,
    )
    def silver_tables(context: AssetExecutionContext, spark: SparkResource):
        run_settings = settings_of_run(settings, spark)
        warn_if_pool_unlimited(context, SILVER_POOL)
        started = time.monotonic()
        with reported_failures(context, "history and current tables"):
            session = spark.session()
            # The snapshot is recorded last, after every table write of the run has committed.
            results, snapshot = build_and_record(session, run_settings, context.run_id, "dagster")
        seconds = time.monotonic() - started
        app = session.sparkContext.applicationId
        declared = set(silver_table_names(settings))
        for result in results:
            if result.table not in declared:
                context.log.warning(
                    f"{result.table} built for kind {result.kind!r}, which is not in "
                    "[aggregates] kinds of conf/: add it there to see it as its own asset"
                )
                continue
            yield MaterializeResult(
                asset_key=AssetKey(result.table), metadata=_silver_metadata(run_settings, result, seconds, app)
            )
        built = {r.table for r in results}
        for name in sorted(declared - built):
            yield MaterializeResult(asset_key=AssetKey(name), metadata={"rows_changed": 0, "spark_application": app})
        yield MaterializeResult(asset_key=AssetKey(SNAPSHOTS), metadata=_snapshot_metadata(run_settings, snapshot))
        by_table = {r.table: r for r in results}
        for kind in settings.kinds:
            name = history_table_name(kind)
            yield _drift_result(run_settings, name, by_table.get(name))
        for name in [*silver_table_names(settings), SNAPSHOTS]:
            yield retention_result(run_settings, name)

    return silver_tables
