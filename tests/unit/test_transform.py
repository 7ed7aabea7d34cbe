"""Pure transforms on literal rows (with a null, a duplicate and an out-of-order row), via chispa."""

from datetime import datetime

from chispa import assert_df_equality
from pyspark.sql.types import (
    BooleanType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pipelines.transform import aligned_to, latest_per_aggregate, with_deleted_flag, with_snapshot_columns

EVENTS = StructType(
    [
        StructField("tenant_id", StringType()),
        StructField("aggregate_id", StringType()),
        StructField("event_id", StringType()),
        StructField("event_name", StringType()),
        StructField("event_at", TimestampType()),
        StructField("tx_id", LongType()),
    ]
)


def t(hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 10, 1, hour, minute)


def test_latest_per_aggregate_is_out_of_order_safe_and_deterministic(spark):
    rows = [
        ("t1", "a", "e1", "PatientRegistered", t(9), 10),
        ("t1", "a", "e3", "PatientAddressChanged", t(11), 12),
        # arrives later (higher tx) but happened earlier: must not win
        ("t1", "a", "e2", "PatientContactChanged", t(10), 30),
        # same event_at: the later transaction wins
        ("t1", "b", "e4", "PatientRegistered", t(9), 10),
        ("t1", "b", "e5", "PatientAddressChanged", t(9), 11),
        # same event_at and transaction: the larger event_id wins, always
        ("t1", "c", "e6", "PatientRegistered", t(9), 10),
        ("t1", "c", "e7", "PatientRegistered", t(9), 10),
        # an exact duplicate row
        ("t2", "a", "e8", "PatientRegistered", t(8), 5),
        ("t2", "a", "e8", "PatientRegistered", t(8), 5),
        # same aggregate id in another tenant is another aggregate; a null event name survives
        ("t2", "d", "e9", None, t(7), 4),
    ]
    events = spark.createDataFrame(rows, EVENTS)
    expected = spark.createDataFrame(
        [
            ("t1", "a", "e3", "PatientAddressChanged", t(11), 12),
            ("t1", "b", "e5", "PatientAddressChanged", t(9), 11),
            ("t1", "c", "e7", "PatientRegistered", t(9), 10),
            ("t2", "a", "e8", "PatientRegistered", t(8), 5),
            ("t2", "d", "e9", None, t(7), 4),
        ],
        EVENTS,
    )
    assert_df_equality(latest_per_aggregate(events), expected, ignore_row_order=True)


def test_deleted_flag_follows_configured_suffixes(spark):
    events = spark.createDataFrame(
        [
            ("t1", "a", "e1", "PatientDeleted", t(9), 1),
            ("t1", "b", "e2", "PatientRegistered", t(9), 1),
            ("t1", "c", "e3", "PrescriptionVoided", t(9), 1),
            ("t1", "d", "e4", None, t(9), 1),
        ],
        EVENTS,
    )
    flagged = with_deleted_flag(events, ["Deleted", "Voided"]).select("aggregate_id", "is_deleted")
    expected = spark.createDataFrame(
        [("a", True), ("b", False), ("c", True), ("d", None)],
        StructType([StructField("aggregate_id", StringType()), StructField("is_deleted", BooleanType())]),
    )
    assert_df_equality(flagged, expected, ignore_row_order=True, ignore_nullable=True)


def test_snapshot_fields_become_typed_flat_columns(spark):
    snapshot_schema = StructType(
        [
            StructField("name", StructType([StructField("family", StringType()), StructField("given", StringType())])),
            StructField("version", LongType()),
            StructField("tenant_id", StringType()),  # collides with a system column
        ]
    )
    frame = spark.createDataFrame(
        [
            ("t1", '{"name": {"family": "佐藤", "given": "花子"}, "version": 2, "tenant_id": "x"}'),
            ("t1", '{"version": 1}'),
            ("t1", None),
        ],
        "tenant_id string, aggregate_snapshot string",
    )
    result = with_snapshot_columns(frame, snapshot_schema).drop("aggregate_snapshot")
    expected = spark.createDataFrame(
        [("t1", "佐藤", "花子", 2, "x"), ("t1", None, None, 1, None), ("t1", None, None, None, None)],
        "tenant_id string, name_family string, name_given string, version long, snapshot_tenant_id string",
    )
    assert_df_equality(result, expected, ignore_row_order=True)


def test_aligned_to_adds_missing_columns_as_null_and_casts_to_the_table_type(spark):
    target = StructType(
        [StructField("id", StringType()), StructField("dropped_field", StringType()), StructField("n", LongType())]
    )
    frame = spark.createDataFrame([("a", 1), ("b", None)], "id string, n int")
    expected = spark.createDataFrame([("a", 1, None), ("b", None, None)], "id string, n long, dropped_field string")
    assert_df_equality(aligned_to(frame, target), expected, ignore_row_order=True)
