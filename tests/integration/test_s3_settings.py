"""FC-06: S3 endpoint settings. Path-style addressing from config; without it, fail fast and say so."""

import pytest

from pipelines import lake
from pipelines.errors import LakehouseError
from pipelines.load import sync_raw_events
from tests.conftest import S3_BUCKET, make_settings

pytestmark = pytest.mark.s3


def localhost(endpoint: str) -> str:
    return endpoint.replace("127.0.0.1", "localhost")


def test_path_style_off_fails_before_spark_work_and_names_the_setting(new_store, spark, moto_endpoint, monkeypatch):
    # No DNS for bucket host names under localhost: virtual-hosted style cannot work there.
    monkeypatch.setenv("AWS_ENDPOINT_URL", localhost(moto_endpoint))
    store = new_store()
    settings = make_settings(store, f"s3a://{S3_BUCKET}/fc06-off", profile="s3", s3_path_style_access=False)
    assert settings.s3_path_style_access is False
    with pytest.raises(LakehouseError, match=r"path_style_access.*LAKEHOUSE_S3_PATH_STYLE"):
        sync_raw_events(spark, settings)
    with pytest.raises(LakehouseError, match="path_style_access"):
        lake.check_warehouse(settings)


def test_path_style_on_works_on_localhost(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", localhost(moto_endpoint))
    settings = make_settings(None, f"s3a://{S3_BUCKET}/fc06-on", profile="s3")
    assert settings.s3_path_style_access is True
    lake.check_warehouse(settings)  # raises on failure
    assert lake.list_tables(settings) == []


def test_missing_bucket_is_named(moto_endpoint):
    settings = make_settings(None, "s3a://no-such-bucket/x", profile="s3")
    with pytest.raises(LakehouseError, match="bucket no-such-bucket does not exist"):
        lake.check_warehouse(settings)
