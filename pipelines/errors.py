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
