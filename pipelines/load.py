"""Writing raw_events (bronze): every committed event exactly once, never rewritten.

Every write is an insert-only MERGE on (source, event_id) with the month partitions of the rows in
the condition, so only touched partitions are read and running anything twice changes nothing.

Incremental runs (transaction mode) read the transactions between the cursor and the horizon, and
the cursor advances in the same atomic Delta commit that adds the rows: the commit carries Delta's
idempotent-write transaction (appId = lakehouse-sync:<source>, version = the cursor) and the same
facts, readable by a person, in its userMetadata. The cursor is read back from the Delta log; no
side file can disagree with the data. A crash before the commit leaves no trace; a crash after it
leaves the cursor with the rows. Below the cursor every row is in the lake already, so an
incremental MERGE looks only at lake rows at or above it (files whose tx_id statistics lie below
are skipped): normally none, unless a backfill re-synced days ahead of the cursor.

A backfill (re-sync of a day range, the repair path) reads every committed event of those days,
whatever the cursor, and inserts the ones the lake lacks; it never moves the cursor. Because both
writers are MERGEs reading the partitions they write, Delta detects a concurrent commit into the
same months and the loser retries against the new state: neither can duplicate the other's rows.

An event id the store holds twice (its key includes event_at) is written once: the first copy the
pipeline reads wins, the earliest event_at within one read; the run reports the ids.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pipelines import extract
from pipelines.errors import ConcurrentSyncError, ConfigError
from pipelines.lake import check_warehouse, commit_of_run, delta_version, transaction_version
from pipelines.settings import Settings
from pipelines.spark import commit_options, is_conflict, retry_on_conflict
from pipelines.tables import RAW_EVENTS, sync_app_id, table_path, table_properties

log = logging.getLogger(__name__)

RAW_EVENTS_DDL = """
    source             STRING    NOT NULL,
    event_id           STRING    NOT NULL,
    tenant_id          STRING    NOT NULL,
    aggregate_kind     STRING    NOT NULL,
    aggregate_id       STRING    NOT NULL,
    event_name         STRING    NOT NULL,
    event_payload      STRING    NOT NULL,
    aggregate_snapshot STRING    NOT NULL,
    event_at           TIMESTAMP NOT NULL,
    tx_id              BIGINT,
    event_date         DATE      NOT NULL,
    event_month        STRING    NOT NULL,
    run_id             STRING    NOT NULL
"""
REPORTED_IDS = 20


@dataclass(frozen=True)
class SyncResult:
    table: str
    cursor_mode: str
    rows_read: int
    rows_added: int
    delta_version: int | None
    cursor_before: int
    cursor_after: int
    pending_events: int
    store_events: int
    oldest_open_write: str | None  # ISO time the oldest running write transaction began
    extract_seconds: float
    write_seconds: float
    run_id: str
    duplicate_event_ids: list[str] = field(default_factory=list)
    default_partition_rows: int = 0
    events_per_day: dict[str, int] = field(default_factory=dict)  # events read, per day in the zone

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RepairResult:
    first_day: str
    last_day: str
    rows_read: int
    rows_added: int
    delta_version: int | None
    run_id: str
    duplicate_event_ids: list[str] = field(default_factory=list)
    cursor: int = 0  # the incremental cursor, which a repair never moves
    horizon: int = 0  # every transaction below it was read (transaction mode)
    events_per_day: dict[str, int] = field(default_factory=dict)  # events read, per day in the zone
    store_events: int = 0
    default_partition_rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_raw_events(spark, settings: Settings) -> str:
    """Create raw_events (version 0, empty) if it does not exist; returns its path."""
    path = table_path(settings, RAW_EVENTS)
    props = ", ".join(f"'{k}' = '{v}'" for k, v in table_properties(settings, append_only=True).items())
    create = (
        f"CREATE TABLE IF NOT EXISTS delta.`{path}` ({RAW_EVENTS_DDL}) USING delta"
        f" PARTITIONED BY (event_month) TBLPROPERTIES ({props})"
    )
    # Two first runs may race to create it; the loser retries and finds the table.
    retry_on_conflict(lambda: spark.sql(create), "creating raw_events")
    return path


def read_cursor(settings: Settings) -> int:
    """The sync cursor from the Delta log of raw_events (0 before the first sync).

    Transaction mode: every transaction id below it is in the lake. Lookback mode: the newest
    event_at in the lake, in microseconds since the epoch.
    """
    return transaction_version(settings, RAW_EVENTS, sync_app_id(settings)) or 0


def _staged_frame(spark, settings: Settings, staging: Path, run_id: str):
    from pyspark.sql import functions as F

    zone = settings.timezone
    return (
        spark.read.schema(_staged_spark_schema())
        .parquet(str(staging))
        .select(
            F.lit(settings.source_name).alias("source"),
            "event_id",
            "tenant_id",
            "aggregate_kind",
            "aggregate_id",
            "event_name",
            "event_payload",
            "aggregate_snapshot",
            "event_at",
            "tx_id",
            F.to_date(F.from_utc_timestamp("event_at", zone)).alias("event_date"),
            F.date_format(F.from_utc_timestamp("event_at", zone), "yyyy-MM").alias("event_month"),
            F.lit(run_id).alias("run_id"),
        )
    )


def _without_duplicates(spark, settings: Settings, frame, staging: Path):
    """Drop every copy of an event id that must not be written; returns (frame, duplicated ids).

    Only ids the store holds more than once are looked at, so a run without duplicates pays one
    indexed query. For those ids: if the lake holds a copy already, none is written; otherwise
    the copy with the earliest event_at in this read is.
    """
    import pyarrow.parquet as pq
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ids = pq.read_table(staging, columns=["event_id"]).column("event_id").to_pylist()
    duplicated = extract.duplicated_event_ids(settings, ids)
    if not duplicated:
        return frame, []
    dup_ids = sorted(duplicated)
    in_lake = {
        r[0]
        for r in spark.read.format("delta")
        .load(table_path(settings, RAW_EVENTS))
        .where(F.col("event_id").isin(dup_ids))
        .select("event_id")
        .distinct()
        .collect()
    }
    log.warning(
        "the event store holds %d event id(s) more than once (first: %s); one copy of each is kept",
        len(dup_ids),
        ", ".join(dup_ids[:5]),
    )
    first = Window.partitionBy("event_id").orderBy(F.col("event_at").asc(), F.col("tx_id").asc_nulls_last())
    kept = (
        frame.where(~F.col("event_id").isin(sorted(in_lake)) if in_lake else F.lit(True))
        .withColumn("_copy", F.row_number().over(first))
        .where("_copy = 1")
        .drop("_copy")
    )
    return kept, dup_ids


def _merge_insert_only(
    spark,
    settings: Settings,
    frame,
    app_id: str | None,
    cursor: int | None,
    metadata: dict,
    ahead_of: int | None = None,
):
    """MERGE frame into raw_events, inserting only event ids the touched partitions lack.

    The months present in frame are named in the condition, so only those partitions are read.
    With ahead_of (an incremental run's cursor before it), only lake rows whose tx_id is at or
    above it are compared: every row below came from earlier incremental runs of lower
    transactions, so none of them can repeat a row of this range. Conflicts with a concurrent
    writer are retried (the merge is idempotent; the staged frame reads the same files again).
    Returns (rows inserted, new version or None when nothing was committed).
    """
    from delta.tables import DeltaTable

    months = sorted(r[0] for r in frame.select("event_month").distinct().collect())
    if not months:
        if app_id is None:
            return 0, None
        # Nothing to insert (every row was a copy the lake holds), yet the cursor must advance:
        # an empty append commits it.
        _commit_cursor(spark, settings, frame, app_id, cursor, metadata)
        commit = commit_of_run(settings, RAW_EVENTS, metadata["run_id"])
        return (0, commit.version) if commit else (0, None)
    month_list = ", ".join(f"'{m}'" for m in months)  # yyyy-MM strings made by Spark
    target = [f"t.event_month IN ({month_list})"]
    if ahead_of is not None:
        target.append(f"t.tx_id >= {int(ahead_of)}")
    condition = " AND ".join([*target, "t.source = s.source", "t.event_id = s.event_id"])
    path = table_path(settings, RAW_EVENTS)

    def merge() -> None:
        target = DeltaTable.forPath(spark, path)
        with commit_options(spark, app_id, cursor, metadata):
            target.alias("t").merge(frame.alias("s"), condition).whenNotMatchedInsertAll().execute()

    retry_on_conflict(merge, "raw_events merge")
    commit = commit_of_run(settings, RAW_EVENTS, metadata["run_id"])
    return (commit.rows_added or 0, commit.version) if commit else (0, None)


def _commit_cursor(spark, settings: Settings, frame, app_id: str, cursor: int, metadata: dict) -> None:
    """Append frame (empty) with the cursor as the commit's idempotent-write transaction."""
    import json

    try:
        (
            frame.write.format("delta")
            .mode("append")
            .option("txnAppId", app_id)
            .option("txnVersion", cursor)
            .option("userMetadata", json.dumps(metadata, separators=(",", ":")))
            .save(table_path(settings, RAW_EVENTS))
        )
    except Exception as exc:
        if is_conflict(exc):
            raise ConcurrentSyncError(
                "another sync committed raw_events at the same time; nothing was written by this run"
            ) from None
        raise


def sync_raw_events(spark, settings: Settings, run_id: str | None = None) -> SyncResult:
    """Add every committed event not yet in raw_events, in one atomic Delta commit.

    Args:
        spark: the process's SparkSession (pipelines.spark.get_spark).
        settings: effective settings.
        run_id: recorded on every row and in the commit; default a new UUID.
    Returns:
        What the run did: rows added, the Delta version, the cursor before and after, the lag.
    Raises:
        SourceError: the event store is unreachable or hides rows (row-level security).
        ConcurrentSyncError: another sync committed first; this one wrote nothing.
    """
    run_id = run_id or str(uuid.uuid4())
    lookback = settings.cursor_mode == "lookback"
    check_warehouse(settings)
    ensure_raw_events(spark, settings)
    cursor_before = read_cursor(settings)
    state = extract.read_source_state(settings)
    oldest = state.oldest_open_write.isoformat() if state.oldest_open_write else None
    if state.default_partition_rows:
        log.warning(
            "%d events sit in the default partition of %s.%s: create the monthly partitions ahead "
            "(eventstore.ensure_monthly_partitions)",
            state.default_partition_rows,
            settings.source_schema,
            settings.source_table,
        )
    if lookback:
        since = extract._from_micros(cursor_before) - timedelta(seconds=settings.lookback_seconds)
        rng = extract.Range(from_at=since if cursor_before else None)
    else:
        rng = extract.Range(lo_tx=cursor_before, hi_tx=state.horizon)

    def result(
        rows_read: int, added: int, version, cursor_after: int, timings=(0.0, 0.0), dups=(), days=None
    ) -> SyncResult:
        return SyncResult(
            RAW_EVENTS,
            settings.cursor_mode,
            rows_read,
            added,
            version if version is not None else delta_version(settings, RAW_EVENTS),
            cursor_before,
            cursor_after,
            extract.count_pending(settings, cursor_after),
            state.committed_events,
            oldest,
            timings[0],
            timings[1],
            run_id,
            list(dups)[:REPORTED_IDS],
            state.default_partition_rows,
            days or {},
        )

    if not lookback and state.horizon <= cursor_before:
        return result(0, 0, None, cursor_before)

    staging = Path(tempfile.mkdtemp(prefix=f"lakehouse-stage-{run_id[:8]}-"))
    try:
        log.info("extracting events of %s", _describe(rng))
        staged = extract.stage_events(settings, rng, staging)
        log.info("extracted %d events (%s) in %.1fs", staged.rows, _describe(rng), staged.seconds)
        if staged.rows == 0:
            # The cursor stays: an empty range is re-read next time through the index, at no cost.
            return result(0, 0, None, cursor_before, (staged.seconds, 0.0))
        write_started = time.monotonic()
        days = events_per_day(staging, settings.timezone)
        frame = _staged_frame(spark, settings, staging, run_id)
        frame, dups = _without_duplicates(spark, settings, frame, staging)
        if lookback:
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            newest = pc.max(pq.read_table(staging, columns=["event_at"]).column("event_at")).as_py()
            cursor_after = max(cursor_before, extract.to_micros(newest))
        else:
            cursor_after = state.horizon
        # Another run may have committed since this one read the cursor: then this one must not
        # write (its range overlaps). Delta's own conflict check covers the rest of the window,
        # since the write below reads the same application transaction id.
        if read_cursor(settings) != cursor_before:
            raise ConcurrentSyncError(
                "another sync advanced the raw_events cursor during this run; nothing was written"
            )
        metadata = {
            "run_id": run_id,
            "source": settings.source_name,
            "cursor_mode": settings.cursor_mode,
            "cursor_before": cursor_before,
            "cursor_after": cursor_after,
            "rows_read": staged.rows,
        }
        if lookback:
            metadata["guarantee"] = guarantee(settings)
            # Delta skips a write whose transaction version is not above the recorded one, so an
            # unchanged cursor is simply not restated (the log keeps the previous one).
            advanced = cursor_after > cursor_before
            added, version = _merge_insert_only(
                spark,
                settings,
                frame,
                sync_app_id(settings) if advanced else None,
                cursor_after if advanced else None,
                metadata,
            )
            if version is None:
                if read_cursor(settings) != cursor_before:
                    raise ConcurrentSyncError(
                        "another sync committed raw_events first; nothing was written by this run"
                    )
                cursor_after = cursor_before  # nothing new: Delta made no commit, the cursor stays
        else:
            # Delta skips the write when another sync already recorded a cursor at or above this
            # one (no commit of this run then); a concurrent commit into the same months makes
            # this MERGE retry against the new state instead of inserting what the other added.
            added, version = _merge_insert_only(
                spark, settings, frame, sync_app_id(settings), cursor_after, metadata, ahead_of=cursor_before
            )
            if version is None:
                raise ConcurrentSyncError("another sync committed raw_events first; nothing was written by this run")
        write_seconds = time.monotonic() - write_started
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("raw_events: %d rows added in version %s, cursor %d -> %d", added, version, cursor_before, cursor_after)
    return result(staged.rows, added, version, cursor_after, (staged.seconds, write_seconds), dups, days)


def guarantee(settings: Settings) -> str:
    """What a sync in the configured cursor mode promises, in words (run and commit metadata)."""
    if settings.cursor_mode == "lookback":
        return (
            f"lookback {settings.lookback_seconds} s: an event committed more than that after its event_at "
            "is missed until a repair of its day"
        )
    return "exactly once: transaction-id cursor below the oldest running transaction"


def _describe(rng: extract.Range) -> str:
    parts = []
    if rng.lo_tx is not None or rng.hi_tx is not None:
        parts.append(f"transactions [{rng.lo_tx}, {rng.hi_tx})")
    if rng.from_at is not None or rng.to_at is not None:
        parts.append(f"event_at [{rng.from_at or '-inf'}, {rng.to_at or '+inf'})")
    return ", ".join(parts) or "all events"


def day_bounds(settings: Settings, first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """[start of first_day, start of the day after last_day) in the configured zone, as UTC."""
    if last_day < first_day:
        raise ConfigError(f"the day range ends ({last_day}) before it starts ({first_day})")
    zone = settings.zone
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=zone)
    end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def repair_days(spark, settings: Settings, first_day: date, last_day: date, run_id: str | None = None) -> RepairResult:
    """Re-sync a range of days (configured zone): insert every committed event of those days the lake lacks.

    This is what a backfill does. It reads every transaction below the horizon (all of them have
    finished), whatever the cursor, so it also fills days that incremental runs have not reached
    yet (a first load day by day, say); the next incremental run finds those rows and adds them
    only once. Idempotent: a second repair of the same range adds nothing. The cursor does not move.
    """
    run_id = run_id or str(uuid.uuid4())
    started = time.monotonic()
    check_warehouse(settings)
    ensure_raw_events(spark, settings)
    start, end = day_bounds(settings, first_day, last_day)
    # Fails loudly when row-level security would hide rows, as a sync does.
    state = extract.read_source_state(settings)
    cursor = read_cursor(settings)
    lookback = settings.cursor_mode == "lookback"
    rng = extract.Range(hi_tx=None if lookback else state.horizon, from_at=start, to_at=end)

    def result(rows_read: int = 0, added: int = 0, version=None, days=None, dups=()) -> RepairResult:
        return RepairResult(
            str(first_day),
            str(last_day),
            rows_read,
            added,
            version if version is not None else delta_version(settings, RAW_EVENTS),
            run_id,
            list(dups)[:REPORTED_IDS],
            cursor=cursor,
            horizon=state.horizon,
            events_per_day=days or {},
            store_events=state.committed_events,
            default_partition_rows=state.default_partition_rows,
            seconds=time.monotonic() - started,
        )

    staging = Path(tempfile.mkdtemp(prefix=f"lakehouse-repair-{run_id[:8]}-"))
    try:
        staged = extract.stage_events(settings, rng, staging)
        log.info("repair: read %d events (%s)", staged.rows, _describe(rng))
        if staged.rows == 0:
            return result()
        days = events_per_day(staging, settings.timezone)
        frame = _staged_frame(spark, settings, staging, run_id)
        frame, dups = _without_duplicates(spark, settings, frame, staging)
        metadata = {
            "run_id": run_id,
            "source": settings.source_name,
            "repair": [str(first_day), str(last_day)],
            "rows_read": staged.rows,
            "horizon": state.horizon,
        }
        added, version = _merge_insert_only(spark, settings, frame, None, None, metadata)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("repair %s..%s: %d of %d events were missing and are now added", first_day, last_day, added, staged.rows)
    return result(staged.rows, added, version, days, dups)


def events_per_day(staging: Path, zone: str) -> dict[str, int]:
    """Staged events per day of event_at in the zone (the days a run touched), without Spark."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    moments = pq.read_table(staging, columns=["event_at"]).column("event_at")
    local_days = pc.cast(pc.local_timestamp(pc.cast(moments, pa.timestamp("us", tz=zone))), pa.date32())
    counts = pc.value_counts(local_days)
    days, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    return {str(day): int(count) for day, count in sorted(zip(days, numbers, strict=True))}


def _staged_spark_schema():
    from pyspark.sql.types import (
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    fields = []
    for name in extract.STAGED_SCHEMA.names:
        if name == "event_at":
            data_type = TimestampType()
        elif name == "tx_id":
            data_type = LongType()
        else:
            data_type = StringType()
        fields.append(StructField(name, data_type, True))
    return StructType(fields)
