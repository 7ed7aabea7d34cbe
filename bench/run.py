"""make bench: measurements side by side in one run, printed as a markdown table and saved as JSON.

Part implemented so far (issue 5): audit point lookups on the configured lake (the demo's, by
default; `make demo` runs first when the lake has no patient_history yet).

- `lakehouse audit` as a user runs it: wall time of the whole command, next to the wall time of the
  same executable doing nothing but start (`lakehouse --version`), so that the time after start-up
  of the command itself is the difference.
- The same lookups in-process through the library (`pipelines.audit.audit`, JVM-free), which is
  what the command does after start-up.

Usage: .venv/bin/python bench/run.py [--lookups N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(PROJECT))

from pipelines import lake  # noqa: E402
from pipelines.audit import audit  # noqa: E402
from pipelines.read import read_table  # noqa: E402
from pipelines.settings import load_settings  # noqa: E402

KIND = "patient"
HISTORY = f"{KIND}_history"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def machine() -> dict:
    memory = None
    try:
        with open("/proc/meminfo") as handle:
            memory = int(handle.readline().split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for package in ("deltalake", "pyarrow", "pyspark", "delta-spark", "dagster", "psycopg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def pick_lookups(settings, count: int, seed: int) -> list[tuple[str, str, str]]:
    """(tenant, aggregate, as_of) for random aggregates at random business times inside their history."""
    rows = read_table(settings, HISTORY, limit=None).rows.select(["tenant_id", "aggregate_id", "valid_from"])
    spans: dict[tuple[str, str], list[datetime]] = {}
    for tenant, aggregate, valid_from in zip(*(rows.column(i).to_pylist() for i in range(3)), strict=True):
        span = spans.setdefault((tenant, aggregate), [valid_from, valid_from])
        span[0], span[1] = min(span[0], valid_from), max(span[1], valid_from)
    chooser = random.Random(seed)
    keys = chooser.sample(sorted(spans), min(count, len(spans)))
    result = []
    for tenant, aggregate in keys:
        first, last = spans[(tenant, aggregate)]
        moment = first + timedelta(seconds=chooser.uniform(0, (last - first).total_seconds() + 86400))
        result.append((tenant, aggregate, moment.astimezone(UTC).isoformat()))
    return result


def timed_command(*args: str) -> float:
    started = time.perf_counter()
    completed = subprocess.run(args, cwd=PROJECT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed: {completed.stderr.strip()}")
    return elapsed


def bench_lookups(settings, count: int, seed: int) -> dict:
    lookups = pick_lookups(settings, count, seed)
    lakehouse = str(BIN / "lakehouse")
    startup = [timed_command(lakehouse, "--version") for _ in range(min(count, 10))]
    command = [
        timed_command(lakehouse, "audit", KIND, aggregate, "--as-of", as_of, "--tenant", tenant, "--asked-by", "bench")
        for tenant, aggregate, as_of in lookups
    ]
    in_process = []
    for tenant, aggregate, as_of in lookups:
        started = time.perf_counter()
        audit(settings, KIND, aggregate, asked_by="bench", as_of=as_of, tenant=tenant)
        in_process.append(time.perf_counter() - started)
    start_p50 = statistics.median(startup)
    return {
        "lookups": len(lookups),
        "history_version": lake.delta_version(settings, HISTORY),
        "history_rows": read_table(settings, HISTORY, limit=0).total_rows,
        "command_wall_s": {"p50": statistics.median(command), "p95": percentile(command, 0.95)},
        "command_startup_s": {"p50": start_p50},
        "command_after_startup_s": {
            "p50": statistics.median(command) - start_p50,
            "p95": percentile(command, 0.95) - start_p50,
        },
        "library_s": {"p50": statistics.median(in_process), "p95": percentile(in_process, 0.95)},
    }


def ensure_lake(settings) -> None:
    if lake.delta_version(settings, HISTORY) is not None:
        return
    print(f"bench: the lake at {settings.warehouse} has no {HISTORY}: running the demo first", flush=True)
    subprocess.run([sys.executable, str(PROJECT / "scripts" / "demo.py")], cwd=PROJECT, check=True)


def table(results: dict) -> str:
    lookups = results["audit_lookups"]
    ms = 1000.0
    lines = [
        f"Audit point lookups: {lookups['lookups']} random {KIND} aggregates at random business times, "
        f"{HISTORY} version {lookups['history_version']} ({lookups['history_rows']} rows)",
        "",
        "| measure | p50 | p95 | note |",
        "|---|---|---|---|",
        "| `lakehouse audit` command, wall | {:.0f} ms | {:.0f} ms | whole process |".format(
            lookups["command_wall_s"]["p50"] * ms, lookups["command_wall_s"]["p95"] * ms
        ),
        "| `lakehouse --version`, wall | {:.0f} ms | | start-up of the same executable |".format(
            lookups["command_startup_s"]["p50"] * ms
        ),
        "| command after start-up | {:.0f} ms | {:.0f} ms | target: under 1000 ms |".format(
            lookups["command_after_startup_s"]["p50"] * ms, lookups["command_after_startup_s"]["p95"] * ms
        ),
        "| library `audit()` (JVM-free, logged) | {:.0f} ms | {:.0f} ms | in-process |".format(
            lookups["library_s"]["p50"] * ms, lookups["library_s"]["p95"] * ms
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=20, help="random aggregates to look up (default 20)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(PROJECT / "bench" / "results"), help="directory for the JSON result")
    args = parser.parse_args()
    if args.lookups < 1:
        parser.error("--lookups must be at least 1")
    settings = load_settings()
    ensure_lake(settings)
    started = datetime.now(UTC)
    results = {
        "started_at": started.isoformat(),
        "machine": machine(),
        "warehouse": settings.warehouse,
        "audit_lookups": bench_lookups(settings, args.lookups, args.seed),
    }
    print()
    print(table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{platform.node() or 'host'}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresult: {path.relative_to(PROJECT) if path.is_relative_to(PROJECT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
