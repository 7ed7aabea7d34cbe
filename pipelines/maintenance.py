"""Lake maintenance: one retention policy on every table, and a VACUUM that never goes below it.

The retention policy (`[lake] retention_days`) is how far back time travel must keep working: Delta
keeps the log (`delta.logRetentionDuration`) and the files that older versions need
(`delta.deletedFileRetentionDuration`) that long. A VACUUM with a shorter retention deletes files
those versions still read, so it is refused before anything is touched.

VACUUM runs in Spark: the tables carry in-commit timestamps, a writer feature deltalake cannot
write.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pipelines import lake
from pipelines.errors import LakehouseError, TableNotFoundError
from pipelines.settings import Settings
from pipelines.spark import retry_on_conflict
from pipelines.tables import RETENTION_PROPERTIES, table_path, table_properties

log = logging.getLogger(__name__)

POLICY_SETTING = "[lake] retention_days"
# How far back in a table's history to look for the VACUUM END commit that holds the count.
_VACUUM_END_LOOKBACK = 20
# Delta 4.4 ignores VACUUM's RETAIN unless this is false (conf/base.toml sets it).
RETAIN_IGNORED_CONF = "spark.databricks.delta.vacuum.retentionWindowIgnore.enabled"


def policy_properties(settings: Settings) -> dict[str, str]:
    """The two retention properties every table carries, as tables are created with them."""
    created_with = table_properties(settings, append_only=False)
    return {key: created_with[key] for key in RETENTION_PROPERTIES}


def check_retention(settings: Settings, retain_days: int | None = None) -> int:
    """The retention a VACUUM may use: the policy by default; anything below it is refused.

    Raises:
        LakehouseError naming the policy and its setting.
    """
    policy = settings.retention_days
    if retain_days is None:
        return policy
    if retain_days < policy:
        raise LakehouseError(
            f"refusing to vacuum with a retention of {retain_days} days: the retention policy is {policy} days "
            f"({POLICY_SETTING}), and time travel within it needs the files a shorter one deletes; "
            "nothing was touched"
        )
    return retain_days


def select_tables(settings: Settings, tables: list[str] | None = None) -> list[str]:
    """The named tables (default: every table in the warehouse); unknown names fail, listing the tables."""
    present = lake.list_tables(settings)
    if tables is None:
        return present
    unknown = [name for name in tables if name not in present]
    if unknown:
        raise TableNotFoundError(
            f"no table {', '.join(unknown)} in {settings.warehouse} (tables: {', '.join(present) or 'none'})"
        )
    return list(dict.fromkeys(tables))


def _apply_policy(spark, settings: Settings, names: list[str]) -> list[dict[str, Any]]:
    from delta.tables import DeltaTable

    wanted = policy_properties(settings)
    changes = []
    for name in names:
        path = table_path(settings, name)
        current = DeltaTable.forPath(spark, path).detail().select("properties").first()[0] or {}
        different = {key: value for key, value in wanted.items() if current.get(key) != value}
        if not different:
            continue
        assignments = ", ".join(f"'{key}' = '{value}'" for key, value in different.items())
        statement = f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({assignments})"
        retry_on_conflict(lambda statement=statement: spark.sql(statement), f"retention policy on {name}")
        log.info("%s: retention set to the policy (%s)", name, assignments)
        changes.append(
            {"table": name, "before": {key: current.get(key) for key in different}, "after": dict(different)}
        )
    return changes


def apply_retention_policy(spark, settings: Settings, tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Give every table (or the ones named) the retention properties of the policy.

    Only tables whose delta.logRetentionDuration or delta.deletedFileRetentionDuration differ from
    `interval <retention_days> days` get a commit (ALTER TABLE ... SET TBLPROPERTIES).

    Returns:
        One entry per table that changed: {"table", "before": {property: old value or None},
        "after": {property: new value}}; tables already in line are not listed.
    """
    return _apply_policy(spark, settings, select_tables(settings, tables))


def _deleted_files(spark, path: str, version_before: int) -> int | None:
    """Files the VACUUM just deleted, from its VACUUM END commit (None when vacuum logging is off)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    ends = (
        DeltaTable.forPath(spark, path)
        .history(_VACUUM_END_LOOKBACK)
        .where((F.col("version") > version_before) & (F.col("operation") == "VACUUM END"))
        .orderBy("version")
        .select("operationMetrics")
        .collect()
    )
    if not ends or "numDeletedFiles" not in (ends[0][0] or {}):
        return None
    return int(ends[0][0]["numDeletedFiles"])


def _would_delete(spark, paths: list[str]) -> int:
    """What a VACUUM would really delete of what its DRY RUN lists.

    The list also names directories that still hold files too young to go (`_change_data` next to
    recent change-feed files); VACUUM removes directories only when they are empty, so those do not
    count.
    """
    jvm = spark.sparkContext._jvm
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    count = 0
    for text in paths:
        path = jvm.org.apache.hadoop.fs.Path(text)
        fs = path.getFileSystem(hadoop_conf)
        if fs.getFileStatus(path).isDirectory() and len(fs.listStatus(path)) > 0:
            continue
        count += 1
    return count


def vacuum(
    spark,
    settings: Settings,
    retain_days: int | None = None,
    tables: list[str] | None = None,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """VACUUM every table (or the ones named), never with less retention than the policy.

    A retention below the policy and unknown table names are refused before anything is touched.
    Then each table gets the policy's retention properties (also in a dry run: they are part of the
    table's schema) and Spark's `VACUUM ... RETAIN <hours> HOURS [DRY RUN]`.

    Args:
        retain_days: keep files removed from the table less than this many days ago (default: the
            policy); untracked files are judged by their modification time.
        tables: table names (default: every table in the warehouse).
        dry_run: only count what would be deleted.
    Returns:
        Per table: table, retain_days, properties_changed, and files_deleted (or files_to_delete in
        a dry run): files and empty directories, as Delta counts them; None when Delta's vacuum
        logging is off and the count is unknown.
    """
    from delta.tables import DeltaTable

    days = check_retention(settings, retain_days)
    if days != settings.retention_days and spark.conf.get(RETAIN_IGNORED_CONF, "true").lower() != "false":
        raise LakehouseError(
            f"cannot vacuum with a retention of {days} days: Delta would ignore it and keep only the policy's "
            f"{settings.retention_days} days; set {RETAIN_IGNORED_CONF} = false in [spark.conf]"
        )
    names = select_tables(settings, tables)
    changed = {change["table"]: sorted(change["after"]) for change in _apply_policy(spark, settings, names)}
    hours = days * 24
    results = []
    for name in names:
        path = table_path(settings, name)
        result: dict[str, Any] = {
            "table": name,
            "retain_days": days,
            "properties_changed": changed.get(name, []),
        }
        if dry_run:
            listed = spark.sql(f"VACUUM delta.`{path}` RETAIN {hours} HOURS DRY RUN").collect()
            result["files_to_delete"] = _would_delete(spark, [row["path"] for row in listed])
        else:
            version_before = DeltaTable.forPath(spark, path).history(1).first()["version"]
            spark.sql(f"VACUUM delta.`{path}` RETAIN {hours} HOURS").collect()
            result["files_deleted"] = _deleted_files(spark, path, version_before)
        log.info("vacuum %s", result)
        results.append(result)
    return results


# Point lookups filter on the aggregate, tenant-scoped readers on the tenant: files laid out in this
# order hold one tenant each and a contiguous range of its aggregates, so file statistics let both
# skip most files.
LAYOUT_COLUMNS = ("tenant_id", "aggregate_id")


def _table_facts(spark, path: str) -> tuple[int, int, list[str], dict]:
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, path).detail().first()
    return int(detail["numFiles"]), int(detail["sizeInBytes"]), list(detail["partitionColumns"]), detail["properties"]


def optimize(spark, settings: Settings, tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Compact small files and lay every table out for lookups by tenant and aggregate.

    - <kind>_history and <kind>_current are rewritten sorted by (tenant_id, aggregate_id) in
      files of about `[lake] layout_file_mb`, as a rearrangement (dataChange=false): the same rows,
      no change-feed entries, every earlier version still readable by time travel.
    - raw_events and other append-only tables (which refuse any rewrite) get Delta's
      `OPTIMIZE ... ZORDER BY (tenant_id, aggregate_id)`, within each month partition.
    - The lake's own tables (_snapshots, _audit_log) get a plain OPTIMIZE (compaction).
    A concurrent writer's commit makes the rewrite retry from the new version; nothing is lost.

    Returns:
        Per table: table, how (sorted | zorder | compact), files_before, files_after, delta_version.
    """
    from pyspark.sql import functions as F

    from pipelines.tables import is_bookkeeping, is_served

    results = []
    for name in select_tables(settings, tables):
        path = table_path(settings, name)
        files_before, size, partitions, properties = _table_facts(spark, path)
        columns = set(spark.read.format("delta").load(path).columns)
        has_layout_columns = set(LAYOUT_COLUMNS) <= columns
        append_only = (properties or {}).get("delta.appendOnly") == "true"
        if has_layout_columns and is_served(name) and not append_only and not partitions:
            how = "sorted"
            target = settings.layout_file_mb * 1024 * 1024
            files = max(1, math.ceil(size / target))

            def rewrite(path=path, files=files) -> None:
                frame = spark.read.format("delta").load(path)
                (
                    frame.repartitionByRange(files, *(F.col(c) for c in LAYOUT_COLUMNS))
                    .sortWithinPartitions(*LAYOUT_COLUMNS)
                    .write.format("delta")
                    .mode("overwrite")
                    .option("dataChange", "false")
                    .save(path)
                )

            retry_on_conflict(rewrite, f"laying out {name}")
        elif has_layout_columns and not is_bookkeeping(name):
            how = "zorder"
            statement = f"OPTIMIZE delta.`{path}` ZORDER BY ({', '.join(LAYOUT_COLUMNS)})"
            retry_on_conflict(lambda statement=statement: spark.sql(statement).collect(), f"optimizing {name}")
        else:
            how = "compact"
            statement = f"OPTIMIZE delta.`{path}`"
            retry_on_conflict(lambda statement=statement: spark.sql(statement).collect(), f"compacting {name}")
        files_after, _, _, _ = _table_facts(spark, path)
        version = lake.delta_version(settings, name)
        log.info("optimize %s (%s): %d files -> %d, version %s", name, how, files_before, files_after, version)
        results.append(
            {
                "table": name,
                "how": how,
                "files_before": files_before,
                "files_after": files_after,
                "delta_version": version,
            }
        )
    return results


def lookup_files(settings: Settings, name: str, version: int | None = None, **equals: str) -> tuple[int, int]:
    """(files a lookup with these column values must open, files of the version): the layout, measured.

    Uses the file statistics in the Delta log, as every JVM-free read does.
    """
    import pyarrow.compute as pc

    dataset = lake.open_table(settings, name, version=version).to_pyarrow_dataset()
    condition = None
    for column, value in equals.items():
        term = pc.field(column) == value
        condition = term if condition is None else condition & term
    total = sum(1 for _ in dataset.get_fragments())
    matching = total if condition is None else sum(1 for _ in dataset.get_fragments(filter=condition))
    return matching, total
