"""Errors the library raises on purpose: each carries a one-line message meant for a person."""

import re


class LakehouseError(Exception):
    """Base class: a failure with a message that says what went wrong and what to do."""


class ConfigError(LakehouseError):
    """A setting is missing or invalid."""


class SourceError(LakehouseError):
    """The event store is unreachable, misconfigured or hides rows from the pipeline."""


class TableNotFoundError(LakehouseError):
    """The requested Delta table does not exist in the warehouse."""


class BeforeHistoryError(LakehouseError):
    """A time-travel read asked for a time before the table's first version."""


class VersionNotFoundError(LakehouseError):
    """A time-travel read asked for a version the table does not have (or no longer retains)."""


class ConcurrentSyncError(LakehouseError):
    """Another run advanced the cursor while this one was working; nothing was written."""


class DataFilesMissingError(LakehouseError):
    """A version's log is there but one of its data files is gone (vacuumed or removed by hand)."""


class TenantScopeError(LakehouseError):
    """A tenant-bound reader was asked for something other than its tenant's rows."""


def one_line(exc: BaseException | str) -> str:
    """A driver's multi-line error message (colour codes, arrows and all) as one plain line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("↳", " ")
    return " ".join(text.split()) or type(exc).__name__


# Exceptions of these packages are failures of the systems the pipeline drives (Spark, Delta, S3,
# Arrow), not bugs of the pipeline: their first line says what went wrong.
_SYSTEM_MODULES = ("pyspark", "py4j", "delta", "deltalake", "botocore", "pyarrow")


def from_system(exc: BaseException) -> bool:
    return (type(exc).__module__ or "").startswith(_SYSTEM_MODULES)


def failure_line(exc: BaseException) -> str | None:
    """What went wrong, in one line, for the library's own errors and those of Spark, Delta and S3.

    None for anything else: an unexpected error whose full trace the caller should keep.
    """
    if isinstance(exc, LakehouseError):
        return one_line(str(exc))
    if not from_system(exc):
        return None
    # Spark's own errors carry pages of JVM frames; the first line says what failed.
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    what = "Spark" if type(exc).__module__.startswith(("pyspark", "py4j", "delta.")) else "the lake"
    return f"{what} failed: {one_line(first)[:500]}"
