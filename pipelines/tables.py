"""Where tables live and what every Delta table carries: paths, properties, names.

A table's path is derived: warehouse root + table name. The same name is the Dagster asset key.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.settings import Settings

RAW_EVENTS = "raw_events"
CURRENT_SUFFIX = "_current"
HISTORY_SUFFIX = "_history"
# Append-only log of audit lookups (written without a JVM, see pipelines/audit.py).
AUDIT_LOG = "_audit_log"
# One row per completed run: the version of every table the lake serves (pipelines/snapshots.py).
SNAPSHOTS = "_snapshots"
# Its idempotent-write application id; the transaction version is the snapshot's sequence number.
SNAPSHOT_APP_ID = "lakehouse-snapshot"
# Delta idempotent-write application ids: the cursor of each writer lives in the Delta log.
SYNC_APP_ID_PREFIX = "lakehouse-sync:"
# The raw_events version a silver table (<kind>_history, <kind>_current) has consumed.
CURRENT_APP_ID = "lakehouse-current"

# The lake's own bookkeeping tables start with an underscore (_audit_log).
# Columns of every event row in the silver tables, before who did it and the snapshot's own fields.
EVENT_COLUMNS = (
    "source",
    "tenant_id",
    "aggregate_id",
    "aggregate_kind",
    "event_id",
    "event_name",
    "event_at",
    "tx_id",
)
# <kind>_history: one row per event; valid_from is the event's event_at, valid_to the next one's.
HISTORY_EXTRA_COLUMNS = ("valid_from", "valid_to", "is_deleted", "event_payload", "aggregate_snapshot")
# <kind>_current: one row per aggregate.
CURRENT_EXTRA_COLUMNS = ("is_deleted", "aggregate_snapshot")

# Every table that holds tenant data keeps this column; tenant-scoped readers filter on it.
TENANT_COLUMN = "tenant_id"

_TABLE_NAME = re.compile(r"^_?[a-z][a-z0-9_]*$")


def canonical_uuid(value: str, what: str) -> str:
    """A tenant or aggregate id as the lake stores it (lower-case UUID text); anything else is refused."""
    import uuid

    from pipelines.errors import LakehouseError

    text = (value or "").strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise LakehouseError(f"{what} must be a UUID (as in the event store), not {value!r}") from None


def is_bookkeeping(name: str) -> bool:
    """The lake's own tables (_snapshots, _audit_log): never visible to a tenant-bound reader."""
    return name.startswith("_")


def snake_case(name: str) -> str:
    """PatientRegistered -> patient_registered; medication-guidance -> medication_guidance."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    return text or "unnamed"


def current_table_name(kind: str) -> str:
    return snake_case(kind) + CURRENT_SUFFIX


def history_table_name(kind: str) -> str:
    return snake_case(kind) + HISTORY_SUFFIX


def sync_app_id(settings: Settings) -> str:
    """The raw_events writer's id; the cursor's meaning differs by mode, so the id does too."""
    if settings.cursor_mode == "lookback":
        return f"lakehouse-sync-lookback:{settings.source_name}"
    return SYNC_APP_ID_PREFIX + settings.source_name


def is_served(name: str) -> bool:
    """A table the lake serves to readers (and records in every snapshot): bronze and silver."""
    return name == RAW_EVENTS or name.endswith((CURRENT_SUFFIX, HISTORY_SUFFIX))


def valid_table_name(name: str) -> bool:
    return bool(_TABLE_NAME.match(name))


def table_path(settings: Settings, name: str) -> str:
    """The Delta path Spark uses (a local directory or s3a://...)."""
    return f"{settings.warehouse}/{name}"


def table_uri(settings: Settings, name: str) -> str:
    """The same table as the JVM-free reader (deltalake) addresses it: s3:// instead of s3a://."""
    path = table_path(settings, name)
    return "s3://" + path[len("s3a://") :] if path.startswith("s3a://") else path


def storage_options(settings: Settings) -> dict[str, str]:
    """deltalake storage options; keys come from the AWS variables in the environment."""
    if not settings.on_s3:
        return {}
    options = {"AWS_REGION": settings.s3_region}
    if settings.s3_endpoint:
        options["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.s3_path_style_access:
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    return options


# The two properties the retention policy sets on every table.
RETENTION_PROPERTIES = ("delta.logRetentionDuration", "delta.deletedFileRetentionDuration")


def table_properties(settings: Settings, append_only: bool) -> dict[str, str]:
    """Properties every table is created with: the retention policy and in-commit timestamps.

    In-commit timestamps make time travel independent of file modification times (which a copy
    or a migration rewrites). Log and deleted-file retention follow the one retention policy.
    """
    days = settings.retention_days
    properties = {
        "delta.enableInCommitTimestamps": "true",
        "delta.logRetentionDuration": f"interval {days} days",
        "delta.deletedFileRetentionDuration": f"interval {days} days",
        "delta.enableChangeDataFeed": "true",
    }
    if append_only:
        properties["delta.appendOnly"] = "true"
    return properties


def local_table_names(settings: Settings) -> list[str]:
    """Delta tables under a local warehouse directory."""
    root = Path(settings.warehouse)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir())
