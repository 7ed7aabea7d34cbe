"""Readers of the lake without a JVM: time travel, table history, and the pipeline's status."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import lake
from pipelines.errors import LakehouseError, TableNotFoundError, TenantScopeError
from pipelines.settings import Settings
from pipelines.snapshots import Snapshot, read_snapshot
from pipelines.tables import (
    CURRENT_APP_ID,
    RAW_EVENTS,
    TENANT_COLUMN,
    canonical_uuid,
    is_bookkeeping,
    sync_app_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadResult:
    table: str
    point: lake.PointInTime
    rows: pa.Table
    total_rows: int
    snapshot: Snapshot | None = None  # the consistent snapshot the version was taken from
    tenant: str | None = None

    def describe(self) -> str:
        """One line that says which version was read and which clock and zone were used."""
        text = (
            f"{self.table} at version {self.point.version} (committed {self.point.commit_time.isoformat()}, lake time)"
        )
        if self.snapshot is not None:
            text += f"; from {self.snapshot.describe()}"
        elif self.point.requested is not None:
            zone = f"naive time read in {self.point.zone_used}" if self.point.zone_used else "offset given"
            text += f"; as of {self.point.requested} = {self.point.requested_utc.isoformat()} ({zone})"
        if self.tenant is not None:
            text += f"; tenant {self.tenant} only"
        return text + f"; {self.total_rows} rows match, {self.rows.num_rows} shown"


def parse_where(clauses: list[str] | None) -> list[tuple[str, str]]:
    """["col=value", ...] -> [(col, value)]; equality filters on columns, compared as text."""
    result = []
    for clause in clauses or []:
        column, sep, value = clause.partition("=")
        if not sep or not column.strip():
            raise LakehouseError(f"--where takes COLUMN=VALUE, not {clause!r}")
        result.append((column.strip(), value))
    return result


def read_table(
    settings: Settings,
    table: str,
    as_of: str | None = None,
    version: int | None = None,
    limit: int | None = 20,
    where: list[tuple[str, str]] | None = None,
    snapshot_at: str | datetime | None = None,
    tenant: str | None = None,
) -> ReadResult:
    """A table as it was at a version or lake time (default: now), without a JVM.

    Args:
        as_of: lake time; with an offset it is honoured exactly, naive it is read in the
            configured zone.
        version: a Delta version (instead of as_of).
        limit: at most this many rows (None: all).
        where: equality filters (column, value), compared as text.
        snapshot_at: read the version of the consistent snapshot of the last run completed at or
            before this lake time (pipelines.snapshots), instead of as_of or version.
        tenant: only this tenant's rows, whatever the filters say; a table without tenant_id is
            refused.
    """
    if tenant is not None:
        tenant = canonical_uuid(tenant, "a tenant id")
        if is_bookkeeping(table):
            raise TenantScopeError(f"{table} is one of the lake's own tables: a tenant-scoped reader cannot read it")
    snapshot = None
    if snapshot_at is not None:
        if as_of is not None or version is not None:
            raise LakehouseError("give one of a snapshot time, an as-of time or a version")
        snapshot = read_snapshot(settings, at=snapshot_at)
        if table not in snapshot.tables:
            raise TableNotFoundError(
                f"{table} is not in snapshot {snapshot.sequence} (tables: {', '.join(sorted(snapshot.tables))})"
            )
        version = snapshot.tables[table]
    point = lake.resolve(settings, table, as_of=as_of, version=version)
    delta = lake.open_table(settings, table, version=point.version)
    dataset = delta.to_pyarrow_dataset()
    expression = None
    if tenant is not None:
        if TENANT_COLUMN not in dataset.schema.names:
            raise TenantScopeError(f"{table} has no {TENANT_COLUMN} column: a tenant-scoped reader cannot read it")
        expression = pc.field(TENANT_COLUMN) == pa.scalar(tenant)
    for column, value in where or []:
        if column not in dataset.schema.names:
            raise LakehouseError(f"{table} has no column {column!r} (columns: {', '.join(dataset.schema.names)})")
        if pa.types.is_boolean(dataset.schema.field(column).type):
            if value.strip().lower() not in {"true", "false"}:
                raise LakehouseError(f"{column} is true or false, not {value!r}")
            term = pc.field(column) == pa.scalar(value.strip().lower() == "true")
        else:
            term = pc.field(column).cast(pa.string()) == pa.scalar(value)
        expression = term if expression is None else expression & term
    # A version whose data files are gone fails here, naming the version and the file.
    rows, total = lake.to_arrow(table, point.version, dataset, filter=expression, limit=limit)
    return ReadResult(table, point, rows, total, snapshot, tenant)


def table_history(settings: Settings, table: str) -> list[dict[str, Any]]:
    """The table's versions, newest first: version, commit time, operation, rows added."""
    return [
        {
            "version": c.version,
            "committed_at": c.timestamp.isoformat(),
            "operation": c.operation,
            "rows_added": c.rows_added,
            "cursor": (c.user_metadata or {}).get("cursor_after") if c.user_metadata else None,
            "run_id": (c.user_metadata or {}).get("run_id"),
        }
        for c in lake.commits(settings, table)
    ]


def _count_rows(settings: Settings, table: str) -> int:
    delta = lake.open_table(settings, table)
    _, total = lake.to_arrow(table, delta.version(), delta.to_pyarrow_dataset(), limit=0)
    return total


def status(settings: Settings) -> dict[str, Any]:
    """Effective settings, reachability, counts in store and lake, cursor, lag, table versions."""
    from pipelines import extract

    result: dict[str, Any] = {"settings": settings.redacted()}
    store_events = None
    try:
        state = extract.read_source_state(settings)
        store_events = state.committed_events
        result["store_reachable"] = True
        result["store_horizon"] = state.horizon
        result["oldest_open_write"] = state.oldest_open_write
        result["default_partition_rows"] = state.default_partition_rows
    except LakehouseError as exc:
        result["store_reachable"] = False
        result["store_error"] = str(exc)
    result["store_events"] = store_events

    lake_events = None
    tables: list[dict[str, Any]] = []
    cursor = None
    try:
        lake.check_warehouse(settings, create=False)
        names = lake.list_tables(settings)
        result["warehouse_reachable"] = True
        for name in names:
            table = lake.open_table(settings, name)
            app = sync_app_id(settings) if name == RAW_EVENTS else CURRENT_APP_ID
            tables.append({"table": name, "version": table.version(), "cursor": table.transaction_version(app)})
        if RAW_EVENTS in names:
            lake_events = _count_rows(settings, RAW_EVENTS)
            cursor = next(t["cursor"] for t in tables if t["table"] == RAW_EVENTS)
    except (LakehouseError, TableNotFoundError) as exc:
        result["warehouse_reachable"] = False
        result["warehouse_error"] = str(exc)
    result["lake_events"] = lake_events
    result["cursor"] = cursor
    pending = None
    if result["store_reachable"] and result["warehouse_reachable"]:
        try:
            pending = extract.count_pending(settings, cursor or 0)
        except LakehouseError as exc:
            result["store_error"] = str(exc)
    result["pending_events"] = pending
    result["tables"] = tables
    return result
