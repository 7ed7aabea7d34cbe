"""Consistent snapshots across tables: the `_snapshots` manifest, one row per completed run.

Delta makes each table's commit atomic, but a reader who time-travels every table to the same
lake time T can still see half a run: T may fall after the run's history commit and before its
current-state commit. So every run that completes appends one row to `_snapshots`, in one atomic
commit, naming the Delta version of every table the lake serves (raw_events at the version the
silver build consumed, every <kind>_history and <kind>_current at its version after the build).
A run that fails half-way appends nothing, so no snapshot ever names its partial versions.

`read_snapshot(at=T)` answers with the last row committed at or before lake time T. Rows are
ordered by a sequence number that is also the commit's idempotent-write transaction version
(appId lakehouse-snapshot): two runs that record at the same moment conflict in Delta and the
loser records again with the next number, so sequence order is commit order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipelines import lake
from pipelines.errors import BeforeHistoryError, LakehouseError, TableNotFoundError
from pipelines.settings import Settings
from pipelines.spark import WriteConflict, is_conflict, retry_on_conflict
from pipelines.tables import (
    CURRENT_APP_ID,
    RAW_EVENTS,
    SNAPSHOT_APP_ID,
    SNAPSHOTS,
    is_served,
    table_path,
    table_properties,
)

log = logging.getLogger(__name__)

SNAPSHOTS_DDL = """
    sequence          BIGINT              NOT NULL,
    run_id            STRING              NOT NULL,
    run_kind          STRING              NOT NULL,
    recorded_at       TIMESTAMP           NOT NULL,
    raw_events_cursor BIGINT,
    tables            MAP<STRING, BIGINT> NOT NULL
"""


class NoSnapshotError(LakehouseError):
    """No run had completed at the requested lake time."""


@dataclass(frozen=True)
class Snapshot:
    """The tables of one completed run, each at the Delta version the run left it at."""

    sequence: int
    run_id: str
    run_kind: str  # sync, repair, dagster
    completed_at: datetime  # lake time: the commit time of the row in _snapshots
    snapshots_version: int  # the _snapshots version that recorded it
    tables: dict[str, int] = field(default_factory=dict)
    raw_events_cursor: int | None = None
    requested: str | None = None  # the lake time asked for, as given
    requested_utc: datetime | None = None
    zone_used: str | None = None  # the zone a naive time was read in

    def as_dict(self) -> dict:
        return {
            "sequence": self.sequence,
            "run_id": self.run_id,
            "run_kind": self.run_kind,
            "completed_at": self.completed_at.isoformat(),
            "snapshots_version": self.snapshots_version,
            "raw_events_cursor": self.raw_events_cursor,
            "tables": dict(sorted(self.tables.items())),
            "requested": self.requested,
            "requested_utc": self.requested_utc.isoformat() if self.requested_utc else None,
            "naive_time_read_in": self.zone_used,
        }

    def describe(self) -> str:
        text = (
            f"snapshot {self.sequence} of run {self.run_id} ({self.run_kind}), completed "
            f"{self.completed_at.isoformat()} (lake time), {len(self.tables)} tables"
        )
        if self.requested is not None:
            zone = f"naive time read in {self.zone_used}" if self.zone_used else "offset given"
            text += f"; the last complete run at or before {self.requested} = {self.requested_utc.isoformat()} ({zone})"
        return text


def ensure_snapshots_table(spark, settings: Settings) -> str:
    path = table_path(settings, SNAPSHOTS)
    props = ", ".join(f"'{k}' = '{v}'" for k, v in table_properties(settings, append_only=True).items())
    create = f"CREATE TABLE IF NOT EXISTS delta.`{path}` ({SNAPSHOTS_DDL}) USING delta TBLPROPERTIES ({props})"
    retry_on_conflict(lambda: spark.sql(create), f"creating {SNAPSHOTS}")
    return path


class OvertakenError(LakehouseError):
    """Another run has built tables past this run's raw_events version; its own snapshot covers them."""


def served_versions(settings: Settings, raw_version: int) -> dict[str, int]:
    """raw_events at raw_version and every other served table at its latest version.

    Raises:
        OvertakenError: a history or current table has already consumed a raw_events version
            above raw_version (a later run wrote it), so these versions would not agree.
    """
    versions = {RAW_EVENTS: raw_version}
    for name in lake.list_tables(settings):
        if is_served(name) and name != RAW_EVENTS:
            table = lake.open_table(settings, name)
            consumed = table.transaction_version(CURRENT_APP_ID)
            if consumed is not None and consumed > raw_version:
                raise OvertakenError(
                    f"{name} is already built from raw_events version {consumed}, past this run's {raw_version}"
                )
            versions[name] = table.version()
    return versions


def record_snapshot(
    spark, settings: Settings, run_id: str, run_kind: str, raw_version: int | None, cursor: int | None = None
) -> Snapshot | None:
    """Append the snapshot of a run that has just completed; None when the lake has no raw_events yet.

    Call it only after every table write of the run has committed: the row names each served
    table at its latest version, and raw_events at raw_version (the version the silver build read).

    Args:
        run_id: the run's id (Dagster's run id, or the id of a `lakehouse sync`).
        run_kind: what completed: sync, repair, dagster.
        raw_version: the raw_events version the run's history and current tables are built from.
        cursor: the raw_events sync cursor after the run, recorded for people.
    """
    if raw_version is None:
        return None
    path = ensure_snapshots_table(spark, settings)

    def attempt() -> Snapshot:
        # Recomputed on every attempt: after a conflict the other run's row is the previous one.
        sequence = (lake.transaction_version(settings, SNAPSHOTS, SNAPSHOT_APP_ID) or 0) + 1
        tables = served_versions(settings, raw_version)
        row = [(sequence, run_id, run_kind, datetime.now(UTC), cursor, tables)]
        frame = spark.createDataFrame(row, SNAPSHOTS_DDL.replace("NOT NULL", ""))
        metadata = json.dumps({"run_id": run_id, "sequence": sequence, "run_kind": run_kind})
        try:
            (
                frame.write.format("delta")
                .mode("append")
                .option("txnAppId", SNAPSHOT_APP_ID)
                .option("txnVersion", sequence)
                .option("userMetadata", metadata)
                .save(path)
            )
        except Exception as exc:
            if not is_conflict(exc):
                raise
            raise WriteConflict(f"another run recorded snapshot {sequence} first") from exc
        mine = lake.commit_of_run(settings, SNAPSHOTS, run_id)
        if mine is None or (mine.user_metadata or {}).get("sequence") != sequence:
            # Delta skipped the write: another run took this sequence number between our read and
            # our commit. Record again with the next one.
            raise WriteConflict(f"another run recorded snapshot {sequence} first")
        # What was written, as read_snapshot would read it back (completion: the commit's own time).
        return Snapshot(sequence, run_id, run_kind, mine.timestamp, mine.version, tables, cursor)

    try:
        snapshot = retry_on_conflict(attempt, f"recording the {SNAPSHOTS} row", attempts=10)
    except OvertakenError as exc:
        # Only with two runs at once (the schedule skips while a run is unfinished): recording would
        # pair this run's raw_events with another run's tables. The later run records its own.
        log.warning("%s: no snapshot for run %s: %s", SNAPSHOTS, run_id, exc)
        return None
    log.info(
        "%s: recorded snapshot %d of run %s (%d tables)", SNAPSHOTS, snapshot.sequence, run_id, len(snapshot.tables)
    )
    return snapshot


def read_snapshot(settings: Settings, at: str | datetime | None = None) -> Snapshot:
    """The snapshot of the last run that completed at or before lake time `at` (default: now).

    Raises:
        NoSnapshotError: no run had completed by then (or none ever did).
    """
    try:
        point = lake.resolve(settings, SNAPSHOTS, as_of=at)
    except TableNotFoundError:
        raise NoSnapshotError(
            f"no run has completed yet: the lake has no {SNAPSHOTS} table (run a sync first)"
        ) from None
    except BeforeHistoryError as exc:
        raise NoSnapshotError(f"no run had completed by then: {exc}") from None
    table = lake.open_table(settings, SNAPSHOTS, version=point.version)
    sequence = table.transaction_version(SNAPSHOT_APP_ID)
    if sequence is None:
        raise NoSnapshotError(f"no run had completed at {_when(point)}: {SNAPSHOTS} was still empty")
    import pyarrow.compute as pc

    rows, _ = lake.to_arrow(
        SNAPSHOTS, point.version, table.to_pyarrow_dataset(), filter=pc.field("sequence") == sequence
    )
    if rows.num_rows != 1:
        raise LakehouseError(f"{SNAPSHOTS} version {point.version} holds {rows.num_rows} rows for snapshot {sequence}")
    row = rows.to_pylist()[0]
    recorded = next(
        (
            c
            for c in lake.commits(settings, SNAPSHOTS)
            if c.version <= point.version and (c.user_metadata or {}).get("sequence") == sequence
        ),
        None,
    )
    return Snapshot(
        sequence=sequence,
        run_id=row["run_id"],
        run_kind=row["run_kind"],
        completed_at=recorded.timestamp if recorded else point.commit_time,
        snapshots_version=recorded.version if recorded else point.version,
        tables=dict(row["tables"]),
        raw_events_cursor=row["raw_events_cursor"],
        requested=point.requested,
        requested_utc=point.requested_utc,
        zone_used=point.zone_used,
    )


def list_snapshots(settings: Settings) -> list[Snapshot]:
    """Every recorded snapshot, newest first."""
    try:
        table = lake.open_table(settings, SNAPSHOTS)
    except TableNotFoundError:
        return []
    times = {(c.user_metadata or {}).get("sequence"): c for c in lake.commits(settings, SNAPSHOTS) if c.user_metadata}
    result = []
    for row in table.to_pyarrow_dataset().to_table().to_pylist():
        commit = times.get(row["sequence"])
        result.append(
            Snapshot(
                sequence=row["sequence"],
                run_id=row["run_id"],
                run_kind=row["run_kind"],
                completed_at=commit.timestamp if commit else row["recorded_at"],
                snapshots_version=commit.version if commit else -1,
                tables=dict(row["tables"]),
                raw_events_cursor=row["raw_events_cursor"],
            )
        )
    return sorted(result, key=lambda s: s.sequence, reverse=True)


def _when(point: lake.PointInTime) -> str:
    return point.requested_utc.isoformat() if point.requested_utc else "now"
