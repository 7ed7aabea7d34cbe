"""Settings: conf/base.toml, then conf/<profile>.toml, then the environment (the environment wins).

One frozen object is built here and passed down; nothing else in the library reads conf/ or the
environment. Secrets (DSN passwords, AWS keys) come only from the environment and are masked
whenever settings are shown.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CONF_DIR = PROJECT_DIR / "conf"

# Environment variable -> (section, key). AWS variables keep their usual names.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "LAKEHOUSE_PG_DSN": ("source", "dsn"),
    "LAKEHOUSE_PG_ADMIN_DSN": ("source", "admin_dsn"),
    "LAKEHOUSE_WAREHOUSE": ("lake", "warehouse"),
    "LAKEHOUSE_TIMEZONE": ("lake", "timezone"),
    "LAKEHOUSE_SPARK_MASTER": ("spark", "master"),
    "AWS_ENDPOINT_URL_S3": ("s3", "endpoint"),
    "AWS_ENDPOINT_URL": ("s3", "endpoint"),
    "AWS_REGION": ("s3", "region"),
    "AWS_DEFAULT_REGION": ("s3", "region"),
    "LAKEHOUSE_S3_PATH_STYLE": ("s3", "path_style_access"),
    "LAKEHOUSE_CURSOR": ("source", "cursor"),
    "LAKEHOUSE_SYNC_CRON": ("dagster", "sync_cron"),
    "LAKEHOUSE_RECONCILE_CRON": ("dagster", "reconcile_cron"),
}

CURSOR_MODES = ("transaction", "lookback")


@dataclass(frozen=True)
class Settings:
    """Everything the library needs to know, resolved once."""

    profile: str
    pg_dsn: str
    pg_admin_dsn: str
    warehouse: str
    timezone: str
    retention_days: int
    layout_file_mb: float
    source_name: str
    source_schema: str
    source_table: str
    batch_rows: int
    statement_timeout_ms: int
    cursor_mode: str
    lookback_seconds: int
    kinds: tuple[str, ...]
    deleted_event_suffixes: tuple[str, ...]
    # (column, dotted path in event_payload): who did it, as columns of the silver tables.
    actor_fields: tuple[tuple[str, str], ...]
    sync_cron: str
    spark_master: str
    spark_driver_memory: str
    spark_conf: dict[str, str] = field(default_factory=dict)
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_path_style_access: bool = True
    cache_dir: Path = Path.home() / ".cache" / "lakehouse"
    # Dagster: the first day of the daily partitions, the daily reconciliation's schedule, the lag
    # above which the freshness check warns, and the days per backfill run (0: a whole range).
    partitions_start: date = date(2024, 1, 1)
    reconcile_cron: str = "30 3 * * *"
    freshness_max_lag_minutes: float = 60.0
    backfill_days_per_run: int = 0

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def on_s3(self) -> bool:
        return self.warehouse.startswith(("s3a://", "s3://"))

    @property
    def jar_dir(self) -> Path:
        return self.cache_dir / "jars"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (tests and Dagster resources use it)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain values, passwords masked."""
        return {
            "profile": self.profile,
            "pg_dsn": mask_dsn(self.pg_dsn),
            "pg_admin_dsn": mask_dsn(self.pg_admin_dsn),
            "warehouse": self.warehouse,
            "timezone": self.timezone,
            "retention_days": self.retention_days,
            "source": f"{self.source_name} ({self.source_schema}.{self.source_table})",
            "batch_rows": self.batch_rows,
            "cursor": self.cursor_mode
            + (f" (lookback {self.lookback_seconds} s)" if self.cursor_mode == "lookback" else ""),
            "s3_endpoint": self.s3_endpoint or ("(AWS default)" if self.on_s3 else ""),
            "s3_region": self.s3_region if self.on_s3 else "",
            "spark_master": self.spark_master,
            "jar_cache": str(self.jar_dir),
        }


def mask_dsn(dsn: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (also key=value DSNs)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is not None:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            parts = parts._replace(netloc=netloc)
        query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit(parts._replace(query=query))
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


DEFAULT_ACTOR_FIELDS = {"actor_id": "actor.user_id", "actor_name": "actor.name", "actor_role": "actor.role"}
_COLUMN = re.compile(r"^[a-z][a-z0-9_]*$")


def _actor_fields(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise ConfigError('[aggregates.actor] must map column names to paths, e.g. actor_id = "actor.user_id"')
    fields = []
    for column, path in raw.items():
        if not _COLUMN.match(str(column)) or not str(path).strip():
            raise ConfigError(f"[aggregates.actor] {column} = {path!r}: a lower-case column name and a dotted path")
        fields.append((str(column), str(path).strip()))
    return tuple(fields)


def _positive_number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{name} must be above 0, not {value!r}")
    return number


def _require(raw: dict[str, Any], section: str, key: str, origin: str) -> Any:
    try:
        return raw[section][key]
    except KeyError:
        raise ConfigError(f"missing setting [{section}] {key} (looked in {origin})") from None


def load_settings(
    profile: str | None = None,
    conf_dir: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Load settings for a profile: conf/base.toml, conf/<profile>.toml, then the environment.

    Args:
        profile: profile name; default LAKEHOUSE_PROFILE or "local".
        conf_dir: directory of the TOML files; default LAKEHOUSE_CONF_DIR or the project's conf/.
        environ: the environment to read (default os.environ); tests pass their own.
    Returns:
        The frozen Settings.
    """
    env = dict(os.environ if environ is None else environ)
    profile = profile or env.get("LAKEHOUSE_PROFILE") or "local"
    conf_dir = Path(conf_dir or env.get("LAKEHOUSE_CONF_DIR") or DEFAULT_CONF_DIR)
    base_file = conf_dir / "base.toml"
    profile_file = conf_dir / f"{profile}.toml"
    if not base_file.is_file():
        raise ConfigError(f"configuration not found: {base_file}")
    if not profile_file.is_file():
        known = sorted(p.stem for p in conf_dir.glob("*.toml") if p.stem != "base")
        raise ConfigError(f"unknown profile {profile!r}: no {profile_file} (known: {known})")
    raw = _merge(_read_toml(base_file), _read_toml(profile_file))

    # The environment wins; earlier names in ENV_OVERRIDES win over later ones for the same key.
    seen: set[tuple[str, str]] = set()
    for name, (section, key) in ENV_OVERRIDES.items():
        value = env.get(name)
        if value and (section, key) not in seen:
            raw.setdefault(section, {})[key] = value
            seen.add((section, key))

    origin = f"{base_file}, {profile_file} and the environment"
    timezone = str(_require(raw, "lake", "timezone", origin))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {timezone!r} ([lake] timezone)") from None

    warehouse = str(_require(raw, "lake", "warehouse", origin)).strip()
    if not warehouse:
        raise ConfigError("[lake] warehouse (LAKEHOUSE_WAREHOUSE) is empty")
    if warehouse.startswith("s3://"):
        warehouse = "s3a://" + warehouse[len("s3://") :]
    elif "://" not in warehouse:
        path = Path(warehouse).expanduser()
        warehouse = str(path if path.is_absolute() else (PROJECT_DIR / path).resolve())
    elif not warehouse.startswith(("s3a://", "file://")):
        raise ConfigError(f"warehouse must be a local path or s3a://bucket/prefix, not {warehouse!r}")
    if warehouse.startswith("file://"):
        warehouse = warehouse[len("file://") :]
    warehouse = warehouse.rstrip("/")

    retention_days = int(_require(raw, "lake", "retention_days", origin))
    if retention_days < 1:
        raise ConfigError("[lake] retention_days must be at least 1")

    # Profiles name the Makefile's local PostgreSQL by {pg_port}, so LAKEHOUSE_PG_PORT moves every
    # command to it, not only the ones make runs.
    pg_port = str(env.get("LAKEHOUSE_PG_PORT") or "55432")
    dsn = str(_require(raw, "source", "dsn", origin)).replace("{pg_port}", pg_port)
    admin_dsn = str(raw.get("source", {}).get("admin_dsn", "")).replace("{pg_port}", pg_port)
    for name, value in (("LAKEHOUSE_PG_DSN", dsn), ("LAKEHOUSE_PG_ADMIN_DSN", admin_dsn)):
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{name} must be a URI such as postgresql://user@host:5432/db, not {mask_dsn(value)!r}")

    s3 = raw.get("s3", {})
    spark = raw.get("spark", {})
    aggregates = raw.get("aggregates", {})
    source = raw["source"]
    cursor_mode = str(source.get("cursor", "transaction"))
    if cursor_mode not in CURSOR_MODES:
        raise ConfigError(f"[source] cursor must be one of {', '.join(CURSOR_MODES)}, not {cursor_mode!r}")
    lookback_seconds = int(source.get("lookback_seconds", 3600))
    if lookback_seconds < 0:
        raise ConfigError("[source] lookback_seconds must not be negative")
    cache_dir = Path(env.get("LAKEHOUSE_CACHE") or Path.home() / ".cache" / "lakehouse")
    dagster = raw.get("dagster", {})
    try:
        partitions_start = date.fromisoformat(str(dagster.get("partitions_start", "2024-01-01")))
    except ValueError:
        raise ConfigError(
            f"[dagster] partitions_start must be a day such as 2024-01-01, not {dagster.get('partitions_start')!r}"
        ) from None
    backfill_days_per_run = int(dagster.get("backfill_days_per_run", 0))
    if backfill_days_per_run < 0:
        raise ConfigError("[dagster] backfill_days_per_run must be 0 (a whole range per run) or more")
    return Settings(
        profile=profile,
        pg_dsn=dsn,
        pg_admin_dsn=admin_dsn,
        warehouse=warehouse,
        timezone=timezone,
        retention_days=retention_days,
        layout_file_mb=_positive_number(raw["lake"].get("layout_file_mb", 64), "[lake] layout_file_mb"),
        source_name=str(source.get("name", "eventstore")),
        source_schema=str(source.get("schema", "eventstore")),
        source_table=str(source.get("table", "events")),
        batch_rows=int(source.get("batch_rows", 100_000)),
        statement_timeout_ms=int(source.get("statement_timeout_ms", 900_000)),
        cursor_mode=cursor_mode,
        lookback_seconds=lookback_seconds,
        kinds=tuple(aggregates.get("kinds", ())),
        deleted_event_suffixes=tuple(aggregates.get("deleted_event_suffixes", ("Deleted",))),
        actor_fields=_actor_fields(aggregates.get("actor", DEFAULT_ACTOR_FIELDS)),
        sync_cron=str(dagster.get("sync_cron", "*/15 * * * *")),
        reconcile_cron=str(dagster.get("reconcile_cron", "30 3 * * *")),
        partitions_start=partitions_start,
        freshness_max_lag_minutes=_positive_number(
            dagster.get("freshness_max_lag_minutes", 60), "[dagster] freshness_max_lag_minutes"
        ),
        backfill_days_per_run=backfill_days_per_run,
        spark_master=str(spark.get("master", "local[2]")),
        spark_driver_memory=str(spark.get("driver_memory", "2g")),
        spark_conf={str(k): str(v) for k, v in spark.get("conf", {}).items()},
        s3_endpoint=str(s3.get("endpoint", "")),
        s3_region=str(s3.get("region", "us-east-1")),
        s3_path_style_access=_as_bool(s3.get("path_style_access", True), "path_style_access"),
        cache_dir=cache_dir,
    )
