"""The one place that builds a SparkSession: Delta, S3A and the session time zone, from settings."""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import ConfigError
from pipelines.settings import Settings

log = logging.getLogger(__name__)

JAR_SUMS_FILE = "jars.sha256"
# Jars only a session on S3 needs (s3a and the AWS SDK); a local warehouse's session starts about
# 2.5 s sooner without the 690 MB SDK bundle on its class path (measured on this project's machines).
S3_ONLY_JARS = ("hadoop-aws-", "bundle-", "analyticsaccelerator-s3-")
# Session settings are shared by every thread of the process: one commit at a time sets them.
_COMMIT_LOCK = threading.RLock()


def jar_paths(settings: Settings) -> list[str]:
    """The cached jars Spark needs; fails with the fix when set-up has not fetched them."""
    from pipelines.settings import DEFAULT_CONF_DIR

    names = [line.split()[1] for line in (DEFAULT_CONF_DIR / JAR_SUMS_FILE).read_text().splitlines() if line.strip()]
    missing = [n for n in names if not (settings.jar_dir / n).is_file()]
    if missing:
        raise ConfigError(
            f"jars missing from {settings.jar_dir}: {', '.join(missing)}; "
            "run scripts/fetch_jars.sh (make setup does) once"
        )
    return [str(settings.jar_dir / n) for n in names]


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting the session gets; credentials are not among them (see s3a below)."""
    jars = [j for j in jar_paths(settings) if settings.on_s3 or not Path(j).name.startswith(S3_ONLY_JARS)]
    conf = {
        "spark.jars": ",".join(jars),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Schema evolution for the current-state MERGE (new snapshot fields become columns).
        "spark.databricks.delta.schema.autoMerge.enabled": "true",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if settings.on_s3:
        # Credentials: s3a's default chain reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
        # instance roles), so keys never enter Spark's configuration or its logs.
        conf.update(
            {
                "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
                "spark.hadoop.fs.s3a.path.style.access": str(settings.s3_path_style_access).lower(),
                "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
            }
        )
        if settings.s3_endpoint:
            conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint
            conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
                settings.s3_endpoint.startswith("https://")
            ).lower()
    conf.update(settings.spark_conf)
    # Quiet, readable JVM logging (conf/log4j2.properties) unless the caller set its own.
    from pipelines.settings import DEFAULT_CONF_DIR

    log4j = f"-Dlog4j.configurationFile={DEFAULT_CONF_DIR / 'log4j2.properties'}"
    java_options = conf.get("spark.driver.extraJavaOptions", "")
    if "log4j.configurationFile" not in java_options:
        conf["spark.driver.extraJavaOptions"] = f"{java_options} {log4j}".strip()
    return conf


def get_spark(settings: Settings, app_name: str = "lakehouse"):
    """The process's SparkSession with Delta configured; created once, then reused.

    Never stopped by the library while a DataFrame may still be in use: jobs/ stop it at the end.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and not active.sparkContext._jsc.sc().isStopped():
        extensions = active.conf.get("spark.sql.extensions", "") or ""
        if "DeltaSparkSessionExtension" not in extensions:
            raise ConfigError("a SparkSession without Delta is already running in this process")
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    # PySpark logs every failed analysis as a page of JSON at ERROR; the library reports such
    # errors itself, in one line.
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    log.info("starting Spark (%s)", settings.spark_master)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


@contextmanager
def commit_options(spark, app_id: str | None = None, version: int | None = None, metadata: dict | None = None):
    """Session settings that Delta writes commands without writer options (MERGE) read.

    app_id and version become the commit's idempotent-write transaction (a writer's cursor in the
    Delta log); metadata becomes the commit's userMetadata. Unset again on the way out.
    """
    import json

    settings = {}
    if app_id is not None and version is not None:
        settings["spark.databricks.delta.write.txnAppId"] = app_id
        settings["spark.databricks.delta.write.txnVersion"] = str(int(version))
    if metadata is not None:
        settings["spark.databricks.delta.commitInfo.userMetadata"] = json.dumps(metadata, separators=(",", ":"))
    with _COMMIT_LOCK:
        for key, value in settings.items():
            spark.conf.set(key, value)
        try:
            yield
        finally:
            for key in settings:
                spark.conf.unset(key)


class WriteConflict(Exception):
    """A writer found that another one committed first; retry_on_conflict tries again."""


def is_conflict(exc: BaseException) -> bool:
    """A Delta optimistic-concurrency conflict (another writer committed first)."""
    if isinstance(exc, WriteConflict):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(
        marker in text
        for marker in (
            "Concurrent",
            "DELTA_CONCURRENT",
            "ProtocolChanged",
            "FileAlreadyExists",
            "DELTA_PROTOCOL_CHANGED",
            "MetadataChanged",
            "DELTA_METADATA_CHANGED",
            # a first write racing another one's table creation
            "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION",
        )
    )


def retry_on_conflict(action, what: str, attempts: int = 5):
    """Run an idempotent Delta write, again after a conflict with a concurrent writer."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if not is_conflict(exc) or attempt == attempts:
                raise
            log.info("%s conflicted with another writer; retrying (%d/%d)", what, attempt, attempts)
            time.sleep(0.5 * attempt)
