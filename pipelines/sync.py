"""Whole runs outside any orchestrator: raw_events, then every <kind>_history and <kind>_current, then the snapshot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from pipelines.lake import delta_version
from pipelines.load import RepairResult, SyncResult, read_cursor, repair_days, sync_raw_events
from pipelines.settings import Settings
from pipelines.silver import SilverResult, build_silver
from pipelines.snapshots import Snapshot, record_snapshot
from pipelines.tables import RAW_EVENTS


@dataclass(frozen=True)
class RunResult:
    raw: SyncResult | RepairResult
    silver: list[SilverResult]
    snapshot: Snapshot | None = None

    def as_dict(self) -> dict:
        return {
            "raw_events": self.raw.as_dict(),
            "silver": [c.as_dict() for c in self.silver],
            "snapshot": self.snapshot.as_dict() if self.snapshot else None,
        }


def build_and_record(
    spark, settings: Settings, run_id: str, run_kind: str
) -> tuple[list[SilverResult], Snapshot | None]:
    """Bring the history and current tables up to date, then record the run's snapshot.

    The snapshot is the run's last write: a run that fails before it leaves no snapshot, so no
    consistent reader ever sees its partial versions.
    """
    silver = build_silver(spark, settings, run_id=run_id)
    raw_version = next((r.raw_events_version for r in silver), None)
    if raw_version is None:
        raw_version = delta_version(settings, RAW_EVENTS)
    snapshot = record_snapshot(spark, settings, run_id, run_kind, raw_version, cursor=read_cursor(settings))
    return silver, snapshot


def run_sync(spark, settings: Settings, run_id: str | None = None) -> RunResult:
    """Sync raw_events from the event store, build the history and current tables, record the snapshot."""
    run_id = run_id or str(uuid.uuid4())
    raw = sync_raw_events(spark, settings, run_id=run_id)
    return RunResult(raw, *build_and_record(spark, settings, run_id, "sync"))


def run_repair(spark, settings: Settings, first_day: date, last_day: date, run_id: str | None = None) -> RunResult:
    """Heal raw_events for a range of days, bring the history and current tables up to date, record the snapshot."""
    run_id = run_id or str(uuid.uuid4())
    raw = repair_days(spark, settings, first_day, last_day, run_id=run_id)
    return RunResult(raw, *build_and_record(spark, settings, run_id, "repair"))
