"""The event store's reference schema (ordered SQL migrations) and the commands that apply it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import psycopg

from pipelines.errors import SourceError, one_line  # noqa: F401  (one_line: re-exported)
from pipelines.settings import mask_dsn

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "eventstore.schema_migrations"
# Any constant works; it keeps two `init` commands from applying the same migration at once.
MIGRATION_LOCK_KEY = 740_431_002


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str


def migrations() -> list[Migration]:
    """The packaged migrations, in order of their file names (001_..., 002_...)."""
    folder = resources.files("pipelines.eventstore") / "migrations"
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [Migration(entry.name.removesuffix(".sql"), entry.read_text("utf-8")) for entry in files]


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """A psycopg connection, or a SourceError that names the server (never the password)."""
    try:
        return psycopg.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise SourceError(f"PostgreSQL unreachable at {mask_dsn(dsn)}: {one_line(exc)}") from None


def init_eventstore(admin_dsn: str) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction.

    Args:
        admin_dsn: a role that may create roles, schemas and tables (the store's owner).
    Returns:
        The versions applied by this call (empty when the store was up to date).
    """
    if not admin_dsn:
        raise SourceError("eventstore init needs LAKEHOUSE_PG_ADMIN_DSN")
    applied: list[str] = []
    with connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS eventstore")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
            for migration in migrations():
                if migration.version in done:
                    continue
                log.info("applying migration %s", migration.version)
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version) VALUES (%s)",
                        (migration.version,),
                    )
                applied.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied
