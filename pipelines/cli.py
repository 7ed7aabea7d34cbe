"""The `lakehouse` command line: event store set-up, sync, time travel, history and status."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from datetime import date, datetime
from typing import Any

from pipelines.errors import LakehouseError
from pipelines.settings import load_settings

log = logging.getLogger("lakehouse")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _cell(value: Any, width: int = 48) -> str:
    text = (
        json.dumps(_jsonable(value), ensure_ascii=False)
        if isinstance(value, (dict, list))
        else ("" if value is None else str(_jsonable(value)))
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_rows(rows: list[dict[str, Any]], fmt: str, columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    if fmt == "json":
        print(json.dumps([_jsonable(r) for r in rows], ensure_ascii=False, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k), 10**9) for k in columns})
    else:
        from tabulate import tabulate

        print(tabulate([[_cell(r.get(c)) for c in columns] for r in rows], headers=columns))


def cmd_eventstore_init(args, settings) -> int:
    from pipelines.eventstore import init_eventstore

    applied = init_eventstore(settings.pg_admin_dsn)
    print(f"event store ready ({'applied ' + ', '.join(applied) if applied else 'already up to date'})")
    return 0


def cmd_eventstore_generate(args, settings) -> int:
    from pipelines.eventstore.generate import generate_events

    def progress(done: int, total: int) -> None:
        print(f"\rgenerated {done:,} / {total:,} events", end="", file=sys.stderr, flush=True)

    start = None
    if args.start:
        from pipelines.lake import parse_timestamp

        start, _ = parse_timestamp(args.start, settings.timezone)
    result = generate_events(
        settings.pg_admin_dsn,
        args.events,
        tenants=args.tenants,
        seed=args.seed,
        start=start,
        days=args.days,
        progress=progress,
    )
    print(file=sys.stderr)
    span = ""
    if result.first_event_at:
        span = f", event_at {result.first_event_at:%Y-%m-%d} to {result.last_event_at:%Y-%m-%d}"
    print(f"wrote {result.events:,} events for {result.tenants} tenants{span}")
    return 0


def cmd_sync(args, settings) -> int:
    from pipelines.spark import get_spark
    from pipelines.sync import run_sync

    spark = get_spark(settings, "lakehouse-sync")
    try:
        result = run_sync(spark, settings)
    finally:
        spark.stop()
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        raw = result.raw
        print(
            f"raw_events: +{raw.rows_added} rows, version {raw.delta_version}, "
            f"cursor {raw.cursor_before} -> {raw.cursor_after}, pending {raw.pending_events}"
        )
        for current in result.current:
            print(
                f"{current.table}: {current.aggregates_changed} aggregates changed "
                f"from {current.events_read} events, version {current.delta_version}"
            )
    return 0


def cmd_read(args, settings) -> int:
    from pipelines.read import parse_where, read_table

    result = read_table(
        settings, args.table, as_of=args.as_of, version=args.version, limit=args.limit, where=parse_where(args.where)
    )
    rows = result.rows
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in rows.column_names]
        if unknown:
            raise LakehouseError(f"{args.table} has no column {', '.join(unknown)}")
        rows = rows.select(wanted)
    print(result.describe(), file=sys.stderr if args.format != "table" else sys.stdout)
    _print_rows(rows.to_pylist(), args.format, rows.column_names)
    return 0


def cmd_history(args, settings) -> int:
    from pipelines.read import table_history

    _print_rows(table_history(settings, args.table), args.format)
    return 0


def cmd_status(args, settings) -> int:
    from pipelines.read import status

    report = status(settings)
    if args.format == "json":
        print(json.dumps(_jsonable(report), indent=2, ensure_ascii=False))
        return 0
    print("settings:")
    for key, value in report["settings"].items():
        print(f"  {key:16} {value}")
    store = "reachable" if report["store_reachable"] else f"UNREACHABLE ({report.get('store_error')})"
    lake = "reachable" if report["warehouse_reachable"] else f"UNREACHABLE ({report.get('warehouse_error')})"
    print(f"event store:      {store}")
    print(f"warehouse:        {lake}")
    print(f"store_events:     {report['store_events']}")
    print(f"lake_events:      {report['lake_events']}")
    print(f"cursor:           {report['cursor']}")
    print(f"pending_events:   {report['pending_events']}")
    if report["tables"]:
        print()
        _print_rows(report["tables"], "table")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse",
        description="PostgreSQL event store -> Delta Lake: set-up, sync, time travel, status.",
    )
    parser.add_argument(
        "--profile", help="configuration profile (conf/<profile>.toml); default LAKEHOUSE_PROFILE or local"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    store = sub.add_parser("eventstore", help="the event store: create it, fill it")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    init = store_sub.add_parser("init", help="apply the schema migrations (LAKEHOUSE_PG_ADMIN_DSN)")
    init.set_defaults(func=cmd_eventstore_init)
    gen = store_sub.add_parser("generate", help="write a pharmacy workload")
    gen.add_argument("--events", type=int, required=True, help="how many events")
    gen.add_argument("--tenants", type=int, default=5, help="how many pharmacies (default 5)")
    gen.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    gen.add_argument(
        "--start", help="business time of the first event (default: 2025-01-01, or just after the store's latest event)"
    )
    gen.add_argument(
        "--days",
        type=int,
        help="days of business time to spread the events over (default 540 on an empty store, else 30)",
    )
    gen.set_defaults(func=cmd_eventstore_generate)

    sync = sub.add_parser("sync", help="sync raw_events and build the current tables (Spark)")
    sync.add_argument("--format", choices=["table", "json"], default="table")
    sync.set_defaults(func=cmd_sync)

    read = sub.add_parser("read", help="read a table now, at a version or as of a lake time")
    read.add_argument("table")
    when = read.add_mutually_exclusive_group()
    when.add_argument(
        "--as-of", help="lake time (Delta commit time); ISO 8601; naive times are read in the configured zone"
    )
    when.add_argument("--version", type=int, help="Delta version")
    read.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    read.add_argument(
        "--where", action="append", metavar="COLUMN=VALUE", help="keep rows whose column equals the value (repeatable)"
    )
    read.add_argument("--columns", help="comma-separated columns to show (default all)")
    read.add_argument("--format", choices=["table", "json", "csv"], default="table")
    read.set_defaults(func=cmd_read)

    history = sub.add_parser("history", help="a table's versions with commit times and rows added")
    history.add_argument("table")
    history.add_argument("--format", choices=["table", "json"], default="table")
    history.set_defaults(func=cmd_history)

    stat = sub.add_parser("status", help="settings, reachability, counts, cursor, lag, versions")
    stat.add_argument("--format", choices=["table", "json"], default="table")
    stat.set_defaults(func=cmd_status)
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(profile=args.profile)
        return args.func(args, settings)
    except LakehouseError as exc:
        print(f"lakehouse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lakehouse: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> None:
    code = run(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # deltalake's runtime threads can abort the interpreter at exit ("terminate called without an
    # active exception", delta-rs#2184); leave without running that teardown.
    os._exit(code)


if __name__ == "__main__":
    main()
