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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
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

    horizon: int  # every transaction below it has finished (0 in lookback mode)
    committed_events: int  # rows visible to the pipeline's role
    oldest_open_write: datetime | None  # start of the oldest write transaction still running
    default_partition_rows: int  # rows in the default partition (none expected)


@dataclass(frozen=True)
class Range:
    """Which rows a run reads: a transaction-id range and/or an event_at range (UTC)."""

    lo_tx: int | None = None
    hi_tx: int | None = None
    from_at: datetime | None = None
    to_at: datetime | None = None


@dataclass(frozen=True)
class Staged:
    directory: Path
    rows: int
    files: int
    seconds: float


def _table(settings: Settings) -> str:
    return f'"{settings.source_schema}"."{settings.source_table}"'


def _rls_message(settings: Settings, role: str, detail: str) -> str:
    return (
        f"rows hidden by row-level security on {settings.source_schema}.{settings.source_table}: {detail}. "
        f"The pipeline's role {role} must read every tenant through a policy of its own, for example "
        f"CREATE POLICY pipeline_reads_all_tenants ON {settings.source_schema}.{settings.source_table} "
        f"FOR SELECT TO {role} USING (true); no tenant context is set by the pipeline"
    )


def check_visibility(conn, settings: Settings) -> None:
    """Fail unless the pipeline's role provably sees every row of the events table.

    Row-level security that applies to the role must grant it a permissive policy reading all rows
    (USING (true)) with no restrictive policy narrowing it. Otherwise a sync would see none or some
    of the rows and report success: the failure the correctness contract forbids.
    """
    row = conn.execute(
        "SELECT c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) = current_user,"
        " r.rolbypassrls OR r.rolsuper, current_user"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_roles r ON r.rolname = current_user"
        " WHERE n.nspname = %s AND c.relname = %s",
        (settings.source_schema, settings.source_table),
    ).fetchone()
    if row is None:
        raise SourceError(f"table {settings.source_schema}.{settings.source_table} does not exist in the event store")
    rls_on, forced, is_owner, bypass, role = row
    if not rls_on or bypass or (is_owner and not forced):
        return
    policies = conn.execute(
        "SELECT policyname, permissive, qual FROM pg_policies"
        " WHERE schemaname = %s AND tablename = %s AND cmd IN ('ALL', 'SELECT')"
        " AND EXISTS (SELECT 1 FROM unnest(roles) AS p(name)"
        "             WHERE CASE WHEN p.name = 'public' THEN true"
        "                        ELSE pg_has_role(current_user, p.name, 'MEMBER') END)",
        (settings.source_schema, settings.source_table),
    ).fetchall()
    reads_all = [name for name, kind, qual in policies if kind == "PERMISSIVE" and (qual or "").strip() == "true"]
    narrowing = [
        f"{name}: {qual}" for name, kind, qual in policies if kind == "RESTRICTIVE" and (qual or "").strip() != "true"
    ]
    if narrowing:
        raise SourceError(_rls_message(settings, role, "restrictive policy " + "; ".join(narrowing)))
    if not reads_all:
        applying = "; ".join(f"{name}: {qual}" for name, _, qual in policies) or "none"
        raise SourceError(
            _rls_message(
                settings, role, f"no policy lets role {role} read all tenants (policies that apply: {applying})"
            )
        )


def _source_error(settings: Settings, exc: BaseException, doing: str) -> SourceError:
    text = one_line(exc)
    if "unrecognized configuration parameter" in text:
        role = settings.pg_dsn.split("://", 1)[-1].split("@", 1)[0].split(":", 1)[0] or "the pipeline's role"
        return SourceError(
            _rls_message(settings, role, f"a policy needs a tenant setting the pipeline does not set ({text})")
        )
    return SourceError(f"PostgreSQL failed while {doing} at {mask_dsn(settings.pg_dsn)}: {text}")


def read_source_state(settings: Settings, count: bool = True) -> SourceState:
    """Check that every row is visible, then read the horizon, the event count and the lag facts."""
    with connect(settings.pg_dsn, autocommit=True) as conn:
        try:
            conn.execute(f"SET statement_timeout = {int(settings.statement_timeout_ms)}")
            check_visibility(conn, settings)
            horizon = 0
            if settings.cursor_mode == "transaction":
                horizon = int(conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()[0])
            committed = default_rows = 0
            if count:
                # One scan counts both; tableoid tells which partition a row lives in.
                committed, default_rows = conn.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE tableoid = (SELECT partdefid FROM pg_partitioned_table"
                    f" WHERE partrelid = %s::regclass)) FROM {_table(settings)}",
                    (f"{settings.source_schema}.{settings.source_table}",),
                ).fetchone()
                if committed == 0 and _estimated_rows(conn, settings) > 0:
                    role = conn.execute("SELECT current_user").fetchone()[0]
                    raise SourceError(
                        _rls_message(
                            settings, role, "the table holds rows by PostgreSQL's statistics, the role sees none"
                        )
                    )
            oldest = _oldest_open_write(conn)
        except psycopg.Error as exc:
            raise _source_error(settings, exc, "reading the source state") from None
        return SourceState(horizon, int(committed), oldest, int(default_rows))


def _oldest_open_write(conn) -> datetime | None:
    # Needs pg_read_all_stats to see other roles' sessions (granted by the reference schema).
    return conn.execute(
        "SELECT min(xact_start) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def oldest_open_write(settings: Settings) -> datetime | None:
    """When the oldest write transaction still running on the server began (it holds the horizon back)."""
    with connect(settings.pg_dsn, autocommit=True) as conn:
        try:
            return _oldest_open_write(conn)
        except psycopg.Error as exc:
            raise _source_error(settings, exc, "reading open transactions") from None


def _estimated_rows(conn, settings: Settings) -> float:
    """Rows in the table and its partitions by PostgreSQL's statistics (not subject to RLS)."""
    return float(
        conn.execute(
            "SELECT coalesce(sum(greatest(c.reltuples, 0) + coalesce(s.n_live_tup, 0)), 0)"
            " FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid"
            " WHERE c.oid = %s::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
            (f"{settings.source_schema}.{settings.source_table}",) * 2,
        ).fetchone()[0]
    )


@dataclass(frozen=True)
class Pending:
    """Committed events at or beyond the cursor: what incremental runs have not added yet."""

    events: int
    newest_event_at: datetime | None


def pending(settings: Settings, cursor: int) -> Pending:
    """How many events lie at or beyond the cursor, and the newest event_at among them (one indexed query)."""
    with connect(settings.pg_dsn, autocommit=True) as conn:
        if settings.cursor_mode == "lookback":
            where, params = "event_at > %s", (_from_micros(cursor),)
        else:
            where, params = "tx_id >= %s::text::xid8", (str(cursor),)
        try:
            count, newest = conn.execute(
                f"SELECT count(*), max(event_at) FROM {_table(settings)} WHERE {where}", params
            ).fetchone()
        except psycopg.Error as exc:
            raise _source_error(settings, exc, "counting pending events") from None
        return Pending(int(count), newest)


def count_pending(settings: Settings, cursor: int) -> int:
    """Committed events at or beyond the cursor: what the lake does not hold yet."""
    return pending(settings, cursor).events


def _from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))


def to_micros(moment: datetime) -> int:
    """A UTC instant as microseconds since the epoch (the lookback cursor's unit)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'::timestamptz"


def extraction_query(settings: Settings, rng: Range) -> str:
    """The range query. Bounds are integers and datetimes rendered here, so formatting is safe."""
    tx_column = "tx_id::text::bigint" if settings.cursor_mode == "transaction" else "NULL::bigint"
    where = []
    if rng.lo_tx is not None:
        where.append(f"tx_id >= '{int(rng.lo_tx)}'::xid8")
    if rng.hi_tx is not None:
        where.append(f"tx_id < '{int(rng.hi_tx)}'::xid8")
    if rng.from_at is not None:
        where.append(f"event_at >= {_literal(rng.from_at)}")
    if rng.to_at is not None:
        where.append(f"event_at < {_literal(rng.to_at)}")
    return (
        "SELECT event_id::text AS event_id, tenant_id::text AS tenant_id, aggregate_kind,"
        " aggregate_id::text AS aggregate_id, event_name, event_payload::text AS event_payload,"
        " aggregate_snapshot::text AS aggregate_snapshot, event_at,"
        f" {tx_column} AS tx_id"
        f" FROM {_table(settings)}" + (" WHERE " + " AND ".join(where) if where else "")
    )


# Above this many ids, one grouped scan of the table beats probing the key index per id.
PROBE_LIMIT = 20_000


def duplicated_event_ids(settings: Settings, event_ids: list[str] | None) -> dict[str, list[datetime]]:
    """Event ids the store holds more than once (its key includes event_at), with every copy's event_at.

    Args:
        event_ids: the ids to look at, or None for the whole table.
    """
    with connect(settings.pg_dsn, autocommit=True) as conn:
        try:
            conn.execute(f"SET statement_timeout = {int(settings.statement_timeout_ms)}")
            if event_ids is not None and len(event_ids) <= PROBE_LIMIT:
                rows = conn.execute(
                    f"SELECT event_id::text, array_agg(event_at ORDER BY event_at) FROM {_table(settings)}"
                    " WHERE event_id = ANY(%s::uuid[]) GROUP BY event_id HAVING count(*) > 1",
                    (event_ids,),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT event_id::text, array_agg(event_at ORDER BY event_at) FROM {_table(settings)}"
                    " GROUP BY event_id HAVING count(*) > 1"
                ).fetchall()
                if event_ids is not None:
                    wanted = set(event_ids)
                    rows = [r for r in rows if r[0] in wanted]
        except psycopg.Error as exc:
            raise _source_error(settings, exc, "looking for duplicate event ids") from None
    return {event_id: list(times) for event_id, times in rows}


def stage_events(settings: Settings, rng: Range, directory: Path) -> Staged:
    """Stream the events of `rng` into Parquet files under `directory`, one Arrow batch at a time."""
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
            try:
                cur.execute(extraction_query(settings, rng))
                reader = cur.fetch_record_batch()
            except Exception as exc:
                raise _source_error(settings, exc, "extracting events") from None
            for batch in _batches(settings, reader):
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


def _batches(settings: Settings, reader):
    """The reader's batches; a connection lost half-way becomes a SourceError."""
    iterator = iter(reader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise _source_error(settings, exc, "extracting events") from None
        yield batch
