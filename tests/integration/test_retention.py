"""The retention policy and VACUUM (FC-03): never below the policy; missing files fail reads loudly.

Real Spark with Delta on local warehouses (and one on the moto S3 server); no PostgreSQL needed.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pipelines import lake
from pipelines.errors import DataFilesMissingError, LakehouseError, TableNotFoundError
from pipelines.maintenance import apply_retention_policy, vacuum
from pipelines.read import read_table
from pipelines.tables import table_path, table_properties, table_uri
from tests.conftest import S3_BUCKET, make_settings

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")
SCHEMA = "id INT, name STRING"
POLICY = {
    "delta.logRetentionDuration": "interval 1827 days",
    "delta.deletedFileRetentionDuration": "interval 1827 days",
}
REFUSAL = (
    "refusing to vacuum with a retention of {days} days: the retention policy is 1827 days "
    "([lake] retention_days), and time travel within it needs the files a shorter one deletes; "
    "nothing was touched"
)
MISSING = (
    "table patients version {version} cannot be read: its data file {file} is missing "
    "(deleted by a VACUUM below the retention policy or removed by hand); no rows were returned"
)


def cli(warehouse: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LAKEHOUSE_WAREHOUSE": warehouse}
    for name in ("LAKEHOUSE_CACHE", "JAVA_HOME"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return subprocess.run([LAKEHOUSE, *args], env=env, capture_output=True, text=True, timeout=300)


def write(spark, settings, name: str, rows: list[tuple], create: bool = False) -> str:
    """One Delta commit of rows in a single file; the first one creates the table as the pipeline does."""
    path = table_path(settings, name)
    writer = spark.createDataFrame(rows, SCHEMA).coalesce(1).write.format("delta")
    if create:
        for key, value in table_properties(settings, append_only=False).items():
            writer = writer.option(key, value)
        writer.mode("errorifexists").save(path)
    else:
        writer.mode("append").save(path)
    return path


def rewritten_table(spark, settings) -> str:
    """patients: version 0 (3 rows), 1 (append), 2 (MERGE rewrites id 1's file), 3 (OPTIMIZE)."""
    from delta.tables import DeltaTable

    path = write(spark, settings, "patients", [(1, "a"), (2, "b"), (3, "c")], create=True)
    write(spark, settings, "patients", [(4, "d")])
    update = spark.createDataFrame([(1, "A")], SCHEMA)
    DeltaTable.forPath(spark, path).alias("t").merge(update.alias("s"), "t.id = s.id").whenMatchedUpdateAll().execute()
    spark.sql(f"OPTIMIZE delta.`{path}`")
    return path


def files_on_disk(path: str) -> set[str]:
    root = Path(path)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "_delta_log" not in p.parts}


def data_files(settings, version: int | None = None) -> set[str]:
    """The data files a version of patients reads, relative to the table (as on disk or in S3)."""
    uris = lake.open_table(settings, "patients", version=version).file_uris()
    return {uri.split("/patients/", 1)[1] for uri in uris}


def rows_at(settings, version: int | None = None) -> list[tuple]:
    rows = read_table(settings, "patients", version=version, limit=None).rows.to_pylist()
    return sorted((r["id"], r["name"]) for r in rows)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_vacuum_below_the_policy_is_refused_before_anything_is_touched_fc03(spark, local_warehouse):
    settings = make_settings(None, local_warehouse)
    path = rewritten_table(spark, settings)
    configuration = lake.open_table(settings, "patients").metadata().configuration
    assert configuration["delta.enableInCommitTimestamps"] == "true"
    assert {key: configuration[key] for key in POLICY} == POLICY
    before = files_on_disk(path)
    live = data_files(settings)
    # The MERGE and OPTIMIZE left three data files that only versions 0 to 2 read, and the MERGE's
    # change-feed file: a VACUUM with zero retention would delete all four.
    assert len({f for f in before if f.endswith(".parquet")} - live) == 4
    assert lake.delta_version(settings, "patients") == 3

    for days in (0, 1826):
        with pytest.raises(LakehouseError) as refused:
            vacuum(spark, settings, retain_days=days)
        assert str(refused.value) == REFUSAL.format(days=days)
    with pytest.raises(LakehouseError, match="retention policy is 1827 days"):
        vacuum(spark, settings, retain_days=0, dry_run=True)
    assert one_line_error(cli(local_warehouse, "vacuum", "--retain-days", "0")) == (
        "lakehouse: error: " + REFUSAL.format(days=0)
    )

    assert files_on_disk(path) == before
    assert lake.delta_version(settings, "patients") == 3  # not even the policy was applied
    assert rows_at(settings, version=0) == [(1, "a"), (2, "b"), (3, "c")]
    assert rows_at(settings, version=2) == [(1, "A"), (2, "b"), (3, "c"), (4, "d")]


def test_vacuum_at_the_policy_keeps_what_time_travel_needs(spark, local_warehouse):
    settings = make_settings(None, local_warehouse)
    path = rewritten_table(spark, settings)
    write(spark, settings, "orders", [(10, "x")], create=True)
    # A data file no version refers to (a crashed writer's leftover), and every data file dated 1900
    # days back: an untracked file that old is garbage; a file removed from the table just now is
    # kept for the whole policy, whatever its modification time.
    stray = Path(path) / "part-00000-leftover-c000.snappy.parquet"
    shutil.copy(next(Path(path).glob("part-*.parquet")), stray)
    old = time.time() - 1900 * 86400
    for data_file in [*Path(path).glob("part-*"), *Path(table_path(settings, "orders")).glob("part-*")]:
        os.utime(data_file, (old, old))
    before = files_on_disk(path)

    assert vacuum(spark, settings, dry_run=True) == [
        {"table": "orders", "retain_days": 1827, "properties_changed": [], "files_to_delete": 0},
        {"table": "patients", "retain_days": 1827, "properties_changed": [], "files_to_delete": 1},
    ]
    assert files_on_disk(path) == before
    done = cli(local_warehouse, "vacuum", "--table", "patients", "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"table": "patients", "retain_days": 1827, "properties_changed": [], "files_to_delete": 1}
    ]
    assert "dry run, nothing deleted: 1 tables, retaining 1827 days" in done.stderr
    # A longer retention than the policy is honoured: the 1900-day-old leftover stays.
    assert vacuum(spark, settings, retain_days=3000, tables=["patients"]) == [
        {"table": "patients", "retain_days": 3000, "properties_changed": [], "files_deleted": 0}
    ]
    assert files_on_disk(path) == before

    assert vacuum(spark, settings) == [
        {"table": "orders", "retain_days": 1827, "properties_changed": [], "files_deleted": 0},
        {"table": "patients", "retain_days": 1827, "properties_changed": [], "files_deleted": 1},
    ]
    assert files_on_disk(path) == before - {stray.name}
    assert rows_at(settings, version=0) == [(1, "a"), (2, "b"), (3, "c")]
    assert rows_at(settings, version=1) == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    # Each VACUUM is in the table's history.
    operations = [c.operation for c in lake.commits(settings, "patients")]
    assert operations[:4] == ["VACUUM END", "VACUUM START", "VACUUM END", "VACUUM START"]


def test_unknown_tables_are_named_with_the_tables_there_are(spark, local_warehouse):
    settings = make_settings(None, local_warehouse)
    write(spark, settings, "patients", [(1, "a")], create=True)
    with pytest.raises(TableNotFoundError) as unknown:
        vacuum(spark, settings, tables=["patients", "nope"])
    assert str(unknown.value) == f"no table nope in {local_warehouse} (tables: patients)"
    assert one_line_error(cli(local_warehouse, "vacuum", "--table", "nope")) == (
        f"lakehouse: error: no table nope in {local_warehouse} (tables: patients)"
    )
    assert lake.delta_version(settings, "patients") == 0


def test_apply_retention_policy_aligns_every_table(spark, local_warehouse):
    settings = make_settings(None, local_warehouse)
    write(spark, settings.with_overrides(retention_days=7), "weekly", [(1, "a")], create=True)
    write(spark, settings, "patients", [(1, "a")], create=True)
    # The audit log is written by deltalake, without in-commit timestamps or retention properties.
    audit_uri = table_uri(settings, "_audit_log")
    write_deltalake(audit_uri, pa.table({"asked_by": ["alice"]}), configuration={"delta.appendOnly": "true"})

    assert apply_retention_policy(spark, settings) == [
        {"table": "_audit_log", "before": dict.fromkeys(POLICY), "after": POLICY},
        {"table": "weekly", "before": dict.fromkeys(POLICY, "interval 7 days"), "after": POLICY},
    ]
    for name in ("_audit_log", "patients", "weekly"):
        configuration = lake.open_table(settings, name).metadata().configuration
        assert {key: configuration.get(key) for key in POLICY} == POLICY, name
    assert apply_retention_policy(spark, settings) == []
    assert lake.delta_version(settings, "patients") == 0

    # deltalake still writes the audit log after Spark set its properties and vacuumed it.
    assert vacuum(spark, settings, tables=["_audit_log"]) == [
        {"table": "_audit_log", "retain_days": 1827, "properties_changed": [], "files_deleted": 0}
    ]
    write_deltalake(audit_uri, pa.table({"asked_by": ["bob"]}), mode="append")
    audit_log = lake.open_table(settings, "_audit_log")
    assert sorted(audit_log.to_pyarrow_table().column("asked_by").to_pylist()) == ["alice", "bob"]
    assert audit_log.metadata().configuration["delta.appendOnly"] == "true"


def test_a_version_whose_file_is_gone_fails_naming_the_version_and_file(spark, local_warehouse):
    settings = make_settings(None, local_warehouse)
    path = write(spark, settings, "patients", [(1, "a"), (2, "b"), (3, "c")], create=True)
    write(spark, settings, "patients", [(4, "d")])
    [gone] = data_files(settings, version=0)
    os.remove(Path(path) / gone)

    with pytest.raises(DataFilesMissingError) as missing:
        read_table(settings, "patients", version=0)
    assert str(missing.value) == MISSING.format(version=0, file=gone)
    with pytest.raises(DataFilesMissingError) as missing:
        read_table(settings, "patients", where=[("name", "d")])
    assert str(missing.value) == MISSING.format(version=1, file=gone)

    done = cli(local_warehouse, "read", "patients", "--version", "0")
    assert one_line_error(done) == "lakehouse: error: " + MISSING.format(version=0, file=gone)
    assert done.stdout == ""

    # Spark reading that version fails too; the same helper names the version and the file.
    with pytest.raises(Exception) as spark_failure:
        spark.read.format("delta").option("versionAsOf", 0).load(path).collect()
    assert str(lake.missing_files_error("patients", 0, spark_failure.value)) == MISSING.format(version=0, file=gone)
    assert lake.missing_files_error("patients", 0, ValueError("something else")) is None


def test_a_missing_file_never_gives_partial_rows(spark, local_warehouse):
    settings = make_settings(None, local_warehouse)
    path = write(spark, settings, "patients", [(1, "a"), (2, "b"), (3, "c")], create=True)
    write(spark, settings, "patients", [(4, "d")])
    scanned = [
        fragment.path
        for fragment in lake.open_table(settings, "patients", version=1).to_pyarrow_dataset().get_fragments()
    ]
    assert len(scanned) == 2
    gone = scanned[-1]
    os.remove(Path(path) / gone)
    # The trap: the file that is still there holds rows, so a reader that stops at the first rows
    # (or skips what it cannot open) would answer with part of the version.
    dataset = lake.open_table(settings, "patients", version=1).to_pyarrow_dataset()
    remaining = [f for f in dataset.get_fragments() if f.path != gone]
    assert len(remaining) == 1 and remaining[0].head(1).num_rows == 1

    for limit in (1, 0, None):
        with pytest.raises(DataFilesMissingError) as missing:
            read_table(settings, "patients", version=1, limit=limit)
        assert str(missing.value) == MISSING.format(version=1, file=gone)


@pytest.mark.s3
def test_vacuum_and_a_missing_file_on_s3(spark, s3_warehouse, moto_endpoint):
    settings = make_settings(None, s3_warehouse, profile="s3")
    write(spark, settings, "patients", [(1, "a"), (2, "b"), (3, "c")], create=True)
    write(spark, settings, "patients", [(4, "d")])
    # Counts come from the VACUUM END commit, which s3a gets only because conf/ asks for it.
    assert vacuum(spark, settings) == [
        {"table": "patients", "retain_days": 1827, "properties_changed": [], "files_deleted": 0}
    ]
    assert rows_at(settings, version=1) == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]

    [gone] = data_files(settings, version=0)
    prefix = s3_warehouse[len(f"s3a://{S3_BUCKET}/") :]
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").delete_object(
        Bucket=S3_BUCKET, Key=f"{prefix}/patients/{gone}"
    )
    with pytest.raises(DataFilesMissingError) as missing:
        read_table(settings, "patients", version=0)
    assert str(missing.value) == MISSING.format(version=0, file=gone)
