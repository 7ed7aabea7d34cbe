"""Dagster runs of the project's own definitions, in this process, against a test store and warehouse."""

from __future__ import annotations

from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from dagster_project.definitions import build_definitions
from dagster_project.resources import PostgresResource, SparkResource, WarehouseResource
from pipelines.tables import RAW_EVENTS

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def definitions(settings, store, warehouse: str, profile: str = "local"):
    """The Definitions a deployment gets, with the Spark resource pointed at this store and warehouse."""
    spark = SparkResource(
        postgres=PostgresResource(dsn=store.dsn), warehouse=WarehouseResource(root=warehouse, profile=profile)
    )
    return build_definitions(settings, spark=spark)


def run(
    defs,
    days: tuple[str, str] | None = None,
    raw_only: bool = False,
    instance: DagsterInstance | None = None,
    raise_on_error: bool = True,
):
    """Materialize every asset with every check (Dagster's materialize), as one run.

    Args:
        days: (first, last) partition keys: a backfill of that range; None: an incremental run.
        raw_only: only raw_events and its checks.
    """
    tags = {RANGE_START: days[0], RANGE_END: days[1]} if days else None
    selection = (AssetSelection.assets(RAW_EVENTS) | AssetSelection.checks_for_assets(RAW_EVENTS)) if raw_only else None
    return materialize(
        [*defs.assets, *defs.asset_checks],
        resources=defs.resources,
        instance=instance or DagsterInstance.ephemeral(),
        tags=tags,
        selection=selection,
        raise_on_error=raise_on_error,
    )


def checks(result) -> dict[tuple[str, str], object]:
    """(asset, check name) -> the check's evaluation in this run."""
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def raw_metadata(result) -> dict:
    """The unpartitioned (incremental) or first partition's raw_events materialization metadata, as values."""
    events = [m for m in result.get_asset_materialization_events() if m.asset_key == AssetKey(RAW_EVENTS)]
    main = [e for e in events if e.partition is None] or events
    return {k: v.value for k, v in main[0].step_materialization_data.materialization.metadata.items()}
