"""Current-state tables (<kind>_current), built incrementally from raw_events' change feed.

Each current table remembers, in its own Delta log (idempotent-write transaction
lakehouse-current), the raw_events version it has consumed. A run reads only the raw_events
changes after the oldest of those versions, so it touches only aggregates that received events.
The MERGE is out-of-order safe: an older event that arrives late never overwrites newer state.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from pipelines.lake import delta_version, list_tables, transaction_version
from pipelines.settings import Settings
from pipelines.spark import commit_options, retry_on_conflict
from pipelines.tables import (
    CURRENT_APP_ID,
    CURRENT_SUFFIX,
    RAW_EVENTS,
    current_table_name,
    table_path,
    table_properties,
)
from pipelines.transform import aligned_to, current_state_rows

log = logging.getLogger(__name__)

NEWER_THAN_TARGET = (
    "s.event_at > t.event_at"
    " OR (s.event_at = t.event_at AND coalesce(s.tx_id, 0) > coalesce(t.tx_id, 0))"
    " OR (s.event_at = t.event_at AND coalesce(s.tx_id, 0) = coalesce(t.tx_id, 0) AND s.event_id > t.event_id)"
)


@dataclass(frozen=True)
class CurrentResult:
    kind: str
    table: str
    events_read: int
    aggregates_changed: int
    delta_version: int | None
    raw_version_before: int | None
    raw_version_after: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def _read_changes(spark, settings: Settings, start: int, end: int):
    """Rows inserted into raw_events in versions [start, end], with their _commit_version."""
    return (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", start)
        .option("endingVersion", end)
        .load(table_path(settings, RAW_EVENTS))
        .where("_change_type = 'insert'")
    )


def _infer_snapshot_schema(spark, rows):
    from pyspark.sql.types import StructType

    texts = rows.select("aggregate_snapshot").rdd.map(lambda r: r[0])
    schema = spark.read.json(texts).schema
    return StructType([f for f in schema.fields if f.name != "_corrupt_record"])


def _ensure_table(spark, settings: Settings, path: str, schema) -> None:
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    for key, value in table_properties(settings, append_only=False).items():
        builder = builder.property(key, value)
    retry_on_conflict(builder.execute, f"creating {path}")


def _merge_with_cursor(spark, settings: Settings, path: str, source, raw_version: int, kind: str):
    """MERGE source into the table; the same commit records raw_version as this table's cursor.

    Returns (aggregates inserted or updated, the table's new version).
    """
    from delta.tables import DeltaTable

    source = aligned_to(source, DeltaTable.forPath(spark, path).toDF().schema).localCheckpoint()

    def merge() -> None:
        # Out-of-order safe and idempotent, so a retry after a conflict is harmless.
        target = DeltaTable.forPath(spark, path)
        with commit_options(spark, CURRENT_APP_ID, raw_version, {"kind": kind, "raw_events_version": raw_version}):
            (
                target.alias("t")
                .merge(source.alias("s"), "t.tenant_id = s.tenant_id AND t.aggregate_id = s.aggregate_id")
                .whenMatchedUpdateAll(condition=NEWER_THAN_TARGET)
                .whenNotMatchedInsertAll()
                .execute()
            )

    retry_on_conflict(merge, f"{kind} current-state merge")
    target = DeltaTable.forPath(spark, path)
    last = target.history(1).select("version", "operationMetrics").first()
    metrics = last["operationMetrics"] or {}
    changed = int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0))
    return changed, int(last["version"])


def build_current(spark, settings: Settings) -> list[CurrentResult]:
    """Bring every <kind>_current up to date with raw_events.

    All kinds are built together from one read of the change feed: the configured ones and every
    kind found in the events (a new kind gets its table without a code change). Since every run
    reads from the oldest cursor of the existing tables, the runs together cover every raw_events
    version, so a kind that appears later is always found.

    Returns:
        One result per kind: configured kinds and kinds found in the new events.
    """
    from pyspark import StorageLevel

    raw_version = delta_version(settings, RAW_EVENTS)
    if raw_version is None:
        return []
    existing = [n for n in list_tables(settings) if n.endswith(CURRENT_SUFFIX)]
    cursors = {n: transaction_version(settings, n, CURRENT_APP_ID) for n in existing}
    known = [c for c in cursors.values() if c is not None]
    start = min(known) + 1 if known and len(known) == len(cursors) else 0

    def unchanged(kind: str) -> CurrentResult:
        name = current_table_name(kind)
        cursor = cursors.get(name)
        return CurrentResult(kind, name, 0, 0, delta_version(settings, name), cursor, cursor)

    if start > raw_version:
        return [unchanged(k) for k in settings.kinds]

    changes = _read_changes(spark, settings, start, raw_version).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        found = {r[0] for r in changes.select("aggregate_kind").distinct().collect()}
        results = []
        for kind in sorted(found | set(settings.kinds)):
            name = current_table_name(kind)
            path = table_path(settings, name)
            cursor = cursors.get(name)
            if kind not in found or (cursor is not None and cursor >= raw_version):
                results.append(unchanged(kind))
                continue
            rows = changes.where(changes.aggregate_kind == kind)
            if cursor is not None:
                rows = rows.where(rows._commit_version > cursor)
            events_read = rows.count()
            if events_read == 0:
                results.append(unchanged(kind))
                continue
            schema = _infer_snapshot_schema(spark, rows)
            current = current_state_rows(rows, schema, settings.deleted_event_suffixes)
            _ensure_table(spark, settings, path, current.schema)
            changed, version = _merge_with_cursor(spark, settings, path, current, raw_version, kind)
            log.info("%s: %d events, %d aggregates changed, version %s", name, events_read, changed, version)
            results.append(CurrentResult(kind, name, events_read, changed, version, cursor, raw_version))
        return results
    finally:
        changes.unpersist()
