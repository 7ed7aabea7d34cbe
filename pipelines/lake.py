"""JVM-free access to the Delta tables (deltalake): versions, commit times, cursors, time travel.

Lake time is the Delta commit time. Tables are created with in-commit timestamps, so a commit's
time is written inside the commit itself and survives copies and migrations of the files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from pipelines.errors import (
    BeforeHistoryError,
    DataFilesMissingError,
    LakehouseError,
    TableNotFoundError,
    VersionNotFoundError,
)
from pipelines.settings import Settings
from pipelines.tables import storage_options, table_uri, valid_table_name

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pa_dataset


@dataclass(frozen=True)
class Commit:
    version: int
    timestamp: datetime  # UTC, from the in-commit timestamp where present
    operation: str
    rows_added: int | None
    user_metadata: dict | None


@dataclass(frozen=True)
class PointInTime:
    """A resolved time-travel request."""

    version: int
    commit_time: datetime
    requested: str | None  # what the user typed, if a timestamp
    requested_utc: datetime | None
    zone_used: str | None  # the zone a naive timestamp was read in


def open_table(settings: Settings, name: str, version: int | None = None):
    """A deltalake DeltaTable, or TableNotFoundError / VersionNotFoundError with a clear message."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound

    if not valid_table_name(name):
        raise TableNotFoundError(f"{name!r} is not a table name (lower-case letters, digits, _)")
    uri = table_uri(settings, name)
    try:
        table = DeltaTable(uri, storage_options=storage_options(settings) or None)
    except DeltaTableNotFound:
        try:
            present = ", ".join(list_tables(settings)) or "none: run a sync first"
        except Exception:  # the warehouse itself is unreachable: say only what was asked
            present = "run a sync first"
        raise TableNotFoundError(f"table {name} does not exist in {settings.warehouse} (tables: {present})") from None
    except OSError as exc:
        raise LakehouseError(f"warehouse {settings.warehouse} unreachable: {exc}") from None
    except Exception as exc:  # deltalake wraps object-store failures in its own error types
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "not a Delta table" in message or "No files in log segment" in message:
            raise TableNotFoundError(f"table {name} does not exist in {settings.warehouse}") from None
        raise LakehouseError(f"cannot open table {name} in {settings.warehouse}: {message}") from None
    if version is not None:
        latest = table.version()
        if version < 0 or version > latest:
            raise VersionNotFoundError(f"table {name} has no version {version} (versions 0 to {latest})")
        try:
            table.load_as_version(version)
        except Exception as exc:
            raise VersionNotFoundError(
                f"table {name} version {version} cannot be read: {str(exc).splitlines()[0]} "
                "(its log or files may be past the retention period)"
            ) from None
    return table


# How a missing data file shows: deltalake (object_store), on a local disk and on S3 alike, raises
# FileNotFoundError("Object at location <path or key> not found ..."); Spark raises
# "[FAILED_READ_FILE.FILE_NOT_EXIST] Encountered error while reading file <uri>. File does not exist"
# caused by "java.io.FileNotFoundException: File <uri> does not exist".
_MISSING_FILE = re.compile(
    r"Object at location (?P<object>\S+) not found"
    r"|FILE_NOT_EXIST\].*?reading file (?P<spark>\S+?)\.?(?:\s|$)"
    r"|FileNotFoundException: File (?P<hadoop>\S+) does not exist"
)


def missing_files_error(name: str, version: int, exc: BaseException) -> DataFilesMissingError | None:
    """The error for a read of `version` that failed because one of its data files is gone, else None.

    Works for deltalake/pyarrow scans (local and S3) and for Spark reads. A version whose files were
    deleted (a VACUUM outside this tool, files removed by hand) must fail, never answer with the rows
    of the files that are left.
    """
    match = _MISSING_FILE.search(str(exc))
    if match is not None:
        location = next(group for group in match.groups() if group)
    elif isinstance(exc, FileNotFoundError) and exc.filename:
        location = str(exc.filename)
    else:
        return None
    # The file relative to the table's root (partition directory and name): the same locally and on S3.
    relative = re.search(rf"(?:^|/){re.escape(name)}/(.+)$", location)
    data_file = relative.group(1) if relative else location
    return DataFilesMissingError(
        f"table {name} version {version} cannot be read: its data file {data_file} is missing "
        "(deleted by a VACUUM below the retention policy or removed by hand); no rows were returned"
    )


def to_arrow(
    name: str,
    version: int,
    dataset: pa_dataset.Dataset,
    filter: pc.Expression | None = None,
    columns: list[str] | None = None,
    limit: int | None = None,
) -> tuple[pa.Table, int]:
    """Rows of one table version through pyarrow, and how many rows match in all.

    Every data file of the version is opened (counting reads each file's footer), so a missing file
    fails the read even when the rows shown would come from files that are still there.

    Args:
        dataset: the version as deltalake gives it (`open_table(...).to_pyarrow_dataset()`).
        filter: a pyarrow expression rows must match.
        columns: only these columns (default all).
        limit: at most this many rows (None: all).
    Returns:
        (rows, total rows matching the filter).
    Raises:
        DataFilesMissingError naming the table, the version and the missing file.
    """
    try:
        if filter is None:
            total = dataset.count_rows()
            rows = dataset.head(limit, columns=columns) if limit is not None else dataset.to_table(columns=columns)
        else:
            rows = dataset.to_table(filter=filter, columns=columns)
            total = rows.num_rows
            rows = rows.slice(0, limit) if limit is not None else rows
    except Exception as exc:
        error = missing_files_error(name, version, exc)
        if error is None:
            raise
        raise error from None
    return rows, total


def delta_version(settings: Settings, name: str) -> int | None:
    try:
        return open_table(settings, name).version()
    except TableNotFoundError:
        return None


def transaction_version(settings: Settings, name: str, app_id: str) -> int | None:
    """The idempotent-write version recorded for app_id in the table's log (a writer's cursor)."""
    try:
        table = open_table(settings, name)
    except TableNotFoundError:
        return None
    return table.transaction_version(app_id)


def _commit_time(info: dict) -> datetime:
    millis = info.get("inCommitTimestamp") or info.get("timestamp")
    return datetime.fromtimestamp(int(millis) / 1000, tz=UTC)


def _rows_added(info: dict) -> int | None:
    metrics = info.get("operationMetrics") or {}
    # A MERGE's numOutputRows counts every row of the files it rewrote; what it added is its inserts.
    for key in ("numTargetRowsInserted", "numOutputRows", "num_added_rows"):
        if key in metrics:
            try:
                return int(metrics[key])
            except (TypeError, ValueError):
                return None
    return 0 if info.get("operation") in {"CREATE TABLE", "CREATE OR REPLACE TABLE"} else None


def commits(settings: Settings, name: str) -> list[Commit]:
    """Every commit still in the log, newest first."""
    import json

    table = open_table(settings, name)
    result = []
    for info in table.history():
        raw_meta = info.get("userMetadata")
        try:
            meta = json.loads(raw_meta) if raw_meta else None
        except ValueError:
            meta = {"text": raw_meta}
        result.append(
            Commit(
                version=int(info["version"]),
                timestamp=_commit_time(info),
                operation=str(info.get("operation", "")),
                rows_added=_rows_added(info),
                user_metadata=meta,
            )
        )
    return sorted(result, key=lambda c: c.version, reverse=True)


def commit_of_run(settings: Settings, name: str, run_id: str, newest: int = 20) -> Commit | None:
    """The commit a run made, among the table's newest ones (by run_id in its userMetadata), or None.

    Delta silently skips a write whose idempotent-transaction version is not above the recorded one,
    so a writer looks for its own commit afterwards to know whether it wrote.
    """
    for commit in commits(settings, name)[:newest]:
        if (commit.user_metadata or {}).get("run_id") == run_id:
            return commit
    return None


_OFFSET_RE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def parse_timestamp(text: str, zone: str) -> tuple[datetime, str | None]:
    """An ISO-8601 time to an aware UTC datetime.

    A time with an offset (or Z) is honoured exactly; a naive one is read in `zone`.
    Returns (utc_time, zone_used or None when the text carried its own offset).
    """
    raw = text.strip()
    if not raw:
        raise LakehouseError("empty timestamp")
    candidate = raw.replace(" ", "T", 1) if "T" not in raw and " " in raw else raw
    if candidate.endswith(("z", "Z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise LakehouseError(f"cannot read {text!r} as a time: use ISO 8601, e.g. 2025-10-01T09:00:00+09:00") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC), zone
    return parsed.astimezone(UTC), None


def resolve(
    settings: Settings,
    name: str,
    as_of: str | datetime | None = None,
    version: int | None = None,
) -> PointInTime:
    """Which version of a table a read at `as_of` (lake time) or at `version` sees.

    The version current at time T is the newest one committed at or before T. Asking for a time
    before the first commit raises BeforeHistoryError, never a partial answer.
    """
    if as_of is not None and version is not None:
        raise LakehouseError("give either a version or a time, not both")
    history = commits(settings, name)
    if not history:
        raise TableNotFoundError(f"table {name} has no commits")
    if version is not None:
        match = next((c for c in history if c.version == version), None)
        if match is None:
            latest = history[0].version
            oldest = history[-1].version
            raise VersionNotFoundError(
                f"table {name} has no version {version} in its log (versions {oldest} to {latest})"
            )
        return PointInTime(version, match.timestamp, None, None, None)
    if as_of is None:
        return PointInTime(history[0].version, history[0].timestamp, None, None, None)
    if isinstance(as_of, datetime):
        zone_used = None
        if as_of.tzinfo is None:
            as_of, zone_used = as_of.replace(tzinfo=ZoneInfo(settings.timezone)), settings.timezone
        requested_utc, text = as_of.astimezone(UTC), as_of.isoformat()
    else:
        requested_utc, zone_used = parse_timestamp(as_of, settings.timezone)
        text = as_of
    for commit in history:  # newest first
        if commit.timestamp <= requested_utc:
            return PointInTime(commit.version, commit.timestamp, text, requested_utc, zone_used)
    first = history[-1]
    read_in = f" (read in {zone_used})" if zone_used else ""
    raise BeforeHistoryError(
        f"{text}{read_in} = {requested_utc.isoformat()} is before the history of {name}: "
        f"its first retained version {first.version} was committed at "
        f"{first.timestamp.isoformat()}"
    )


def _s3_client(settings: Settings):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.s3_region,
        config=_boto_config(settings),
    )


def _bucket_and_prefix(settings: Settings) -> tuple[str, str]:
    bucket, _, prefix = settings.warehouse[len("s3a://") :].partition("/")
    return bucket, (f"{prefix.rstrip('/')}/" if prefix else "")


def check_warehouse(settings: Settings, create: bool = True) -> None:
    """Fail fast, with the setting to change, when an S3 warehouse cannot be reached.

    Without it a misconfigured endpoint shows up minutes later as retries deep inside Spark.
    A local warehouse must be a writable directory (created here when missing).
    """
    if not settings.on_s3:
        import os
        from pathlib import Path

        root = Path(settings.warehouse)
        if not create and not root.exists():
            # Reachable if the first sync will be able to create it.
            parent = next(p for p in root.parents if p.exists())
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise LakehouseError(f"warehouse {root} cannot be created: {parent} is not writable")
            return
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakehouseError(f"warehouse {root} cannot be created: {exc.strerror}") from None
        if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
            raise LakehouseError(f"warehouse {root} is not a writable directory (LAKEHOUSE_WAREHOUSE)")
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = _bucket_and_prefix(settings)
    endpoint = settings.s3_endpoint or "AWS"
    try:
        _s3_client(settings).head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchBucket"}:
            raise LakehouseError(f"bucket {bucket} does not exist at {endpoint}: create it first") from None
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise LakehouseError(
                f"access to bucket {bucket} at {endpoint} denied ({code}): check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and the bucket policy"
            ) from None
        raise LakehouseError(f"bucket {bucket} at {endpoint}: {exc}") from None
    except BotoCoreError as exc:
        hint = ""
        if not settings.s3_path_style_access:
            hint = (
                "; path-style addressing is off ([s3] path_style_access, LAKEHOUSE_S3_PATH_STYLE): "
                "endpoints without DNS for bucket host names (MinIO, moto, loopback) need it on"
            )
        raise LakehouseError(f"S3 endpoint {endpoint} unreachable for bucket {bucket}: {exc}{hint}") from None


def list_tables(settings: Settings) -> list[str]:
    """Names of the Delta tables under the warehouse root."""
    from pipelines.tables import local_table_names

    if not settings.on_s3:
        return local_table_names(settings)
    bucket, prefix = _bucket_and_prefix(settings)
    client = _s3_client(settings)
    names = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for entry in page.get("CommonPrefixes", []):
                name = entry["Prefix"][len(prefix) :].rstrip("/")
                if valid_table_name(name):
                    names.append(name)
    except Exception as exc:
        raise LakehouseError(f"warehouse {settings.warehouse} unreachable: {exc}") from None
    return sorted(n for n in names if _is_delta(client, bucket, f"{prefix}{n}/_delta_log/"))


def _boto_config(settings: Settings):
    from botocore.config import Config

    return Config(
        s3={"addressing_style": "path" if settings.s3_path_style_access else "virtual"},
        connect_timeout=5,
        retries={"max_attempts": 2},
    )


def _is_delta(client, bucket: str, log_prefix: str) -> bool:
    return client.list_objects_v2(Bucket=bucket, Prefix=log_prefix, MaxKeys=1).get("KeyCount", 0) > 0
