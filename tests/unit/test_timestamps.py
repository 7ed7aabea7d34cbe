from datetime import UTC, datetime

import pytest

from pipelines.errors import LakehouseError
from pipelines.lake import parse_timestamp


def test_offset_is_honoured_exactly():
    moment, zone = parse_timestamp("2025-10-01T09:00:00+09:00", "America/New_York")
    assert moment == datetime(2025, 10, 1, 0, 0, tzinfo=UTC)
    assert zone is None


def test_z_suffix_is_utc():
    moment, zone = parse_timestamp("2025-10-01T00:00:00.250Z", "Asia/Tokyo")
    assert moment == datetime(2025, 10, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert zone is None


def test_naive_time_is_read_in_the_configured_zone():
    moment, zone = parse_timestamp("2025-10-01 09:00:00", "Asia/Tokyo")
    assert moment == datetime(2025, 10, 1, 0, 0, tzinfo=UTC)
    assert zone == "Asia/Tokyo"


def test_naive_time_in_a_zone_with_daylight_saving():
    # 2025-07-01 is summer time in New York (UTC-4), 2025-12-01 is not (UTC-5).
    assert parse_timestamp("2025-07-01T12:00:00", "America/New_York")[0] == datetime(2025, 7, 1, 16, tzinfo=UTC)
    assert parse_timestamp("2025-12-01T12:00:00", "America/New_York")[0] == datetime(2025, 12, 1, 17, tzinfo=UTC)


def test_garbage_is_refused_with_an_example():
    with pytest.raises(LakehouseError, match="ISO 8601"):
        parse_timestamp("yesterday", "Asia/Tokyo")
