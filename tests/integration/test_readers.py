"""The JVM-free read path (deltalake + pyarrow) answers exactly what Spark answers, row for row.

Every table kind (raw_events, a history table, a current table), at every version and at lake times
on and between commits.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from pipelines import lake
from pipelines.eventstore.generate import generate_events
from pipelines.read import read_table
from pipelines.sync import run_sync
from pipelines.tables import RAW_EVENTS, table_path
from tests.conftest import make_settings

TABLES = [RAW_EVENTS, "patient_history", "patient_current", "prescription_current"]


@pytest.fixture(scope="module")
def three_runs(new_store, spark, tmp_path_factory):
    store = new_store()
    settings = make_settings(store, str(tmp_path_factory.mktemp("readers") / "warehouse"))
    generate_events(store.admin_dsn, 400, tenants=3, seed=21)
    run_sync(spark, settings)
    for seed in (22, 23):
        generate_events(store.admin_dsn, 150, tenants=3, seed=seed, days=10)
        run_sync(spark, settings)
    return settings


def _plain(value):
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def canonical(rows: list[dict]) -> list[str]:
    return sorted(json.dumps({k: _plain(v) for k, v in r.items()}, sort_keys=True, ensure_ascii=False) for r in rows)


def spark_rows(spark, settings, name: str, **option) -> list[str]:
    frame = spark.read.format("delta").options(**option).load(table_path(settings, name))
    return canonical(frame.toArrow().to_pylist())


def jvm_free_rows(settings, name: str, **when) -> list[str]:
    return canonical(read_table(settings, name, limit=None, **when).rows.to_pylist())


@pytest.mark.parametrize("name", TABLES)
def test_same_rows_at_every_version(three_runs, spark, name):
    settings = three_runs
    versions = sorted(c.version for c in lake.commits(settings, name))
    assert len(versions) >= 3
    compared = 0
    for version in versions:
        expected = spark_rows(spark, settings, name, versionAsOf=version)
        assert jvm_free_rows(settings, name, version=version) == expected, f"{name} version {version}"
        compared += len(expected)
    assert compared > 0


@pytest.mark.parametrize("name", TABLES)
def test_same_rows_at_lake_times_on_and_between_commits(three_runs, spark, name):
    settings = three_runs
    times = sorted(c.timestamp for c in lake.commits(settings, name))
    moments = times + [a + (b - a) / 2 for a, b in zip(times, times[1:], strict=False)]
    for moment in sorted(moments):
        # Spark reads a timestamp without an offset in its session zone, UTC.
        text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        expected = spark_rows(spark, settings, name, timestampAsOf=text)
        got = read_table(settings, name, as_of=moment.isoformat(), limit=None)
        assert canonical(got.rows.to_pylist()) == expected, f"{name} as of {moment}"
    # And the same version is chosen: the newest one committed at or before the time.
    assert lake.resolve(settings, name, as_of=times[-1].isoformat()).version == max(
        c.version for c in lake.commits(settings, name)
    )
