"""Pure transforms: DataFrames and plain values in, a DataFrame out. No I/O, no session, no config."""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StringType, StructType

from pipelines.drift import ColumnPlan, json_path, leaf_types, type_name
from pipelines.tables import CURRENT_EXTRA_COLUMNS, EVENT_COLUMNS, HISTORY_EXTRA_COLUMNS


def event_order() -> list[Column]:
    """Deterministic order of the events of one aggregate, oldest first.

    Business time (event_at) first; equal event_at falls back to the writing transaction (a
    missing one counts as 0), then to source and event_id, so every run picks the same order.
    """
    return [
        F.col("event_at").asc(),
        F.coalesce(F.col("tx_id"), F.lit(0)).asc(),
        F.col("source").asc(),
        F.col("event_id").asc(),
    ]


def dedupe_events(changes: DataFrame) -> DataFrame:
    """One row per (source, event_id): the copy from the newest _commit_version.

    raw_events never holds an event twice, but its change feed can insert one twice: a row removed
    by hand and put back by a repair shows up as two inserts in one window of versions.
    """
    newest = Window.partitionBy("source", "event_id").orderBy(F.col("_commit_version").desc())
    return changes.withColumn("_copy", F.row_number().over(newest)).where(F.col("_copy") == 1).drop("_copy")


def latest_per_aggregate(events: DataFrame) -> DataFrame:
    """One row per (tenant_id, aggregate_id): its last event by event_order()."""
    newest_first = [c.desc() for c in (F.col("event_at"), F.coalesce("tx_id", F.lit(0)), F.col("source"))]
    window = Window.partitionBy("tenant_id", "aggregate_id").orderBy(*newest_first, F.col("event_id").desc())
    return events.withColumn("_rank", F.row_number().over(window)).where(F.col("_rank") == 1).drop("_rank")


def with_valid_to(events: DataFrame) -> DataFrame:
    """valid_to: the event_at of the aggregate's next event by event_order() (NULL for the last)."""
    window = Window.partitionBy("tenant_id", "aggregate_id").orderBy(*event_order())
    return events.withColumn("valid_to", F.lead("event_at").over(window))


def with_deleted_flag(events: DataFrame, deleted_suffixes: Iterable[str]) -> DataFrame:
    """is_deleted: the event's name ends with one of the configured suffixes (e.g. Deleted)."""
    condition = F.lit(False)
    for suffix in deleted_suffixes:
        condition = condition | F.col("event_name").endswith(suffix)
    return events.withColumn("is_deleted", condition)


def with_actor(events: DataFrame, actor_fields: Iterable[tuple[str, str]]) -> DataFrame:
    """Who did it: one text column per (column, dotted path in event_payload)."""
    for column, path in actor_fields:
        events = events.withColumn(column, F.get_json_object("event_payload", json_path(tuple(path.split(".")))))
    return events


def with_snapshot_columns(events: DataFrame, plan: ColumnPlan) -> DataFrame:
    """The snapshot's fields as typed columns (each at its own path and type) beside the raw JSON."""
    parsed = F.from_json("aggregate_snapshot", plan.parse_schema())
    columns = [F.col(c) for c in events.columns]
    for column in plan.columns:
        expr = parsed
        for key in column.path:
            expr = expr.getField(key)
        columns.append(expr.alias(column.name))
    return events.select(*columns)


def drift_conflicts(typed: DataFrame, plan: ColumnPlan, inferred: StructType) -> DataFrame | None:
    """Counts of rows whose snapshot value does not fit the plan, one row; None when none can exist.

    Only paths where the new rows' inferred type differs from the plan are checked: where they agree
    every value parsed. A leaf conflicts where the JSON holds a value and the typed column is NULL;
    an object path conflicts where the JSON holds a plain value instead of an object.
    Columns per check: c<i>_rows and c<i>_example (an event_id), in the order of drift_checks().
    """
    checks = drift_checks(plan, inferred)
    if not checks:
        return None
    aggregates = []
    for index, (path, column, _, _) in enumerate(checks):
        raw = F.get_json_object("aggregate_snapshot", json_path(path))
        if column is None:
            bad = raw.isNotNull() & ~F.ltrim(raw).startswith("{")
        else:
            bad = raw.isNotNull() & F.col(column).isNull()
        aggregates.append(F.count(F.when(bad, 1)).alias(f"c{index}_rows"))
        aggregates.append(F.min(F.when(bad, F.col("event_id"))).alias(f"c{index}_example"))
    return typed.agg(*aggregates)


def drift_checks(plan: ColumnPlan, inferred: StructType) -> list[tuple[tuple[str, ...], str | None, str, str]]:
    """(path, column or None for an object, the lake's type, the type seen in the new rows)."""
    seen = leaf_types(inferred)
    checks: list[tuple[tuple[str, ...], str | None, str, str]] = []
    for column in plan.columns:
        new_type = seen.get(column.path)
        # A text column holds any JSON value as text (objects as JSON): nothing can be lost there.
        if new_type is not None and new_type != column.data_type and not isinstance(column.data_type, StringType):
            checks.append((column.path, column.name, type_name(column.data_type), type_name(new_type)))
    for path in sorted(plan.struct_paths()):
        new_type = seen.get(path)
        if new_type is not None and not isinstance(new_type, StructType):
            checks.append((path, None, "object", type_name(new_type)))
    return checks


def event_rows(
    events: DataFrame,
    plan: ColumnPlan,
    deleted_suffixes: Iterable[str],
    actor_fields: Iterable[tuple[str, str]],
    keep: Iterable[str] = (),
) -> DataFrame:
    """raw_events rows of one kind -> one typed row per event: event columns, actor, flags, snapshot.

    Args:
        keep: further columns of `events` to carry along (e.g. the change feed's _commit_version).
    """
    actor_fields = tuple(actor_fields)
    base = events.select(*EVENT_COLUMNS, "event_payload", "aggregate_snapshot", *keep)
    return (
        base.transform(lambda df: with_deleted_flag(df, deleted_suffixes))
        .transform(lambda df: with_actor(df, actor_fields))
        .transform(lambda df: with_snapshot_columns(df, plan))
    )


def history_columns(actor_columns: Iterable[str], plan: ColumnPlan) -> list[str]:
    return [*EVENT_COLUMNS, *actor_columns, *HISTORY_EXTRA_COLUMNS, *(c.name for c in plan.columns)]


def current_columns(actor_columns: Iterable[str], plan: ColumnPlan) -> list[str]:
    return [*EVENT_COLUMNS, *actor_columns, *CURRENT_EXTRA_COLUMNS, *(c.name for c in plan.columns)]


def history_timeline(existing: DataFrame, new: DataFrame) -> DataFrame:
    """valid_to for every event of the aggregates that received new events.

    Args:
        existing: the history rows of those aggregates (keys, event_at, tx_id, valid_to).
        new: the new events (keys, event_at, tx_id).
    Returns:
        One row per event: keys, valid_to, old_valid_to (NULL for new events) and is_new. An event
        that is already in the history counts as existing, so re-running changes nothing.
    """
    keys = ["tenant_id", "aggregate_id", "source", "event_id"]
    old = existing.select(
        *keys, "event_at", "tx_id", F.col("valid_to").alias("old_valid_to"), F.lit(False).alias("is_new")
    )
    fresh = new.select(
        *keys, "event_at", "tx_id", F.lit(None).cast("timestamp").alias("old_valid_to"), F.lit(True).alias("is_new")
    )
    first_copy = Window.partitionBy(*keys).orderBy(F.col("is_new").asc())
    timeline = (
        old.unionByName(fresh)
        .withColumn("_copy", F.row_number().over(first_copy))
        .where(F.col("_copy") == 1)
        .drop("_copy")
    )
    return with_valid_to(timeline).select(*keys, "valid_to", "old_valid_to", "is_new")


def history_changes(timeline: DataFrame, new_rows: DataFrame) -> DataFrame:
    """What a MERGE into <kind>_history must do: new events in full, and moved valid_to of old ones."""
    keys = ["tenant_id", "aggregate_id", "source", "event_id"]
    changed = timeline.where(F.col("is_new") | ~F.col("valid_to").eqNullSafe(F.col("old_valid_to")))
    full = new_rows.withColumn("valid_from", F.col("event_at")).drop("valid_to")
    return changed.select(*keys, "valid_to", "is_new").join(full, keys, "left")


def aligned_to(frame: DataFrame, target_types: dict[str, DataType]) -> DataFrame:
    """The frame with exactly the target's columns, in its order and types (missing ones NULL).

    A column the frame lacks becomes an explicit NULL (a field that disappeared from newer snapshots
    must be NULL in the current state, not keep an older value).
    """
    columns = []
    for name, data_type in target_types.items():
        if name not in frame.columns:
            columns.append(F.lit(None).cast(data_type).alias(name))
        elif frame.schema[name].dataType != data_type:
            columns.append(F.col(name).cast(data_type).alias(name))
        else:
            # A fresh alias: the frame may derive from the MERGE target itself, and shared column
            # ids would make the merge condition ambiguous.
            columns.append(F.col(name).alias(name))
    return frame.select(*columns)
