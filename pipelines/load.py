"""Writing raw_events (bronze): every event once, appended, never rewritten.

The cursor advances in the same atomic Delta commit that adds the rows: the commit carries Delta's
idempotent-write transaction (appId = lakehouse-sync:<source>, version = the cursor) and the same
facts, readable by a person, in its userMetadata. The cursor is read back from the Delta log; no
side file can disagree with the data.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines import extract
from pipelines.errors import ConcurrentSyncError
from pipelines.lake import check_warehouse, delta_version, transaction_version
from pipelines.settings import Settings
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
    tx_id              BIGINT    NOT NULL,
    event_date         DATE      NOT NULL,
    event_month        STRING    NOT NULL,
    run_id             STRING    NOT NULL
"""


@dataclass(frozen=True)
class SyncResult:
    table: str
    rows_added: int
    delta_version: int | None
    cursor_before: int
    cursor_after: int
    pending_events: int
    store_events: int
    extract_seconds: float
    write_seconds: float
    run_id: str

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_raw_events(spark, settings: Settings) -> str:
    """Create raw_events (version 0, empty) if it does not exist; returns its path."""
    path = table_path(settings, RAW_EVENTS)
    props = ", ".join(f"'{k}' = '{v}'" for k, v in table_properties(settings, append_only=True).items())
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS delta.`{path}` ({RAW_EVENTS_DDL}) USING delta"
        f" PARTITIONED BY (event_month) TBLPROPERTIES ({props})"
    )
    return path


def read_cursor(settings: Settings) -> int:
    """The sync cursor from the Delta log of raw_events (0 before the first sync)."""
    return transaction_version(settings, RAW_EVENTS, sync_app_id(settings)) or 0


def sync_raw_events(spark, settings: Settings, run_id: str | None = None) -> SyncResult:
    """Append every committed event not yet in raw_events, in one atomic Delta commit.

    Args:
        spark: the process's SparkSession (pipelines.spark.get_spark).
        settings: effective settings.
        run_id: recorded on every row and in the commit; default a new UUID.
    Returns:
        What the run did: rows added, the Delta version, the cursor before and after.
    """
    from pyspark.sql import functions as F

    run_id = run_id or str(uuid.uuid4())
    check_warehouse(settings)
    path = ensure_raw_events(spark, settings)
    cursor_before = read_cursor(settings)
    state = extract.read_source_state(settings)
    hi = state.horizon

    def nothing_added(extract_seconds: float) -> SyncResult:
        # The cursor stays where it is; an empty range is re-read next time through the tx_id
        # index, which costs next to nothing.
        return SyncResult(
            RAW_EVENTS,
            0,
            delta_version(settings, RAW_EVENTS),
            cursor_before,
            cursor_before,
            extract.count_pending(settings, cursor_before),
            state.committed_events,
            extract_seconds,
            0.0,
            run_id,
        )

    if hi <= cursor_before:
        return nothing_added(0.0)

    staging = Path(tempfile.mkdtemp(prefix=f"lakehouse-stage-{run_id[:8]}-"))
    try:
        staged = extract.stage_events(settings, cursor_before, hi, staging)
        log.info(
            "extracted %d events of transactions [%d, %d) in %.1fs", staged.rows, cursor_before, hi, staged.seconds
        )
        if staged.rows == 0:
            return nothing_added(staged.seconds)
        write_started = time.monotonic()
        zone = settings.timezone
        frame = (
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
        # Another run may have committed since this one read the cursor: then this one must not
        # write (its range overlaps). Delta's own conflict check covers the rest of the window,
        # since the write below reads the same application transaction id.
        if read_cursor(settings) != cursor_before:
            raise ConcurrentSyncError(
                "another sync advanced the raw_events cursor during this run; nothing was written"
            )
        metadata = json.dumps(
            {
                "run_id": run_id,
                "source": settings.source_name,
                "cursor_before": cursor_before,
                "cursor_after": hi,
                "rows": staged.rows,
            },
            separators=(",", ":"),
        )
        (
            frame.write.format("delta")
            .mode("append")
            .option("txnAppId", sync_app_id(settings))
            .option("txnVersion", hi)
            .option("userMetadata", metadata)
            .save(path)
        )
        write_seconds = time.monotonic() - write_started
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    version = delta_version(settings, RAW_EVENTS)
    pending = extract.count_pending(settings, hi)
    log.info("raw_events: %d rows added in version %s, cursor %d -> %d", staged.rows, version, cursor_before, hi)
    return SyncResult(
        RAW_EVENTS,
        staged.rows,
        version,
        cursor_before,
        hi,
        pending,
        state.committed_events,
        staged.seconds,
        write_seconds,
        run_id,
    )


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
