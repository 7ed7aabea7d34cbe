"""Dagster resources: the event store, the warehouse and Spark, all resolved into library Settings."""

from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from pipelines.settings import Settings, load_settings
from pipelines.spark import get_spark


class PostgresResource(ConfigurableResource):
    """The event store, read through the pipeline's read-only role."""

    dsn: str | None = None  # LAKEHOUSE_PG_DSN through EnvVar: resolved at launch, hidden in the UI


class WarehouseResource(ConfigurableResource):
    """Where the Delta tables live: a local directory or s3a://bucket/prefix."""

    root: str | None = None
    profile: str | None = None


class SparkResource(ConfigurableResource):
    """One SparkSession per run process, shared by every asset of the run; never stopped here."""

    postgres: PostgresResource
    warehouse: WarehouseResource
    _settings: Settings | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._settings = load_settings(profile=self.warehouse.profile).with_overrides(
            pg_dsn=self.postgres.dsn, warehouse=self.warehouse.root
        )

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(profile=self.warehouse.profile).with_overrides(
                pg_dsn=self.postgres.dsn, warehouse=self.warehouse.root
            )
        return self._settings

    def session(self):
        return get_spark(self.settings, "lakehouse-dagster")
