"""One whole incremental run outside any orchestrator: raw_events, then every <kind>_current."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.load import SyncResult, sync_raw_events
from pipelines.settings import Settings
from pipelines.silver import CurrentResult, build_current


@dataclass(frozen=True)
class RunResult:
    raw: SyncResult
    current: list[CurrentResult]

    def as_dict(self) -> dict:
        return {"raw_events": self.raw.as_dict(), "current": [c.as_dict() for c in self.current]}


def run_sync(spark, settings: Settings, run_id: str | None = None) -> RunResult:
    """Sync raw_events from the event store, then build the current-state tables from it."""
    raw = sync_raw_events(spark, settings, run_id=run_id)
    return RunResult(raw=raw, current=build_current(spark, settings))
