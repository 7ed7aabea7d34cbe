from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.settings import load_settings, mask_dsn

BASE_ENV = {"LAKEHOUSE_CACHE": "/tmp/cache"}


def test_profile_then_environment_wins():
    settings = load_settings(
        profile="local",
        environ={**BASE_ENV, "LAKEHOUSE_WAREHOUSE": "/data/lake/", "LAKEHOUSE_TIMEZONE": "Europe/Berlin"},
    )
    assert settings.warehouse == "/data/lake"
    assert settings.timezone == "Europe/Berlin"
    assert settings.pg_dsn == "postgresql://lakehouse_pipeline@127.0.0.1:55432/lakehouse"
    assert settings.retention_days == 1827
    assert settings.jar_dir == Path("/tmp/cache/jars")


def test_relative_warehouse_is_taken_from_the_project_directory():
    settings = load_settings(profile="local", environ=BASE_ENV)
    assert settings.warehouse.endswith("/.local/warehouse")
    assert Path(settings.warehouse).is_absolute()


def test_s3_profile_and_s3_scheme_normalised():
    settings = load_settings(
        profile="s3",
        environ={**BASE_ENV, "LAKEHOUSE_WAREHOUSE": "s3://bucket/prefix", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
    )
    assert settings.warehouse == "s3a://bucket/prefix"
    assert settings.on_s3
    assert settings.s3_endpoint == "http://127.0.0.1:9000"
    assert settings.s3_path_style_access is True


def test_passwords_never_shown():
    assert mask_dsn("postgresql://reader:s3cret@db:5432/x") == "postgresql://reader:***@db:5432/x"
    assert mask_dsn("postgresql://reader@db/x?password=s3cret&sslmode=require") == (
        "postgresql://reader@db/x?password=***&sslmode=require"
    )
    settings = load_settings(
        profile="local", environ={**BASE_ENV, "LAKEHOUSE_PG_DSN": "postgresql://reader:s3cret@db:5432/x"}
    )
    assert "s3cret" not in repr(settings.redacted())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LAKEHOUSE_PG_DSN": "host=db user=reader password=s3cret"}, "must be a URI"),
        ({"LAKEHOUSE_TIMEZONE": "Mars/Olympus"}, "unknown time zone"),
        ({"LAKEHOUSE_WAREHOUSE": "gs://bucket/x"}, "local path or s3a://"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(env, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(profile="local", environ={**BASE_ENV, **env})
    assert "s3cret" not in str(info.value)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'prod'.*'local'"):
        load_settings(profile="prod", environ=BASE_ENV)


def test_cursor_mode_defaults_to_transaction_and_is_validated():
    settings = load_settings(profile="local", environ=BASE_ENV)
    assert (settings.cursor_mode, settings.lookback_seconds) == ("transaction", 3600)
    assert (
        load_settings(profile="local", environ={**BASE_ENV, "LAKEHOUSE_CURSOR": "lookback"}).cursor_mode == "lookback"
    )
    with pytest.raises(ConfigError, match="cursor must be one of transaction, lookback"):
        load_settings(profile="local", environ={**BASE_ENV, "LAKEHOUSE_CURSOR": "timestamp"})


def test_local_postgres_port_follows_lakehouse_pg_port():
    settings = load_settings(profile="local", environ={**BASE_ENV, "LAKEHOUSE_PG_PORT": "55470"})
    assert settings.pg_dsn == "postgresql://lakehouse_pipeline@127.0.0.1:55470/lakehouse"
    assert settings.pg_admin_dsn == "postgresql://postgres@127.0.0.1:55470/lakehouse"
