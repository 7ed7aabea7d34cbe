"""Health of the lake, read without a JVM: freshness against the event store, and the table
properties the retention policy requires. The Dagster checks and `lakehouse status` report these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from pipelines import extract, lake
from pipelines.errors import TableNotFoundError
from pipelines.settings import Settings
from pipelines.tables import AUDIT_LOG, RAW_EVENTS, RETENTION_PROPERTIES, SNAPSHOTS, sync_app_id, table_properties


@dataclass(frozen=True)
class Freshness:
    """How far the lake is behind the event store, by business time (event_at)."""

    newest_store_event_at: datetime | None  # the newest committed event PostgreSQL holds
    newest_lake_event_at: datetime | None  # the newest event raw_events holds
    lag_seconds: float  # 0 when the lake holds the newest committed event
    pending_events: int  # committed events at or beyond the cursor
    oldest_open_write: datetime | None  # a write transaction holding the cursor back, if any
    max_lag_minutes: float

    @property
    def ok(self) -> bool:
        return self.lag_seconds <= self.max_lag_minutes * 60

    def summary(self) -> str:
        if self.newest_store_event_at is None:
            return "the event store holds no events yet"
        behind = (
            f"the lake is {self.lag_seconds / 60:.1f} min behind the event store (newest event in PostgreSQL "
            f"{self.newest_store_event_at.isoformat()}, in the lake "
            f"{self.newest_lake_event_at.isoformat() if self.newest_lake_event_at else 'none'}); "
            f"{self.pending_events} events pending"
        )
        if self.ok:
            return behind + f", within {self.max_lag_minutes:g} min"
        reason = (
            f"; a write transaction open since {self.oldest_open_write.isoformat()} holds the cursor back"
            if self.oldest_open_write
            else "; is the incremental schedule running?"
        )
        allowed = f", more than the {self.max_lag_minutes:g} min allowed ([dagster] freshness_max_lag_minutes)"
        return behind + allowed + reason

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def newest_lake_event_at(settings: Settings) -> datetime | None:
    """The newest event_at in raw_events, from the file statistics of the Delta log (no data read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        table = lake.open_table(settings, RAW_EVENTS)
    except TableNotFoundError:
        return None
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0 or "max.event_at" not in actions.column_names:
        return None
    newest = pc.max(actions.column("max.event_at")).as_py()
    return newest.astimezone(UTC) if newest is not None else None


def freshness(settings: Settings) -> Freshness:
    """Compare the newest committed event in PostgreSQL with the newest one in raw_events.

    Every event below the cursor is in the lake, so the store's newest event is the newest of the
    lake's and of the pending ones (an indexed query on tx_id): no scan of the whole store.
    """
    try:
        cursor = lake.open_table(settings, RAW_EVENTS).transaction_version(sync_app_id(settings)) or 0
    except TableNotFoundError:
        cursor = 0
    in_lake = newest_lake_event_at(settings)
    beyond = extract.pending(settings, cursor)
    candidates = [t for t in (in_lake, beyond.newest_event_at) if t is not None]
    newest_store = max(candidates) if candidates else None
    lag = (newest_store - in_lake).total_seconds() if newest_store and in_lake else 0.0
    if newest_store and in_lake is None:
        lag = (datetime.now(UTC) - newest_store).total_seconds()
    return Freshness(
        newest_store,
        in_lake,
        max(lag, 0.0),
        beyond.events,
        extract.oldest_open_write(settings),
        settings.freshness_max_lag_minutes,
    )


# The lake's append-only tables: bronze and the two logs.
APPEND_ONLY_TABLES = (RAW_EVENTS, SNAPSHOTS, AUDIT_LOG)


def expected_properties(settings: Settings, name: str) -> dict[str, str]:
    """The properties a table of the lake is created with and must keep."""
    expected = table_properties(settings, append_only=name in APPEND_ONLY_TABLES)
    expected.pop("delta.enableChangeDataFeed", None)  # a feature, not part of the policy
    if name == AUDIT_LOG:  # written by deltalake, which cannot write in-commit timestamps
        expected.pop("delta.enableInCommitTimestamps", None)
    return expected


@dataclass(frozen=True)
class PolicyReport:
    """Whether a table carries the retention policy and the properties time travel rests on."""

    table: str
    exists: bool
    wrong: dict[str, dict[str, str | None]] = field(default_factory=dict)  # property -> {expected, found}

    @property
    def ok(self) -> bool:
        return self.exists and not self.wrong

    def summary(self) -> str:
        if not self.exists:
            return f"table {self.table} does not exist yet"
        if not self.wrong:
            carried = ["the retention policy"]
            if self.table != AUDIT_LOG:
                carried.append("in-commit timestamps")
            if self.table in APPEND_ONLY_TABLES:
                carried.append("delta.appendOnly")
            return f"{self.table} carries " + (
                ", ".join(carried[:-1]) + " and " + carried[-1] if len(carried) > 1 else carried[0]
            )
        parts = ", ".join(f"{key} is {v['found']!r}, not {v['expected']!r}" for key, v in sorted(self.wrong.items()))
        if set(self.wrong) <= set(RETENTION_PROPERTIES):
            fix = f"`lakehouse vacuum --dry-run --table {self.table}` sets the policy's retention properties again"
        else:
            settings = ", ".join(f"'{key}' = '{v['expected']}'" for key, v in sorted(self.wrong.items()))
            fix = f"set them with ALTER TABLE delta.`<warehouse>/{self.table}` SET TBLPROPERTIES ({settings})"
        return f"{self.table}: {parts}; {fix}"


def policy_report(settings: Settings, name: str) -> PolicyReport:
    """Compare a table's properties with the ones it must carry (read from its Delta log, no JVM)."""
    try:
        configuration = lake.open_table(settings, name).metadata().configuration or {}
    except TableNotFoundError:
        return PolicyReport(name, False)
    wrong = {
        key: {"expected": value, "found": configuration.get(key)}
        for key, value in expected_properties(settings, name).items()
        if configuration.get(key) != value
    }
    return PolicyReport(name, True, wrong)
