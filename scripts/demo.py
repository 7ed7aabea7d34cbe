"""make demo: event store -> Dagster -> Delta Lake, twice, then one table now and as of run one.

Runs the real commands a user would run (lakehouse, dagster) against the configured event store
and warehouse. Safe to run again: the generator continues the store, the sync is incremental.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COLUMNS = (
    "aggregate_id,name_family,name_given,address_prefecture,address_city,address_line1,version,event_name,event_at"
)


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str, capture: bool = False) -> str:
    pipe = subprocess.PIPE if capture else None
    completed = subprocess.run(args, cwd=PROJECT, check=True, text=True, stdout=pipe, stderr=pipe)
    return completed.stdout if capture else ""


def lakehouse(*args: str, capture: bool = False) -> str:
    return run(str(BIN / "lakehouse"), *args, capture=capture)


def materialize() -> None:
    """One incremental run of sync_job (every asset and check), as the schedule launches it."""
    started = time.monotonic()
    subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "dagster_project", "-j", "sync_job"],
        cwd=PROJECT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    print(f"sync_job: every asset and check in {time.monotonic() - started:.0f}s", flush=True)


def main() -> int:
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT / ".local" / "dagster"))
    step("event store: schema migrations")
    lakehouse("eventstore", "init")
    store = json.loads(lakehouse("status", "--format", "json", capture=True))
    first_batch = "20000" if not store.get("store_events") else "2000"

    step(f"event store: {first_batch} pharmacy events")
    lakehouse("eventstore", "generate", "--events", first_batch, "--tenants", "5", "--seed", "42")

    step("Dagster: materialize raw_events and the history and current tables (run 1)")
    materialize()
    first_run_done = datetime.now(UTC)
    time.sleep(1.1)

    step("event store: 2000 more events (address changes, new prescriptions, ...)")
    lakehouse("eventstore", "generate", "--events", "2000", "--tenants", "5", "--seed", "43", "--days", "30")

    step("Dagster: materialize again (run 2, incremental)")
    materialize()

    # A patient whose address changed in the second batch: the lake shows both states.
    changed = json.loads(
        lakehouse(
            "read",
            "raw_events",
            "--where",
            "event_name=PatientAddressChanged",
            "--limit",
            "100000",
            "--format",
            "json",
            "--columns",
            "aggregate_id,event_at",
            capture=True,
        )
    )
    newest = max(changed, key=lambda row: row["event_at"]) if changed else None
    as_of = first_run_done.isoformat()

    step("patient_current now")
    where = ["--where", f"aggregate_id={newest['aggregate_id']}"] if newest else ["--limit", "5"]
    lakehouse("read", "patient_current", *where, "--columns", COLUMNS)

    step(f"patient_current as of the end of run 1 ({as_of}, lake time)")
    lakehouse("read", "patient_current", "--as-of", as_of, *where, "--columns", COLUMNS)

    step("raw_events now and as of run 1 (row counts)")
    for extra in ([], ["--as-of", as_of]):
        out = subprocess.run(
            [str(BIN / "lakehouse"), "read", "raw_events", "--limit", "0", *extra],
            cwd=PROJECT,
            check=True,
            text=True,
            capture_output=True,
        ).stdout
        print(out.splitlines()[0])

    changed_at = None
    if newest:
        changed_at = datetime.fromisoformat(str(newest["event_at"]).replace("Z", "+00:00"))
        before = (changed_at - timedelta(seconds=1)).isoformat()
        step(f"audit: patient {newest['aggregate_id']} one second before its address changed (business time)")
        lakehouse("audit", "patient", newest["aggregate_id"], "--as-of", before, "--asked-by", "demo")
        step("audit: the same patient now, as the lake knew it at the end of run 1 (lake time)")
        lakehouse("audit", "patient", newest["aggregate_id"], "--as-seen-at", as_of, "--asked-by", "demo")

    step("consistent snapshots: one per completed run, with the Delta version of every table")
    lakehouse("snapshot", "--all")

    step(f"Spark SQL over every table pinned to the snapshot of run 1 (--snapshot-at {as_of})")
    lakehouse(
        "sql", "SELECT count(*) AS events, count(DISTINCT tenant_id) AS tenants FROM raw_events", "--snapshot-at", as_of
    )

    step("status")
    lakehouse("status")
    ui_port = os.environ.get("UI_PORT", "3000")
    if newest and changed_at:
        later = (changed_at + timedelta(days=1)).date().isoformat()
        print(f"\nTry: .venv/bin/lakehouse audit patient {newest['aggregate_id']} --as-of {later} --json")
    print(f"\nNext: .venv/bin/lakehouse --help, make ui (Dagster on http://127.0.0.1:{ui_port}), make stop")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        if exc.stderr:
            print(exc.stderr[-4000:], file=sys.stderr)
        print(f"demo: step failed: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        sys.exit(1)
