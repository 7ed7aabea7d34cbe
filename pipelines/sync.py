"""Whole runs outside any orchestrator: raw_events first, then every <kind>_history and <kind>_current from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pipelines.load import RepairResult, SyncResult, repair_days, sync_raw_events
from pipelines.settings import Settings
from pipelines.silver import SilverResult, build_silver


@dataclass(frozen=True)
class RunResult:
    raw: SyncResult | RepairResult
    silver: list[SilverResult]

    def as_dict(self) -> dict:
        return {"raw_events": self.raw.as_dict(), "silver": [c.as_dict() for c in self.silver]}


def run_sync(spark, settings: Settings, run_id: str | None = None) -> RunResult:
    """Sync raw_events from the event store, then build the history and current tables from it."""
    raw = sync_raw_events(spark, settings, run_id=run_id)
    return RunResult(raw=raw, silver=build_silver(spark, settings))


def run_repair(spark, settings: Settings, first_day: date, last_day: date, run_id: str | None = None) -> RunResult:
    """Heal raw_events for a range of days, then bring the history and current tables up to date."""
    raw = repair_days(spark, settings, first_day, last_day, run_id=run_id)
    return RunResult(raw=raw, silver=build_silver(spark, settings))
