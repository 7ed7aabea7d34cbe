"""Incremental sync as a Spark application: raw_events, then every <kind>_current table.

    spark-submit --master 'local[2]' \
        --jars "$(ls ~/.cache/lakehouse/jars/*.jar | paste -sd,)" \
        --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
        --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
        jobs/sync.py --profile local

The library builds (or reuses) the session from conf/ and the environment, so plain
`.venv/bin/python -m jobs.sync` runs the same job without spark-submit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines.errors import LakehouseError
from pipelines.settings import load_settings
from pipelines.spark import get_spark
from pipelines.sync import run_sync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sync the event store into the lake.")
    parser.add_argument("--profile", help="conf/<profile>.toml (default LAKEHOUSE_PROFILE or local)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(profile=args.profile)
    except LakehouseError as exc:
        print(f"sync: error: {exc}", file=sys.stderr)
        return 2
    spark = get_spark(settings, "lakehouse-sync-job")
    try:
        result = run_sync(spark, settings)
        print(json.dumps(result.as_dict(), default=str))
        return 0
    except LakehouseError as exc:
        print(f"sync: error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
