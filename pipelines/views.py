"""Spark SQL over the lake: every table a view pinned to one version, optionally bound to one tenant.

Two ways to pin (both lake time):
- a consistent snapshot (`snapshot_at`, default: the latest complete run): every table at the
  version the last run completed at or before T left it at (pipelines/snapshots.py);
- per-table time travel (`as_of`): every table at its own newest version committed at or before T.
  Cheaper to explain, but T may fall inside a run, so tables can disagree.

A tenant-bound query sees each view filtered to its tenant's rows, and its analyzed plan may read
data only through those views: a direct path (delta.`s3a://...`), a file function or any view of
another session is refused before anything runs. Tables without a tenant_id column are not visible
to a tenant at all. Queries run in a session of their own (`spark.newSession()`), so two tenants
served by one Spark application never share views.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pipelines import lake
from pipelines.errors import BeforeHistoryError, LakehouseError, TenantScopeError
from pipelines.settings import Settings
from pipelines.snapshots import Snapshot, read_snapshot
from pipelines.tables import TENANT_COLUMN, canonical_uuid, table_path

# Leaves of a plan that read no table: literals, range(), CTE references (their definitions are
# checked where they stand).
_DATA_FREE_LEAVES = {"OneRowRelation", "LocalRelation", "Range", "CTERelationRef"}


@dataclass(frozen=True)
class Pinned:
    """Which version of which table the views show."""

    tables: dict[str, int]
    snapshot: Snapshot | None  # the consistent snapshot, when pinned by one
    as_of: lake.PointInTime | None  # the per-table time travel point, when pinned by time
    tenant: str | None

    def describe(self) -> str:
        if self.snapshot is not None:
            text = self.snapshot.describe()
        else:
            point = self.as_of
            zone = f"naive time read in {point.zone_used}" if point.zone_used else "offset given"
            text = (
                f"every table at its newest version committed at or before {point.requested} = "
                f"{point.requested_utc.isoformat()} ({zone}; lake time, per table, not a consistent snapshot)"
            )
        versions = ", ".join(f"{name}@{version}" for name, version in sorted(self.tables.items()))
        bound = f"; bound to tenant {self.tenant}" if self.tenant else ""
        return f"{text}{bound}; views: {versions}"


def pinned_versions(settings: Settings, snapshot_at: str | datetime | None = None, as_of=None) -> Pinned:
    """The table versions a query sees: a consistent snapshot (default) or per-table time travel."""
    if snapshot_at is not None and as_of is not None:
        raise LakehouseError("give either a snapshot time or an as-of time, not both")
    if as_of is None:
        snapshot = read_snapshot(settings, at=snapshot_at)
        return Pinned(dict(snapshot.tables), snapshot, None, None)
    tables: dict[str, int] = {}
    point = None
    for name in lake.list_tables(settings):
        try:
            resolved = lake.resolve(settings, name, as_of=as_of)
        except BeforeHistoryError:
            continue  # the table did not exist yet at T
        tables[name] = resolved.version
        point = point or resolved
    if point is None:
        raise BeforeHistoryError(f"no table of {settings.warehouse} existed yet at {as_of} (lake time)")
    return Pinned(tables, None, point, None)


def register_views(
    spark,
    settings: Settings,
    snapshot_at: str | datetime | None = None,
    as_of: str | datetime | None = None,
    tenant: str | None = None,
) -> Pinned:
    """Register every table as a temporary view of `spark`, pinned to one snapshot (or one lake time).

    For notebooks and PySpark jobs: afterwards `spark.sql("SELECT ... FROM patient_current")` reads
    the pinned versions. With `tenant`, each view keeps only that tenant's rows and tables without a
    tenant_id are left out (the caller's own session can still read files directly: use run_sql for
    a boundary that holds whatever the SQL says).

    Returns:
        The pinned versions (Pinned.tables: view name -> Delta version).
    """
    from pyspark.sql import functions as F

    if tenant is not None:
        tenant = canonical_uuid(tenant, "a tenant id")
    pinned = pinned_versions(settings, snapshot_at=snapshot_at, as_of=as_of)
    registered: dict[str, int] = {}
    for name, version in sorted(pinned.tables.items()):
        frame = spark.read.format("delta").option("versionAsOf", version).load(table_path(settings, name))
        if tenant is not None:
            if TENANT_COLUMN not in frame.columns:
                continue
            frame = frame.where(F.col(TENANT_COLUMN) == F.lit(tenant))
        frame.createOrReplaceTempView(name)
        registered[name] = version
    return Pinned(registered, pinned.snapshot, pinned.as_of, tenant)


def run_sql(
    spark,
    settings: Settings,
    query: str,
    snapshot_at: str | datetime | None = None,
    as_of: str | datetime | None = None,
    tenant: str | None = None,
):
    """One read-only query over pinned views, in a session of its own.

    Args:
        query: one SELECT (or WITH ... SELECT) statement; commands and writes are refused.
        snapshot_at: lake time of the consistent snapshot (default: the latest complete run).
        as_of: per-table time travel instead of a snapshot.
        tenant: bind the query to one tenant (see the module docstring).
    Returns:
        (DataFrame, Pinned)
    Raises:
        TenantScopeError: a tenant-bound query reads something other than its views.
        LakehouseError: the query does not parse or does not resolve (one line).
    """
    from pyspark.errors import AnalysisException, ParseException

    text = check_query(query)
    if tenant is not None:
        tenant = canonical_uuid(tenant, "a tenant id")
    session = spark.newSession()
    pinned = register_views(session, settings, snapshot_at=snapshot_at, as_of=as_of, tenant=tenant)
    # As a subquery the text can only be a query: SET, DROP, INSERT and the like do not parse there.
    # (spark.sql runs commands at once, before any plan could be checked.)
    wrapped = f"SELECT * FROM (\n{text}\n) AS lakehouse_query"
    try:
        frame = session.sql(wrapped)
    except ParseException as exc:
        raise LakehouseError(f"not one query (SELECT ... or WITH ... SELECT): {_spark_message(exc)}") from None
    except AnalysisException as exc:
        tables = ", ".join(sorted(pinned.tables)) or "none"
        raise LakehouseError(f"the query does not resolve: {_spark_message(exc)} (views: {tables})") from None
    if tenant is not None:
        reason = _outside_views(frame._jdf.queryExecution().analyzed(), set(pinned.tables))
        if reason is not None:
            raise TenantScopeError(
                f"a query bound to tenant {tenant} may read only its views ({', '.join(sorted(pinned.tables))}); "
                f"this one reads {reason}"
            )
    return frame, pinned


def _outside_views(plan, allowed: set[str]) -> str | None:
    """What in an analyzed plan reads data other than through the allowed temporary views, or None."""
    name = plan.nodeName()
    if name == "View":
        view = plan.desc().identifier()
        if plan.isTempView() and view.database().isEmpty() and view.table() in allowed:
            return None  # one of ours: its child is the pinned, tenant-filtered table
        return f"the view {view.unquotedString()}"
    children = plan.children()
    if children.size() == 0 and name not in _DATA_FREE_LEAVES:
        return "files or a table directly" if name in _DIRECT_READS else f"data through a {name}"
    for index in range(children.size()):
        reason = _outside_views(children.apply(index), allowed)
        if reason is not None:
            return reason
    subqueries = plan.subqueries()
    for index in range(subqueries.size()):
        reason = _outside_views(subqueries.apply(index), allowed)
        if reason is not None:
            return reason
    return None


# Leaves that read files or catalog tables directly (delta.`path`, parquet.`path`, read_files ...).
_DIRECT_READS = {"LogicalRelation", "DataSourceV2Relation", "HiveTableRelation", "StreamingRelation"}
_QUERY_START = re.compile(r"^(select|with|from|values|table|\()", re.IGNORECASE)
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", re.DOTALL)


def check_query(query: str) -> str:
    """The query text without a trailing semicolon; refused (before Spark starts) unless it is a query."""
    text = (query or "").strip().rstrip(";").strip()
    body = _LEADING_COMMENTS.sub("", text, count=1)
    if not body:
        raise LakehouseError("empty query: give one SELECT ... or WITH ... SELECT statement")
    if not _QUERY_START.match(body):
        word = body.split(None, 1)[0]
        raise LakehouseError(f"only queries are run (SELECT ... or WITH ... SELECT), not {word.upper()} ...")
    return text


def _spark_message(exc) -> str:
    """Spark's error in one line, without positions in the wrapped text the user never wrote."""
    text = re.sub(r"\s*\(line \d+, pos \d+\)", "", _first_line(exc))
    return re.sub(r"\s*SQLSTATE: \w+\.?", "", text).strip()


def _first_line(value) -> str:
    text = str(value).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
