"""A reader bound to one tenant: what a downstream product gets instead of the whole lake.

The lake has no row-level security of its own, so the binding is applied by every read path here:
the JVM-free table reads and audit lookups add the tenant to their filter, and SQL runs over views
that keep only the tenant's rows, with any other data source refused (pipelines/views.py). An
aggregate of another tenant is "not found".
"""

from __future__ import annotations

from datetime import datetime

from pipelines.audit import AuditResult, audit, lookup
from pipelines.errors import LakehouseError
from pipelines.read import ReadResult, parse_where, read_table
from pipelines.settings import Settings
from pipelines.tables import canonical_uuid


class TenantReader:
    """Reads of one tenant's rows, by version, lake time, consistent snapshot or SQL."""

    def __init__(self, settings: Settings, tenant: str):
        if not tenant or not tenant.strip():
            raise LakehouseError("a tenant-scoped reader needs a tenant id")
        self.settings = settings
        self.tenant = canonical_uuid(tenant, "a tenant id")

    def read(
        self,
        table: str,
        as_of: str | datetime | None = None,
        version: int | None = None,
        snapshot_at: str | datetime | None = None,
        where: list[str] | None = None,
        limit: int | None = None,
    ) -> ReadResult:
        """The tenant's rows of a table (no JVM). where: ["column=value", ...]."""
        return read_table(
            self.settings,
            table,
            as_of=as_of,
            version=version,
            snapshot_at=snapshot_at,
            where=parse_where(where),
            limit=limit,
            tenant=self.tenant,
        )

    def lookup(self, kind: str, aggregate_id: str, as_of: str | datetime | None = None, as_seen_at=None) -> AuditResult:
        """The aggregate's state at business time as_of; another tenant's aggregate is not found."""
        return lookup(self.settings, kind, aggregate_id, as_of=as_of, as_seen_at=as_seen_at, tenant=self.tenant)

    def audit(
        self, kind: str, aggregate_id: str, asked_by: str, as_of: str | datetime | None = None, as_seen_at=None
    ) -> AuditResult:
        """lookup(), recorded in the access log."""
        return audit(
            self.settings, kind, aggregate_id, asked_by, as_of=as_of, as_seen_at=as_seen_at, tenant=self.tenant
        )

    def sql(self, spark, query: str, snapshot_at: str | datetime | None = None, as_of=None):
        """One query over this tenant's views (a consistent snapshot by default); returns (DataFrame, Pinned)."""
        from pipelines.views import run_sql

        return run_sql(spark, self.settings, query, snapshot_at=snapshot_at, as_of=as_of, tenant=self.tenant)
