"""Reconciliation: does raw_events hold exactly the events the store says it should, day by day?

The lake claims what its cursor covers: in transaction mode every event whose writing transaction
lies below the cursor; in lookback mode every event up to the newest event_at synced. A backfill
claims more for its days (every transaction below the horizon it read up to), so a check of a
backfill's days passes that horizon as the bound. Both sides are counted per day (event_at's date
in the configured zone) below the bound, at one Delta version; rows a backfill wrote beyond the
cursor are compared once the cursor has passed them. For the days that differ, the event id sets
are compared and the missing and extra ids listed. A repair of those days
(pipelines.load.repair_days) heals a gap. Event ids held more than once by raw_events are listed
apart (unique_ok).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date

from pipelines import extract
from pipelines.eventstore import connect
from pipelines.lake import open_table
from pipelines.load import day_bounds
from pipelines.settings import Settings
from pipelines.tables import RAW_EVENTS, sync_app_id, table_path

LISTED_IDS = 50


@dataclass(frozen=True)
class DayDiff:
    day: str
    store_events: int
    lake_events: int
    missing_ids: list[str]  # in the store, not in the lake (first LISTED_IDS)
    extra_ids: list[str]  # in the lake, not in the store (first LISTED_IDS)
    missing_count: int
    extra_count: int


@dataclass(frozen=True)
class Reconciliation:
    raw_version: int | None
    cursor_mode: str
    cursor: int
    first_day: str | None
    last_day: str | None
    days_checked: int
    store_events: int
    lake_events: int
    mismatched_days: list[DayDiff] = field(default_factory=list)
    lake_duplicate_ids: list[str] = field(default_factory=list)
    store_duplicate_ids: list[str] = field(default_factory=list)
    bound: int | None = None  # compared below this (the cursor, or a backfill's horizon)
    day_counts: dict[str, list[int]] = field(default_factory=dict)  # day -> [store events, lake events]

    @property
    def matches(self) -> bool:
        """Every day below the bound holds the same events in the store and the lake."""
        return not self.mismatched_days

    @property
    def unique_ok(self) -> bool:
        """No event id appears more than once in raw_events."""
        return not self.lake_duplicate_ids

    @property
    def ok(self) -> bool:
        return self.matches and self.unique_ok

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        if self.ok:
            return (
                f"raw_events version {self.raw_version} matches the event store: {self.lake_events} events "
                f"over {self.days_checked} days"
            )
        parts = []
        if self.mismatched_days:
            missing = sum(d.missing_count for d in self.mismatched_days)
            extra = sum(d.extra_count for d in self.mismatched_days)
            days = ", ".join(d.day for d in self.mismatched_days[:5])
            parts.append(f"{len(self.mismatched_days)} day(s) differ ({days}): {missing} missing, {extra} extra")
        if self.lake_duplicate_ids:
            parts.append(f"{len(self.lake_duplicate_ids)} event id(s) appear more than once in raw_events")
        return f"raw_events version {self.raw_version} does not match the event store: " + "; ".join(parts)


def _store_filter(settings: Settings, cursor: int, first: date | None, last: date | None) -> tuple[str, list]:
    where, params = [], []
    if settings.cursor_mode == "lookback":
        where.append("event_at <= %s")
        params.append(extract._from_micros(cursor))
    else:
        where.append("tx_id < %s::text::xid8")
        params.append(str(cursor))
    if first is not None and last is not None:
        start, end = day_bounds(settings, first, last)
        where.append("event_at >= %s AND event_at < %s")
        params += [start, end]
    return " AND ".join(where), params


def reconcile(
    spark,
    settings: Settings,
    first_day: date | None = None,
    last_day: date | None = None,
    bound: int | None = None,
) -> Reconciliation:
    """Compare raw_events with the event store per day, optionally only for [first_day, last_day].

    Args:
        bound: what the lake claims, in the cursor's unit: every transaction below it (lookback
            mode: every event_at up to it). Default the cursor; a check of a backfill's days passes
            the horizon that backfill read up to. Never above what was read, or the store's newer
            events would count as missing.
    """
    from pyspark.sql import functions as F

    table = open_table(settings, RAW_EVENTS)
    version = table.version()
    cursor = table.transaction_version(sync_app_id(settings)) or 0
    bound = cursor if bound is None else bound
    every_row = (
        spark.read.format("delta")
        .option("versionAsOf", version)
        .load(table_path(settings, RAW_EVENTS))
        .where(F.col("source") == settings.source_name)
    )
    rows = every_row
    if first_day is not None and last_day is not None:
        rows = rows.where(F.col("event_date").between(F.lit(first_day), F.lit(last_day)))
    if settings.cursor_mode == "lookback":
        lake = rows.where(F.col("event_at") <= F.lit(extract._from_micros(bound)))
    else:
        lake = rows.where(F.col("tx_id") < F.lit(bound))
    lake_counts = {str(r[0]): int(r[1]) for r in lake.groupBy("event_date").count().collect()}
    lake_dups = sorted(
        r[0] for r in rows.groupBy("event_id").count().where("count > 1").select("event_id").limit(LISTED_IDS).collect()
    )

    where, params = _store_filter(settings, bound, first_day, last_day)
    zone = settings.timezone
    table_name = extract._table(settings)
    with connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {int(settings.statement_timeout_ms)}")
        extract.check_visibility(conn, settings)
        store_counts = {
            str(r[0]): int(r[1])
            for r in conn.execute(
                f"SELECT (event_at AT TIME ZONE %s)::date, count(DISTINCT event_id) FROM {table_name}"
                f" WHERE {where} GROUP BY 1",
                [zone, *params],
            ).fetchall()
        }
        store_dups = [
            r[0]
            for r in conn.execute(
                f"SELECT event_id::text FROM {table_name} WHERE {where} GROUP BY event_id HAVING count(*) > 1 LIMIT %s",
                [*params, LISTED_IDS],
            ).fetchall()
        ]
        days = sorted(set(store_counts) | set(lake_counts))
        differing = [d for d in days if store_counts.get(d, 0) != lake_counts.get(d, 0)]
        diffs = []
        for day in differing:
            store_ids = {
                r[0]
                for r in conn.execute(
                    f"SELECT event_id::text FROM {table_name} WHERE {where} AND (event_at AT TIME ZONE %s)::date = %s",
                    [*params, zone, day],
                ).fetchall()
            }
            lake_ids = {r[0] for r in lake.where(F.col("event_date") == F.lit(day)).select("event_id").collect()}
            missing = store_ids - lake_ids
            if missing and store_dups:
                # An id the store holds twice is kept once, possibly on the other copy's day.
                kept_elsewhere = {
                    r[0]
                    for r in every_row.where(F.col("event_id").isin(sorted(missing & set(store_dups))))
                    .select("event_id")
                    .collect()
                }
                missing -= kept_elsewhere
            extra = lake_ids - store_ids
            if missing or extra:  # equal sets with unequal counts: lake duplicates, reported apart
                diffs.append(
                    DayDiff(
                        day,
                        store_counts.get(day, 0),
                        lake_counts.get(day, 0),
                        sorted(missing)[:LISTED_IDS],
                        sorted(extra)[:LISTED_IDS],
                        len(missing),
                        len(extra),
                    )
                )
    return Reconciliation(
        version,
        settings.cursor_mode,
        cursor,
        str(first_day) if first_day else None,
        str(last_day) if last_day else None,
        len(days),
        sum(store_counts.values()),
        sum(lake_counts.values()),
        diffs,
        lake_dups,
        store_dups,
        bound,
        {day: [store_counts.get(day, 0), lake_counts.get(day, 0)] for day in days},
    )
