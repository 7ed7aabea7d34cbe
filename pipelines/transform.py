"""Pure transforms: DataFrames and plain values in, a DataFrame out. No I/O, no session, no config."""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StructType

from pipelines.tables import snake_case

# Columns every current-state table has; snapshot fields that collide get a snapshot_ prefix.
CURRENT_SYSTEM_COLUMNS = (
    "tenant_id",
    "aggregate_id",
    "aggregate_kind",
    "event_id",
    "event_name",
    "event_at",
    "tx_id",
    "is_deleted",
    "aggregate_snapshot",
)


def event_order() -> list[Column]:
    """Deterministic order of events of one aggregate, newest first.

    event_at first (business time); equal event_at falls back to the writing transaction, then
    to event_id, so two runs always pick the same row.
    """
    return [F.col("event_at").desc(), F.col("tx_id").desc(), F.col("event_id").desc()]


def latest_per_aggregate(events: DataFrame) -> DataFrame:
    """One row per (tenant_id, aggregate_id): its newest event by event_order()."""
    window = Window.partitionBy("tenant_id", "aggregate_id").orderBy(*event_order())
    return events.withColumn("_rank", F.row_number().over(window)).where(F.col("_rank") == 1).drop("_rank")


def with_deleted_flag(events: DataFrame, deleted_suffixes: Iterable[str]) -> DataFrame:
    """is_deleted: the event's name ends with one of the configured suffixes (e.g. Deleted)."""
    condition = F.lit(False)
    for suffix in deleted_suffixes:
        condition = condition | F.col("event_name").endswith(suffix)
    return events.withColumn("is_deleted", condition)


def flatten_fields(schema: StructType, prefix: str = "") -> list[tuple[list[str], str, DataType]]:
    """Leaf fields of a struct schema as (path, snake_case column name, type).

    Nested objects become parent_child columns; arrays stay arrays.
    """
    result: list[tuple[list[str], str, DataType]] = []
    for field in schema.fields:
        name = f"{prefix}_{snake_case(field.name)}" if prefix else snake_case(field.name)
        if isinstance(field.dataType, StructType) and field.dataType.fields:
            for path, column, data_type in flatten_fields(field.dataType, name):
                result.append(([field.name, *path], column, data_type))
        else:
            result.append(([field.name], name, field.dataType))
    return result


def with_snapshot_columns(events: DataFrame, snapshot_schema: StructType) -> DataFrame:
    """The snapshot's fields as typed columns beside the raw JSON (kept as aggregate_snapshot)."""
    parsed = events.withColumn("_snapshot", F.from_json("aggregate_snapshot", snapshot_schema))
    columns = [F.col(c) for c in events.columns]
    taken = set(events.columns) | set(CURRENT_SYSTEM_COLUMNS)
    for path, column, _ in flatten_fields(snapshot_schema):
        target = column if column not in taken else f"snapshot_{column}"
        taken.add(target)
        expr = F.col("_snapshot")
        for part in path:
            expr = expr.getField(part)
        columns.append(expr.alias(target))
    return parsed.select(*columns)


def current_state_rows(events: DataFrame, snapshot_schema: StructType, deleted_suffixes: Iterable[str]) -> DataFrame:
    """Events of one kind -> the latest state per aggregate, with typed snapshot columns."""
    base = events.select(*(c for c in CURRENT_SYSTEM_COLUMNS if c != "is_deleted"))
    return (
        base.transform(latest_per_aggregate)
        .transform(lambda df: with_deleted_flag(df, deleted_suffixes))
        .select(*CURRENT_SYSTEM_COLUMNS)
        .transform(lambda df: with_snapshot_columns(df, snapshot_schema))
    )


def aligned_to(frame: DataFrame, target_schema: StructType) -> DataFrame:
    """The frame shaped for a MERGE into a table with target_schema.

    Target columns the frame lacks become explicit NULLs (a field that disappeared from newer
    snapshots must become NULL in the current state, not keep an older value). A column whose
    inferred type differs from the table's is cast to the table's type; the raw JSON in
    aggregate_snapshot keeps the original value either way.
    """
    target_types = {field.name: field.dataType for field in target_schema.fields}
    columns = []
    for name in frame.columns:
        data_type = target_types.get(name)
        if data_type is not None and frame.schema[name].dataType != data_type:
            columns.append(F.col(name).cast(data_type).alias(name))
        else:
            columns.append(F.col(name))
    columns += [
        F.lit(None).cast(data_type).alias(name) for name, data_type in target_types.items() if name not in frame.columns
    ]
    return frame.select(*columns)
