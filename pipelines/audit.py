"""Audit lookups: an aggregate's state at a business time, as the lake knows it now or knew it then.

Two clocks, kept apart (../DESIGN.md "Two clocks"):
- business time (`as_of`): event_at, when it happened in the product. The state valid at T is the
  last event of the aggregate with valid_from <= T (in the history table's deterministic order).
- lake time (`as_seen_at`): when the lake learned it. The history table is read at the Delta
  version current at K, so a correction that reached the lake after K is not seen.

Every lookup, found or not, appends one row to the append-only `_audit_log` Delta table before the
answer is returned; a lookup that cannot be logged fails. No JVM: deltalake and pyarrow only.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import lake
from pipelines.errors import LakehouseError, TableNotFoundError
from pipelines.settings import Settings
from pipelines.tables import (
    AUDIT_LOG,
    EVENT_COLUMNS,
    HISTORY_EXTRA_COLUMNS,
    canonical_uuid,
    history_table_name,
    snake_case,
    storage_options,
    table_uri,
)

_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class AggregateNotFoundError(LakehouseError):
    """No such aggregate (for this tenant, at this time, as the lake knew it then)."""


AUDIT_LOG_SCHEMA = pa.schema(
    [
        ("asked_at", pa.timestamp("us", tz="UTC")),
        ("asked_by", pa.string()),
        ("host", pa.string()),
        ("tenant_id", pa.string()),  # the tenant the caller was bound to, if any
        ("kind", pa.string()),
        ("aggregate_id", pa.string()),
        ("as_of", pa.string()),  # business time as typed
        ("as_of_utc", pa.timestamp("us", tz="UTC")),
        ("as_seen_at", pa.string()),  # lake time as typed (NULL: the latest version)
        ("as_seen_at_utc", pa.timestamp("us", tz="UTC")),
        ("history_version", pa.int64()),
        ("outcome", pa.string()),  # found | not_found | error
        ("found_tenant_id", pa.string()),
        ("state_event_id", pa.string()),
    ]
)


@dataclass(frozen=True)
class AuditResult:
    kind: str
    aggregate_id: str
    tenant_id: str
    as_of: str | None  # business time as given (None: now)
    as_of_utc: datetime
    as_of_zone: str | None  # the zone a naive as_of was read in
    seen: lake.PointInTime  # the history table version read (lake time)
    as_seen_at: str | None
    state: dict[str, Any]  # the snapshot's fields at as_of
    event: dict[str, Any]  # the event that produced the state
    deleted: bool
    trail: list[dict[str, Any]] = field(default_factory=list)  # events up to as_of, oldest first
    snapshot: dict[str, Any] | None = None  # the raw JSON snapshot, parsed

    @property
    def seen_table(self) -> str:
        return history_table_name(self.kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "aggregate_id": self.aggregate_id,
            "tenant_id": self.tenant_id,
            "business_time": {
                "as_of": self.as_of,
                "as_of_utc": self.as_of_utc.isoformat(),
                "naive_time_read_in": self.as_of_zone,
            },
            "lake_time": {
                "as_seen_at": self.as_seen_at,
                "as_seen_at_utc": self.seen.requested_utc.isoformat() if self.seen.requested_utc else None,
                "naive_time_read_in": self.seen.zone_used,
                "history_table": history_table_name(self.kind),
                "history_version": self.seen.version,
                "version_committed_at": self.seen.commit_time.isoformat(),
            },
            "deleted": self.deleted,
            "state": _plain(self.state),
            "snapshot": self.snapshot,
            "produced_by": _plain(self.event),
            "trail": [_plain(e) for e in self.trail],
        }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def _order_key(row: dict[str, Any]) -> tuple:
    return (row["event_at"], row.get("tx_id") or 0, row.get("source") or "", row["event_id"])


def lookup(
    settings: Settings,
    kind: str,
    aggregate_id: str,
    as_of: str | datetime | None = None,
    as_seen_at: str | datetime | None = None,
    tenant: str | None = None,
) -> AuditResult:
    """The aggregate's state valid at business time as_of, read from the lake as it was at as_seen_at.

    Args:
        kind: aggregate kind (Patient, patient, medication_guidance ...).
        as_of: business time (event_at); default now. With an offset it is exact; naive it is read
            in the configured zone.
        as_seen_at: lake time (Delta commit time); default the latest version.
        tenant: bind the lookup to one tenant; another tenant's aggregate is "not found".
    Raises:
        AggregateNotFoundError: unknown aggregate (for that tenant), or no state yet at as_of.
    """
    if not _KIND.match(kind or ""):
        raise LakehouseError(f"an aggregate kind is a name such as patient or MedicationGuidance, not {kind!r}")
    aggregate_id = canonical_uuid(aggregate_id, "an aggregate id")
    if tenant is not None:
        tenant = canonical_uuid(tenant, "a tenant id")
    table = history_table_name(kind)
    label = snake_case(kind)
    try:
        seen = lake.resolve(settings, table, as_of=as_seen_at)
    except TableNotFoundError:
        raise AggregateNotFoundError(
            f"{label} {aggregate_id} not found: the lake has no {table} table (no {kind} events synced yet)"
        ) from None
    if as_of is None:
        as_of_utc, zone = datetime.now(UTC), None
    elif isinstance(as_of, datetime):
        zone = None if as_of.tzinfo else settings.timezone
        as_of_utc = (as_of if as_of.tzinfo else as_of.replace(tzinfo=settings.zone)).astimezone(UTC)
    else:
        as_of_utc, zone = lake.parse_timestamp(as_of, settings.timezone)

    delta = lake.open_table(settings, table, version=seen.version)
    condition = pc.field("aggregate_id") == aggregate_id
    if tenant is not None:
        condition = condition & (pc.field("tenant_id") == tenant)
    # A version whose data files are gone fails here, naming the table, the version and the file.
    found, _ = lake.to_arrow(table, seen.version, delta.to_pyarrow_dataset(), filter=condition)
    rows = found.to_pylist()
    seen_where = f" as the lake knew it at {_when(seen)}" if as_seen_at is not None else ""
    if not rows:
        scope = f" for tenant {tenant}" if tenant is not None else ""
        raise AggregateNotFoundError(f"{label} {aggregate_id} not found{scope}{seen_where}")
    tenants = sorted({r["tenant_id"] for r in rows})
    if len(tenants) > 1:
        raise LakehouseError(
            f"{label} {aggregate_id} exists in {len(tenants)} tenants ({', '.join(tenants)}): give the tenant"
        )
    rows.sort(key=_order_key)
    trail = [r for r in rows if r["valid_from"] <= as_of_utc]
    if not trail:
        raise AggregateNotFoundError(
            f"{label} {aggregate_id} not found at {as_of_utc.isoformat()} (business time){seen_where}: "
            f"its first event is at {rows[0]['valid_from'].isoformat()}"
        )
    last = trail[-1]
    actor_columns = [c for c, _ in settings.actor_fields]
    system = {*EVENT_COLUMNS, *HISTORY_EXTRA_COLUMNS, *actor_columns}
    state = {k: v for k, v in last.items() if k not in system}
    event_fields = ("event_id", "event_name", "event_at", *actor_columns, "is_deleted", "source")
    trail_fields = ("valid_from", "valid_to", "event_name", *actor_columns, "event_id")
    return AuditResult(
        kind=kind,
        aggregate_id=aggregate_id,
        tenant_id=tenants[0],
        as_of=as_of if isinstance(as_of, str) else (as_of.isoformat() if as_of else None),
        as_of_utc=as_of_utc,
        as_of_zone=zone,
        seen=seen,
        as_seen_at=as_seen_at if isinstance(as_seen_at, str) or as_seen_at is None else as_seen_at.isoformat(),
        state=state,
        event={k: last.get(k) for k in event_fields},
        deleted=bool(last["is_deleted"]),
        trail=[{k: r.get(k) for k in trail_fields} for r in trail],
        snapshot=json.loads(last["aggregate_snapshot"]) if last.get("aggregate_snapshot") else None,
    )


def _when(point: lake.PointInTime) -> str:
    return f"{point.requested_utc.isoformat()} (version {point.version})" if point.requested_utc else "now"


def audit(
    settings: Settings,
    kind: str,
    aggregate_id: str,
    asked_by: str,
    as_of: str | datetime | None = None,
    as_seen_at: str | datetime | None = None,
    tenant: str | None = None,
) -> AuditResult:
    """lookup(), with one row appended to the access log first (found or not). See lookup()."""
    if not asked_by or not asked_by.strip():
        raise LakehouseError("an audit lookup needs to know who asks (--asked-by or LAKEHOUSE_AUDITOR)")
    record: dict[str, Any] = {
        "asked_at": datetime.now(UTC),
        "asked_by": asked_by.strip(),
        "host": socket.gethostname(),
        "tenant_id": tenant,
        "kind": kind,
        "aggregate_id": aggregate_id,
        "as_of": as_of.isoformat() if isinstance(as_of, datetime) else as_of,
        "as_of_utc": None,
        "as_seen_at": as_seen_at.isoformat() if isinstance(as_seen_at, datetime) else as_seen_at,
        "as_seen_at_utc": None,
        "history_version": None,
        "outcome": "error",
        "found_tenant_id": None,
        "state_event_id": None,
    }
    try:
        result = lookup(settings, kind, aggregate_id, as_of=as_of, as_seen_at=as_seen_at, tenant=tenant)
    except AggregateNotFoundError:
        record["outcome"] = "not_found"
        log_access(settings, record)
        raise
    except LakehouseError:
        log_access(settings, record)
        raise
    record.update(
        as_of_utc=result.as_of_utc,
        as_seen_at_utc=result.seen.requested_utc,
        history_version=result.seen.version,
        outcome="found",
        found_tenant_id=result.tenant_id,
        state_event_id=result.event["event_id"],
    )
    log_access(settings, record)
    return result


def log_access(settings: Settings, record: dict[str, Any]) -> None:
    """Append one row to the access log (created append-only, with the retention policy)."""
    from deltalake import write_deltalake

    from pipelines.tables import table_properties

    configuration = {
        k: v for k, v in table_properties(settings, append_only=True).items() if k != "delta.enableInCommitTimestamps"
    }
    batch = pa.Table.from_pylist([record], schema=AUDIT_LOG_SCHEMA)
    options = storage_options(settings) or None
    last_error: Exception | None = None
    for _ in range(5):  # two first lookups may race to create the table; appends retry inside deltalake
        try:
            write_deltalake(
                table_uri(settings, AUDIT_LOG),
                batch,
                mode="append",
                configuration=configuration,
                storage_options=options,
            )
            return
        except Exception as exc:  # deltalake raises its own types for commit races and storage errors
            last_error = exc
            if "exists" not in str(exc).lower() and "conflict" not in str(exc).lower():
                break
    message = str(last_error).splitlines()[0] if last_error else "unknown error"
    raise LakehouseError(f"the audit lookup was not answered: it could not be written to {AUDIT_LOG}: {message}")


def access_log(settings: Settings) -> list[dict[str, Any]]:
    """Every row of the access log, oldest first."""
    try:
        table = lake.open_table(settings, AUDIT_LOG)
    except TableNotFoundError:
        return []
    rows = table.to_pyarrow_dataset().to_table().to_pylist()
    return sorted(rows, key=lambda r: r["asked_at"])
