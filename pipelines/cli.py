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

from pipelines.errors import LakehouseError, failure_line, one_line
from pipelines.settings import load_settings
from pipelines.tables import RAW_EVENTS, SNAPSHOTS

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


def _with_spark(settings, app_name: str, work):
    """Run work(spark) in this process's SparkSession and stop it afterwards."""
    from pipelines.spark import get_spark

    spark = get_spark(settings, app_name)
    try:
        return work(spark)
    finally:
        spark.stop()


def _at_least(minimum: int):
    """An argparse type: a whole number not below minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


_positive = _at_least(1)
_not_negative = _at_least(0)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _report_run(result, fmt: str, lines: list[str]) -> int:
    """A whole run (raw_events, then the history and current tables) as JSON or as readable lines."""
    if fmt == "json":
        print(json.dumps(result.as_dict(), indent=2, default=str))
        return 0
    for line in lines:
        print(line)
    for silver in result.silver:
        what = "rows" if silver.table.endswith("_history") else "aggregates"
        print(
            f"{silver.table}: {silver.rows_changed} {what} changed "
            f"from {silver.events_read} events, version {silver.delta_version}"
        )
        if silver.added_columns:
            print(f"  new snapshot fields, added as columns: {', '.join(silver.added_columns)}")
        for conflict in silver.conflicts if silver.table.endswith("_history") else ():
            print(
                f"  warning: {conflict['rows']} snapshots hold a {conflict['seen_type']} at {conflict['path']} "
                f"where the table has {conflict['column_type']} (e.g. event {conflict['example_event_id']}); "
                "the raw JSON is kept in aggregate_snapshot",
                file=sys.stderr,
            )
    if result.snapshot is not None:
        print(f"{SNAPSHOTS}: {result.snapshot.describe()}")
    return 0


def cmd_sync(args, settings) -> int:
    from pipelines.sync import run_sync

    result = _with_spark(settings, "lakehouse-sync", lambda spark: run_sync(spark, settings))
    raw = result.raw
    lines = [
        f"raw_events: +{raw.rows_added} rows, version {raw.delta_version}, "
        f"cursor {raw.cursor_before} -> {raw.cursor_after}, pending {raw.pending_events}"
    ]
    if raw.oldest_open_write:
        lines.append(f"  oldest open write transaction began {raw.oldest_open_write} (newer events wait for it)")
    if raw.duplicate_event_ids:
        lines.append(f"  WARNING: event ids held twice by the store, kept once: {', '.join(raw.duplicate_event_ids)}")
    if raw.default_partition_rows:
        lines.append(f"  WARNING: {raw.default_partition_rows} events sit in the default partition")
    return _report_run(result, args.format, lines)


def cmd_repair(args, settings) -> int:
    from pipelines.sync import run_repair

    if args.to_day < args.from_day:
        raise LakehouseError(f"--to {args.to_day} is before --from {args.from_day}")
    result = _with_spark(
        settings, "lakehouse-repair", lambda spark: run_repair(spark, settings, args.from_day, args.to_day)
    )
    raw = result.raw
    line = (
        f"repair {raw.first_day}..{raw.last_day}: read {raw.rows_read} events, "
        f"{raw.rows_added} were missing and are now in raw_events (version {raw.delta_version})"
    )
    return _report_run(result, args.format, [line])


def cmd_reconcile(args, settings) -> int:
    from pipelines.reconcile import reconcile

    if (args.from_day is None) != (args.to_day is None):
        raise LakehouseError("give both --from and --to, or neither")
    result = _with_spark(
        settings, "lakehouse-reconcile", lambda spark: reconcile(spark, settings, args.from_day, args.to_day)
    )
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        print(result.summary())
        for diff in result.mismatched_days:
            print(f"  {diff.day}: store {diff.store_events}, lake {diff.lake_events}")
            if diff.missing_ids:
                print(f"    missing: {', '.join(diff.missing_ids)}")
            if diff.extra_ids:
                print(f"    extra:   {', '.join(diff.extra_ids)}")
        if result.lake_duplicate_ids:
            print(f"  duplicated in raw_events: {', '.join(result.lake_duplicate_ids)}")
        if result.store_duplicate_ids:
            print(f"  held twice by the event store (kept once): {', '.join(result.store_duplicate_ids)}")
        if result.mismatched_days:
            days = result.mismatched_days
            print(f"  to heal: lakehouse repair --from {days[0].day} --to {days[-1].day}")
    return 0 if result.ok else 1


def cmd_vacuum(args, settings) -> int:
    from pipelines.maintenance import check_retention, select_tables, vacuum

    # A retention below the policy and unknown tables are refused before Spark starts.
    days = check_retention(settings, args.retain_days)
    select_tables(settings, args.table)
    results = _with_spark(
        settings,
        "lakehouse-vacuum",
        lambda spark: vacuum(spark, settings, retain_days=days, tables=args.table, dry_run=args.dry_run),
    )
    what = "dry run, nothing deleted" if args.dry_run else "vacuumed"
    print(
        f"{what}: {len(results)} tables, retaining {days} days "
        f"(retention policy {settings.retention_days} days, [lake] retention_days)",
        file=sys.stderr if args.format != "table" else sys.stdout,
    )
    _print_rows(results, args.format)
    return 0


def cmd_optimize(args, settings) -> int:
    from pipelines.maintenance import optimize, select_tables

    select_tables(settings, args.table)  # unknown tables are refused before Spark starts
    results = _with_spark(settings, "lakehouse-optimize", lambda spark: optimize(spark, settings, tables=args.table))
    _print_rows(results, args.format)
    return 0


def cmd_read(args, settings) -> int:
    from pipelines.read import parse_where, read_table

    result = read_table(
        settings,
        args.table,
        as_of=args.as_of,
        version=args.version,
        snapshot_at=args.snapshot_at,
        limit=args.limit,
        where=parse_where(args.where),
        tenant=args.tenant,
    )
    rows = result.rows
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in rows.column_names]
        if unknown:
            raise LakehouseError(
                f"{args.table} has no column {', '.join(unknown)} (columns: {', '.join(rows.column_names)})"
            )
        rows = rows.select(wanted)
    print(result.describe(), file=sys.stderr if args.format != "table" else sys.stdout)
    _print_rows(rows.to_pylist(), args.format, rows.column_names)
    return 0


def cmd_snapshot(args, settings) -> int:
    from pipelines.snapshots import list_snapshots, read_snapshot

    if args.all:
        rows = [
            {
                "sequence": snap.sequence,
                "completed_at": snap.completed_at.isoformat(),
                "run_kind": snap.run_kind,
                "run_id": snap.run_id,
                "tables": len(snap.tables),
                "raw_events": snap.tables.get(RAW_EVENTS),
            }
            for snap in list_snapshots(settings)
        ]
        _print_rows(rows, args.format)
        return 0
    snapshot = read_snapshot(settings, at=args.at)
    if args.format == "json":
        print(json.dumps(snapshot.as_dict(), indent=2, ensure_ascii=False))
        return 0
    print(snapshot.describe())
    _print_rows([{"table": t, "version": v} for t, v in sorted(snapshot.tables.items())], "table")
    return 0


def cmd_sql(args, settings) -> int:
    from pipelines.tables import canonical_uuid
    from pipelines.views import check_query, pinned_versions, run_sql

    # A query that is not one, a tenant id that is not one, and a snapshot or time that does not
    # exist are refused before Spark starts.
    check_query(args.query)
    if args.tenant is not None:
        canonical_uuid(args.tenant, "a tenant id")
    pinned_versions(settings, snapshot_at=args.snapshot_at, as_of=args.as_of)

    def work(spark):
        frame, pinned = run_sql(
            spark, settings, args.query, snapshot_at=args.snapshot_at, as_of=args.as_of, tenant=args.tenant
        )
        shown = frame.limit(args.limit + 1).collect() if args.limit is not None else frame.collect()
        return frame.columns, [row.asDict(recursive=True) for row in shown], pinned

    columns, rows, pinned = _with_spark(settings, "lakehouse-sql", work)
    more = args.limit is not None and len(rows) > args.limit
    rows = rows[: args.limit] if more else rows
    note = f"{pinned.describe()}; {len(rows)} row{'' if len(rows) == 1 else 's'}" + (
        f" shown (more than {args.limit}: raise --limit)" if more else ""
    )
    print(note, file=sys.stderr if args.format != "table" else sys.stdout)
    _print_rows(rows, args.format, columns)
    return 0


def cmd_history(args, settings) -> int:
    from pipelines.read import table_history

    _print_rows(table_history(settings, args.table), args.format)
    return 0


def cmd_audit(args, settings) -> int:
    import getpass

    from pipelines.audit import AggregateNotFoundError, audit

    asked_by = args.asked_by or os.environ.get("LAKEHOUSE_AUDITOR") or getpass.getuser()
    try:
        result = audit(
            settings,
            args.kind,
            args.aggregate_id,
            asked_by=asked_by,
            as_of=args.as_of,
            as_seen_at=args.as_seen_at,
            tenant=args.tenant,
        )
    except AggregateNotFoundError as exc:
        print(f"lakehouse: {one_line(str(exc))}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(_jsonable(result.as_dict()), indent=2, ensure_ascii=False))
        return 0
    _print_audit(result)
    return 0


def _print_audit(result) -> None:
    from tabulate import tabulate

    label = result.kind
    if result.as_of is None:
        when = f"now ({result.as_of_utc.isoformat()})"
    else:
        zone = f"naive time read in {result.as_of_zone}" if result.as_of_zone else "offset given"
        when = f"{result.as_of} = {result.as_of_utc.isoformat()} ({zone})"
    seen = result.seen
    if result.as_seen_at is None:
        lake_line = "as the lake knows it now"
    else:
        zone = f"naive time read in {seen.zone_used}" if seen.zone_used else "offset given"
        lake_line = f"as the lake knew it at {result.as_seen_at} = {seen.requested_utc.isoformat()} ({zone})"
    print(f"{label} {result.aggregate_id}  tenant {result.tenant_id}")
    print(f"business time (event_at): {when}")
    print(
        f"lake time (Delta commit): {lake_line}: {result.seen_table} version {seen.version}, "
        f"committed {seen.commit_time.isoformat()}"
    )
    if result.deleted:
        print("DELETED at this business time (the state below is the one the deletion recorded)")
    print()
    print(tabulate([[k, _cell(v, 80)] for k, v in result.state.items()], headers=["field", "value"]))
    event = result.event
    actor = ", ".join(str(event[c]) for c in event if c.startswith("actor") and event[c] is not None)
    print()
    print(
        f"produced by: {event['event_name']} at {_cell(event['event_at'])}"
        + (f" by {actor}" if actor else "")
        + f" (event {event['event_id']})"
    )
    print()
    print(f"trail: {len(result.trail)} events up to this business time, oldest first")
    columns = list(result.trail[0]) if result.trail else []
    print(tabulate([[_cell(r.get(c), 40) for c in columns] for r in result.trail], headers=columns))


def cmd_status(args, settings) -> int:
    from pipelines.read import status

    report = status(settings)
    if args.format == "json":
        print(json.dumps(_jsonable(report), indent=2, ensure_ascii=False))
        return 0 if report["store_reachable"] and report["warehouse_reachable"] else 1
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
    if report.get("oldest_open_write"):
        print(f"oldest open write transaction began {report['oldest_open_write']} (the cursor waits for it)")
    if report.get("default_partition_rows"):
        print(f"WARNING: {report['default_partition_rows']} events sit in the default partition (create partitions)")
    if report["tables"]:
        print()
        _print_rows(report["tables"], "table")
    return 0 if report["store_reachable"] and report["warehouse_reachable"] else 1


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lakehouse-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse",
        description="PostgreSQL event store -> Delta Lake: set-up, sync, time travel, status.",
    )
    parser.add_argument(
        "--profile", help="configuration profile (conf/<profile>.toml); default LAKEHOUSE_PROFILE or local"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    store = sub.add_parser("eventstore", help="the event store: create it, fill it")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    init = store_sub.add_parser("init", help="apply the schema migrations (LAKEHOUSE_PG_ADMIN_DSN)")
    init.set_defaults(func=cmd_eventstore_init)
    gen = store_sub.add_parser("generate", help="write a pharmacy workload")
    gen.add_argument("--events", type=_not_negative, required=True, help="how many events")
    gen.add_argument("--tenants", type=_positive, default=5, help="how many pharmacies (default 5)")
    gen.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    gen.add_argument(
        "--start", help="business time of the first event (default: 2025-01-01, or just after the store's latest event)"
    )
    gen.add_argument(
        "--days",
        type=_positive,
        help="days of business time to spread the events over (default 540 on an empty store, else 30)",
    )
    gen.set_defaults(func=cmd_eventstore_generate)

    sync = sub.add_parser("sync", help="sync raw_events and build the history and current tables (Spark)")
    sync.add_argument("--format", choices=["table", "json"], default="table")
    sync.set_defaults(func=cmd_sync)

    repair = sub.add_parser(
        "repair", help="re-read a range of days (configured zone) and add the events raw_events lacks (Spark)"
    )
    repair.add_argument("--from", dest="from_day", type=_day, required=True, help="first day, YYYY-MM-DD")
    repair.add_argument("--to", dest="to_day", type=_day, required=True, help="last day, YYYY-MM-DD (inclusive)")
    repair.add_argument("--format", choices=["table", "json"], default="table")
    repair.set_defaults(func=cmd_repair)

    rec = sub.add_parser(
        "reconcile", help="compare raw_events with the event store day by day; exit 1 on a mismatch (Spark)"
    )
    rec.add_argument("--from", dest="from_day", type=_day, help="first day, YYYY-MM-DD (default: all days)")
    rec.add_argument("--to", dest="to_day", type=_day, help="last day, YYYY-MM-DD (inclusive)")
    rec.add_argument("--format", choices=["table", "json"], default="table")
    rec.set_defaults(func=cmd_reconcile)

    vac = sub.add_parser(
        "vacuum",
        help="delete files no version within the retention policy needs; never below the policy (Spark)",
        description="Sets every table's log and deleted-file retention to the policy ([lake] retention_days), "
        "then runs Delta's VACUUM. A retention below the policy is refused before anything is touched.",
    )
    vac.add_argument(
        "--table", action="append", metavar="NAME", help="vacuum only this table (repeatable; default all)"
    )
    vac.add_argument(
        "--retain-days",
        type=_not_negative,
        metavar="DAYS",
        help="keep removed files this many days (default and minimum: the retention policy)",
    )
    vac.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    vac.add_argument("--format", choices=["table", "json"], default="table")
    vac.set_defaults(func=cmd_vacuum)

    opt = sub.add_parser(
        "optimize",
        help="compact small files and lay tables out by tenant and aggregate for fast lookups (Spark)",
        description="History and current tables are rewritten sorted by (tenant_id, aggregate_id) in files of "
        "about [lake] layout_file_mb; raw_events gets OPTIMIZE ZORDER BY (tenant_id, aggregate_id). "
        "Rows and time travel are unchanged.",
    )
    opt.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable; default all)")
    opt.add_argument("--format", choices=["table", "json"], default="table")
    opt.set_defaults(func=cmd_optimize)

    read = sub.add_parser("read", help="read a table now, at a version or as of a lake time")
    read.add_argument("table")
    when = read.add_mutually_exclusive_group()
    when.add_argument(
        "--as-of", help="lake time (Delta commit time); ISO 8601; naive times are read in the configured zone"
    )
    when.add_argument("--version", type=int, help="Delta version")
    when.add_argument(
        "--snapshot-at",
        metavar="T",
        help="the version of the consistent snapshot of the last run completed at or before lake time T",
    )
    read.add_argument("--tenant", help="only this tenant's rows (a table without tenant_id is refused)")
    read.add_argument("--limit", type=_not_negative, default=20, help="rows to show (default 20)")
    read.add_argument(
        "--where", action="append", metavar="COLUMN=VALUE", help="keep rows whose column equals the value (repeatable)"
    )
    read.add_argument("--columns", help="comma-separated columns to show (default all)")
    read.add_argument("--format", choices=["table", "json", "csv"], default="table")
    read.set_defaults(func=cmd_read)

    snap = sub.add_parser(
        "snapshot",
        help="the tables and versions of the last complete run (a consistent snapshot), now or at a lake time",
        description="Every completed run records the Delta version of every table it left behind in _snapshots; "
        "a run that failed half-way records nothing.",
    )
    which = snap.add_mutually_exclusive_group()
    which.add_argument("--at", metavar="T", help="lake time (Delta commit time), ISO 8601; default now")
    which.add_argument("--all", action="store_true", help="list every recorded snapshot instead, newest first")
    snap.add_argument("--format", choices=["table", "json"], default="table")
    snap.set_defaults(func=cmd_snapshot)

    sql = sub.add_parser(
        "sql",
        help="one Spark SQL query over the tables as views pinned to one snapshot (Spark)",
        description="Every table is a view pinned to the consistent snapshot of the last complete run (default: "
        "the latest; --snapshot-at T: the last one completed at or before lake time T), or with --as-of T to "
        "each table's own version at lake time T. Queries only: commands and writes are refused.",
    )
    sql.add_argument("query", help='for example "SELECT count(*) FROM raw_events"')
    pin = sql.add_mutually_exclusive_group()
    pin.add_argument("--snapshot-at", metavar="T", help="lake time of the consistent snapshot (default: the latest)")
    pin.add_argument("--as-of", metavar="T", help="per-table time travel to lake time T (not a consistent snapshot)")
    sql.add_argument("--tenant", help="bind the query to one tenant: views hold only its rows, nothing else is read")
    sql.add_argument("--limit", type=_not_negative, default=100, help="rows to show (default 100)")
    sql.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sql.set_defaults(func=cmd_sql)

    history = sub.add_parser("history", help="a table's versions with commit times and rows added")
    history.add_argument("table")
    history.add_argument("--format", choices=["table", "json"], default="table")
    history.set_defaults(func=cmd_history)

    aud = sub.add_parser(
        "audit",
        help="an aggregate's state at a business time, the event that produced it and its trail (no Spark)",
        description="Answers from <kind>_history; every lookup is appended to the _audit_log table. "
        "Exit 3 when the aggregate is not found.",
    )
    aud.add_argument("kind", help="aggregate kind, e.g. patient or Patient")
    aud.add_argument("aggregate_id")
    aud.add_argument(
        "--as-of", help="business time (event_at), default now; ISO 8601, naive times in the configured zone"
    )
    aud.add_argument(
        "--as-seen-at", help="lake time (Delta commit time): answer from the lake as it was then; default now"
    )
    aud.add_argument("--tenant", help="bind the lookup to one tenant; another tenant's aggregate is not found")
    aud.add_argument("--asked-by", help="who asks, for the access log (default LAKEHOUSE_AUDITOR, else the OS user)")
    aud.add_argument("--json", action="store_true", help="print JSON instead of tables")
    aud.set_defaults(func=cmd_audit)

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
        print(f"lakehouse: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = failure_line(exc)
        if line is None:
            raise
        if args.verbose:
            log.exception("full trace")
        print(f"lakehouse: error: {line} (run with -v for the full trace)", file=sys.stderr)
        return 1
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
