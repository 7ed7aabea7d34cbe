"""Extraction from the event store: the commit-order-safe cursor and Arrow batches.

The cursor is a writing-transaction id. A run reads rows whose tx_id lies in [lo, hi) where
hi = pg_snapshot_xmin(pg_current_snapshot()): every transaction below hi has finished, so no row
can ever appear behind the cursor later (a long write transaction delays freshness; it never
causes loss). Rows stream from COPY into Arrow batches (ADBC) and are staged as Parquet on local
disk, so peak memory follows the batch size, not the size of the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import SourceError
from pipelines.eventstore import connect, one_line
from pipelines.settings import Settings, mask_dsn

log = logging.getLogger(__name__)

# Column order and Arrow types of a staged batch (UUID and JSONB as text, tx_id as int64).
STAGED_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("tenant_id", pa.string()),
        ("aggregate_kind", pa.string()),
        ("aggregate_id", pa.string()),
        ("event_name", pa.string()),
        ("event_payload", pa.string()),
        ("aggregate_snapshot", pa.string()),
        ("event_at", pa.timestamp("us", tz="UTC")),
        ("tx_id", pa.int64()),
    ]
)
FILE_ROWS = 1_000_000


@dataclass(frozen=True)
class SourceState:
    """What the event store says at the start of a run."""

    horizon: int  # every transaction below it has finished
    committed_events: int  # rows visible to the pipeline's role


@dataclass(frozen=True)
class Staged:
    directory: Path
    rows: int
    files: int
    seconds: float


def _table(settings: Settings) -> str:
    return f'"{settings.source_schema}"."{settings.source_table}"'


def read_source_state(settings: Settings, count: bool = True) -> SourceState:
    """The transaction horizon (and optionally the number of events the pipeline can see)."""
    with connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {int(settings.statement_timeout_ms)}")
        horizon = int(conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()[0])
        committed = 0
        if count:
            committed = int(conn.execute(f"SELECT count(*) FROM {_table(settings)}").fetchone()[0])
        return SourceState(horizon=horizon, committed_events=committed)


def count_pending(settings: Settings, cursor: int) -> int:
    """Committed events at or beyond the cursor: what the lake does not hold yet."""
    with connect(settings.pg_dsn, autocommit=True) as conn:
        return int(
            conn.execute(
                f"SELECT count(*) FROM {_table(settings)} WHERE tx_id >= %s::text::xid8",
                (str(cursor),),
            ).fetchone()[0]
        )


def extraction_query(settings: Settings, lo: int, hi: int) -> str:
    """The range query; lo and hi are integers, so formatting them in is safe."""
    return (
        "SELECT event_id::text AS event_id, tenant_id::text AS tenant_id, aggregate_kind,"
        " aggregate_id::text AS aggregate_id, event_name, event_payload::text AS event_payload,"
        " aggregate_snapshot::text AS aggregate_snapshot, event_at,"
        " tx_id::text::bigint AS tx_id"
        f" FROM {_table(settings)}"
        f" WHERE tx_id >= '{int(lo)}'::xid8 AND tx_id < '{int(hi)}'::xid8"
    )


def stage_events(settings: Settings, lo: int, hi: int, directory: Path) -> Staged:
    """Stream the events of transactions in [lo, hi) into Parquet files under `directory`."""
    import adbc_driver_postgresql.dbapi as adbc

    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    rows = 0
    files = 0
    writer: pq.ParquetWriter | None = None
    file_rows = 0
    try:
        conn = adbc.connect(settings.pg_dsn)
    except Exception as exc:  # the driver raises its own error classes
        raise SourceError(f"PostgreSQL unreachable at {mask_dsn(settings.pg_dsn)}: {one_line(exc)}") from None
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {int(settings.statement_timeout_ms)}")
            cur.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(max(settings.batch_rows, 1) * 1024)}
            )
            cur.execute(extraction_query(settings, lo, hi))
            reader = cur.fetch_record_batch()
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                batch = batch.cast(STAGED_SCHEMA) if batch.schema != STAGED_SCHEMA else batch
                if writer is None or file_rows >= FILE_ROWS:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(directory / f"part-{files:05d}.parquet", STAGED_SCHEMA)
                    files += 1
                    file_rows = 0
                writer.write_batch(batch)
                rows += batch.num_rows
                file_rows += batch.num_rows
                if rows and rows % (settings.batch_rows * 5) < batch.num_rows:
                    log.info("extracted %d rows", rows)
    finally:
        if writer is not None:
            writer.close()
        conn.close()
    return Staged(directory, rows, files, time.monotonic() - started)
