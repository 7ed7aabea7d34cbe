"""Silver tables per aggregate kind, built incrementally from raw_events' change feed.

- <kind>_history: one row per event with the snapshot's fields as typed columns, who did it,
  valid_from (the event's event_at) and valid_to (the next event's event_at, NULL for the latest).
- <kind>_current: the latest state per aggregate; a late event older than the current state never
  overwrites it; a deletion event marks the row deleted (is_deleted) and history keeps every state.

Each table remembers, in its own Delta log (idempotent-write transaction lakehouse-current), the
raw_events version it has consumed, in the same commit as its rows. A run reads only the raw_events
changes after the oldest of those versions and touches only aggregates that received events.
Snapshot fields follow pipelines/drift.py: new fields become columns, type conflicts never fail a
run and are recorded in the commit's metadata (the Dagster check `snapshot_types` reports them).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pipelines.drift import ColumnPlan, Conflict, dotted, existing_columns, plan_columns
from pipelines.lake import delta_version, list_tables, transaction_version
from pipelines.settings import Settings
from pipelines.spark import commit_options, retry_on_conflict
from pipelines.tables import (
    CURRENT_APP_ID,
    CURRENT_EXTRA_COLUMNS,
    CURRENT_SUFFIX,
    EVENT_COLUMNS,
    HISTORY_EXTRA_COLUMNS,
    HISTORY_SUFFIX,
    RAW_EVENTS,
    current_table_name,
    history_table_name,
    table_path,
    table_properties,
)
from pipelines.transform import (
    aligned_to,
    current_columns,
    dedupe_events,
    drift_checks,
    drift_conflicts,
    event_rows,
    history_changes,
    history_columns,
    history_timeline,
    latest_per_aggregate,
)

log = logging.getLogger(__name__)

AGGREGATE_KEY = "t.tenant_id = s.tenant_id AND t.aggregate_id = s.aggregate_id"
EVENT_KEY = AGGREGATE_KEY + " AND t.source = s.source AND t.event_id = s.event_id"
NEWER_THAN_TARGET = (
    "s.event_at > t.event_at"
    " OR (s.event_at = t.event_at AND coalesce(s.tx_id, 0) > coalesce(t.tx_id, 0))"
    " OR (s.event_at = t.event_at AND coalesce(s.tx_id, 0) = coalesce(t.tx_id, 0) AND s.source > t.source)"
    " OR (s.event_at = t.event_at AND coalesce(s.tx_id, 0) = coalesce(t.tx_id, 0) AND s.source = t.source"
    " AND s.event_id > t.event_id)"
)
COLUMN_COMMENTS = {
    "event_at": "business time: when it happened in the product (UTC)",
    "valid_from": "business time from which this state holds (= event_at, UTC)",
    "valid_to": "business time of the aggregate's next event (UTC); NULL while this state is the latest",
    "is_deleted": "the event deletes the aggregate (name ends with a configured suffix)",
    "aggregate_snapshot": "the aggregate's full state after the event, as the raw JSON",
    "event_payload": "the event's payload, as the raw JSON",
    "tx_id": "the writing transaction in the event store (NULL in lookback mode)",
}


@dataclass(frozen=True)
class SilverResult:
    kind: str
    table: str
    events_read: int
    rows_changed: int  # history: rows inserted or valid_to moved; current: aggregates inserted or updated
    delta_version: int | None
    raw_version_before: int | None
    raw_version_after: int | None
    added_columns: tuple[str, ...] = ()
    conflicts: tuple[dict, ...] = field(default_factory=tuple)
    # The raw_events version the build brought every table up to (what a snapshot pairs them with).
    raw_events_version: int | None = None

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


def _table_schema(spark, settings: Settings, name: str):
    from delta.tables import DeltaTable

    path = table_path(settings, name)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return DeltaTable.forPath(spark, path).toDF().schema


def _with_comments(schema, plan: ColumnPlan):
    from pyspark.sql.types import StructField, StructType

    comments = {c.name: c.comment for c in plan.columns} | COLUMN_COMMENTS
    return StructType(
        [
            StructField(f.name, f.dataType, f.nullable, {"comment": comments[f.name]} if f.name in comments else {})
            for f in schema.fields
        ]
    )


def _ensure_columns(spark, settings: Settings, name: str, schema) -> None:
    """Create the table with this schema, or add the columns it lacks (new snapshot fields)."""
    from delta.tables import DeltaTable

    path = table_path(settings, name)
    if not DeltaTable.isDeltaTable(spark, path):
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
        for key, value in table_properties(settings, append_only=False).items():
            builder = builder.property(key, value)
        retry_on_conflict(builder.execute, f"creating {name}")
    present = {f.name for f in DeltaTable.forPath(spark, path).toDF().schema.fields}
    missing = [f for f in schema.fields if f.name not in present]
    if not missing:
        return
    jvm_types = spark._jvm.org.apache.spark.sql.types.DataType
    columns = ", ".join(
        f"`{f.name}` {jvm_types.fromJson(f.dataType.json()).sql()}"
        + (f" COMMENT '{_sql_text(f.metadata['comment'])}'" if f.metadata.get("comment") else "")
        for f in missing
    )
    log.info("%s: adding columns %s", name, ", ".join(f.name for f in missing))
    retry_on_conflict(lambda: spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})"), f"evolving {name}")


def _sql_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _last_commit(spark, path: str) -> tuple[int, dict]:
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics").first()
    return int(last["version"]), dict(last["operationMetrics"] or {})


def _changed(metrics: dict) -> int:
    return int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0))


def _merge_history(spark, settings: Settings, name: str, new, columns: list[str], raw_version: int, meta: dict):
    """Insert the new events and move valid_to of the earlier events of the same aggregates."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = table_path(settings, name)

    def merge() -> None:
        # Recomputed on every attempt: a retry after a conflict sees the other writer's rows.
        target = DeltaTable.forPath(spark, path)
        touched = new.select("tenant_id", "aggregate_id").distinct()
        known = target.toDF().select("tenant_id", "aggregate_id", "source", "event_id", "event_at", "tx_id", "valid_to")
        known = known.join(F.broadcast(touched), ["tenant_id", "aggregate_id"], "left_semi")
        timeline = history_timeline(known, new)
        types = {f.name: f.dataType for f in target.toDF().schema.fields}
        source = history_changes(timeline, new)
        source = aligned_to(source, {**types, "is_new": source.schema["is_new"].dataType}).localCheckpoint()
        with commit_options(spark, CURRENT_APP_ID, raw_version, meta):
            (
                target.alias("t")
                .merge(source.alias("s"), EVENT_KEY)
                .whenMatchedUpdate(condition="NOT (t.valid_to <=> s.valid_to)", set={"valid_to": "s.valid_to"})
                .whenNotMatchedInsert(condition="s.is_new", values={c: f"s.`{c}`" for c in columns})
                .execute()
            )

    retry_on_conflict(merge, f"{name} merge")
    version, metrics = _last_commit(spark, path)
    return _changed(metrics), version


def _merge_current(spark, settings: Settings, name: str, new, raw_version: int, meta: dict):
    """Upsert the latest state per aggregate; an older event never overwrites a newer state."""
    from delta.tables import DeltaTable

    path = table_path(settings, name)
    types = {f.name: f.dataType for f in DeltaTable.forPath(spark, path).toDF().schema.fields}
    source = aligned_to(latest_per_aggregate(new), types).localCheckpoint()

    def merge() -> None:
        # Out-of-order safe and idempotent, so a retry after a conflict is harmless.
        target = DeltaTable.forPath(spark, path)
        with commit_options(spark, CURRENT_APP_ID, raw_version, meta):
            (
                target.alias("t")
                .merge(source.alias("s"), AGGREGATE_KEY)
                .whenMatchedUpdateAll(condition=NEWER_THAN_TARGET)
                .whenNotMatchedInsertAll()
                .execute()
            )

    retry_on_conflict(merge, f"{name} merge")
    version, metrics = _last_commit(spark, path)
    return _changed(metrics), version


def _conflicts(typed, plan: ColumnPlan, inferred) -> list[Conflict]:
    frame = drift_conflicts(typed, plan, inferred)
    if frame is None:
        return []
    counts = frame.first()
    result = []
    for index, (path, column, column_type, seen_type) in enumerate(drift_checks(plan, inferred)):
        rows = int(counts[f"c{index}_rows"])
        if rows:
            result.append(Conflict(dotted(path), column, column_type, seen_type, rows, counts[f"c{index}_example"]))
    return result


def build_silver(spark, settings: Settings, run_id: str | None = None) -> list[SilverResult]:
    """Bring every <kind>_history and <kind>_current up to date with raw_events.

    All kinds are built from one read of the change feed: the configured ones and every kind found
    in the events (a new kind gets its tables without a code change). Every run reads from the
    oldest cursor of the existing tables, so together the runs cover every raw_events version.

    Args:
        run_id: recorded in the metadata of every commit the build makes.
    Returns:
        Per kind, one result for its history table and one for its current table.
    """
    from pyspark import StorageLevel

    raw_version = delta_version(settings, RAW_EVENTS)
    if raw_version is None:
        return []
    existing = [n for n in list_tables(settings) if n.endswith((CURRENT_SUFFIX, HISTORY_SUFFIX))]
    cursors = {n: transaction_version(settings, n, CURRENT_APP_ID) for n in existing}
    siblings_present = all(_sibling(n) in cursors for n in cursors)
    known = [c for c in cursors.values() if c is not None]
    start = min(known) + 1 if known and len(known) == len(cursors) and siblings_present else 0

    def unchanged(kind: str, name: str) -> SilverResult:
        cursor = cursors.get(name)
        return SilverResult(
            kind, name, 0, 0, delta_version(settings, name), cursor, cursor, raw_events_version=raw_version
        )

    def all_unchanged(kind: str) -> list[SilverResult]:
        return [unchanged(kind, history_table_name(kind)), unchanged(kind, current_table_name(kind))]

    if start > raw_version:
        return [r for k in settings.kinds for r in all_unchanged(k)]

    changes = dedupe_events(_read_changes(spark, settings, start, raw_version))
    changes = changes.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        found = {r[0] for r in changes.select("aggregate_kind").distinct().collect()}
        results: list[SilverResult] = []
        for kind in sorted(found | set(settings.kinds)):
            results += _build_kind(
                spark, settings, kind, changes, cursors, raw_version, kind in found, unchanged, run_id
            )
        return results
    finally:
        changes.unpersist()


def _sibling(name: str) -> str:
    if name.endswith(CURRENT_SUFFIX):
        return name[: -len(CURRENT_SUFFIX)] + HISTORY_SUFFIX
    return name[: -len(HISTORY_SUFFIX)] + CURRENT_SUFFIX


def _build_kind(spark, settings, kind, changes, cursors, raw_version, found, unchanged, run_id) -> list[SilverResult]:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    history_name, current_name = history_table_name(kind), current_table_name(kind)
    consumed = {n: cursors.get(n) for n in (history_name, current_name)}
    behind = [n for n, c in consumed.items() if c is None or c < raw_version]
    if not found or not behind:
        return [unchanged(kind, history_name), unchanged(kind, current_name)]
    lowest = min(-1 if c is None else c for c in consumed.values())
    rows = changes.where((F.col("aggregate_kind") == kind) & (F.col("_commit_version") > lowest))
    if rows.isEmpty():
        return [unchanged(kind, history_name), unchanged(kind, current_name)]

    inferred = _infer_snapshot_schema(spark, rows)
    reference = _table_schema(spark, settings, history_name) or _table_schema(spark, settings, current_name)
    actor_columns = [column for column, _ in settings.actor_fields]
    system = {*EVENT_COLUMNS, *HISTORY_EXTRA_COLUMNS, *CURRENT_EXTRA_COLUMNS, *actor_columns}
    plan = plan_columns(existing_columns(reference, system) if reference else [], inferred, system)
    typed = event_rows(rows, plan, settings.deleted_event_suffixes, settings.actor_fields, keep=("_commit_version",))
    typed = typed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        conflicts = _conflicts(typed, plan, inferred)
        for conflict in conflicts:
            log.warning(
                "%s: %d snapshots hold a %s at %s where the lake has %s (e.g. event %s); raw JSON kept",
                kind,
                conflict.rows,
                conflict.seen_type,
                conflict.path,
                conflict.column_type,
                conflict.example_event_id,
            )
        meta = {
            "run_id": run_id,
            "kind": kind,
            "raw_events_version": raw_version,
            "added_columns": [c.name for c in plan.added],
            "conflicts": [c.as_dict() for c in conflicts],
        }
        results = []
        for name, columns, merge in (
            (history_name, history_columns(actor_columns, plan), _merge_history),
            (current_name, current_columns(actor_columns, plan), None),
        ):
            cursor = consumed[name]
            if name not in behind:
                results.append(unchanged(kind, name))
                continue
            new = typed.where(F.col("_commit_version") > (-1 if cursor is None else cursor))
            shaped = new.withColumn("valid_from", F.col("event_at")).withColumn(
                "valid_to", F.lit(None).cast("timestamp")
            )
            schema = _with_comments(shaped.select(*columns).schema, plan)
            existed = _table_schema(spark, settings, name) is not None
            _ensure_columns(spark, settings, name, schema)
            events_read = new.count()
            if merge is not None:
                changed, version = merge(spark, settings, name, new.drop("_commit_version"), columns, raw_version, meta)
            else:
                changed, version = _merge_current(spark, settings, name, new.drop("_commit_version"), raw_version, meta)
            added = tuple(c.name for c in plan.added) if existed else ()
            log.info("%s: %d events, %d rows changed, version %s", name, events_read, changed, version)
            results.append(
                SilverResult(
                    kind,
                    name,
                    events_read,
                    changed,
                    version,
                    cursor,
                    raw_version,
                    added,
                    tuple(c.as_dict() for c in conflicts),
                    raw_version,
                )
            )
        return results
    finally:
        typed.unpersist()


def recorded_conflicts(settings: Settings, table: str) -> list[dict]:
    """Type conflicts recorded in a silver table's commits (newest first), without a JVM."""
    from pipelines.errors import TableNotFoundError
    from pipelines.lake import commits

    try:
        history = commits(settings, table)
    except TableNotFoundError:
        return []
    found = []
    for commit in history:
        for conflict in (commit.user_metadata or {}).get("conflicts") or []:
            found.append({**conflict, "version": commit.version, "committed_at": commit.timestamp.isoformat()})
    return found
