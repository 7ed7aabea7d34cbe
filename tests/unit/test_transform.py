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

from pipelines.drift import SnapshotColumn, plan_columns
from pipelines.transform import (
    aligned_to,
    dedupe_events,
    drift_checks,
    drift_conflicts,
    history_changes,
    history_timeline,
    latest_per_aggregate,
    with_deleted_flag,
    with_snapshot_columns,
    with_valid_to,
)

EVENTS = StructType(
    [
        StructField("source", StringType()),
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
        ("s", "t1", "a", "e1", "PatientRegistered", t(9), 10),
        ("s", "t1", "a", "e3", "PatientAddressChanged", t(11), 12),
        # arrives later (higher tx) but happened earlier: must not win
        ("s", "t1", "a", "e2", "PatientContactChanged", t(10), 30),
        # same event_at: the later transaction wins
        ("s", "t1", "b", "e4", "PatientRegistered", t(9), 10),
        ("s", "t1", "b", "e5", "PatientAddressChanged", t(9), 11),
        # same event_at and transaction: the larger event_id wins, always
        ("s", "t1", "c", "e6", "PatientRegistered", t(9), 10),
        ("s", "t1", "c", "e7", "PatientRegistered", t(9), 10),
        # an exact duplicate row
        ("s", "t2", "a", "e8", "PatientRegistered", t(8), 5),
        ("s", "t2", "a", "e8", "PatientRegistered", t(8), 5),
        # same aggregate id in another tenant is another aggregate; a null event name survives
        ("s", "t2", "d", "e9", None, t(7), 4),
    ]
    events = spark.createDataFrame(rows, EVENTS)
    expected = spark.createDataFrame(
        [
            ("s", "t1", "a", "e3", "PatientAddressChanged", t(11), 12),
            ("s", "t1", "b", "e5", "PatientAddressChanged", t(9), 11),
            ("s", "t1", "c", "e7", "PatientRegistered", t(9), 10),
            ("s", "t2", "a", "e8", "PatientRegistered", t(8), 5),
            ("s", "t2", "d", "e9", None, t(7), 4),
        ],
        EVENTS,
    )
    assert_df_equality(latest_per_aggregate(events), expected, ignore_row_order=True)


def test_dedupe_events_keeps_the_newest_commit_of_a_reinserted_event(spark):
    schema = "source string, event_id string, event_name string, _commit_version long"
    changes = spark.createDataFrame(
        [
            ("s", "e1", "PatientRegistered", 1),
            # removed by hand, then put back by a repair: a second insert in the change feed
            ("s", "e1", "PatientRegistered", 7),
            # the same id in another source is another event
            ("other", "e1", "PatientRegistered", 2),
            ("s", "e2", None, 3),
        ],
        schema,
    )
    expected = spark.createDataFrame(
        [("s", "e1", "PatientRegistered", 7), ("other", "e1", "PatientRegistered", 2), ("s", "e2", None, 3)], schema
    )
    assert_df_equality(dedupe_events(changes), expected, ignore_row_order=True)


def test_deleted_flag_follows_configured_suffixes(spark):
    events = spark.createDataFrame(
        [
            ("s", "t1", "a", "e1", "PatientDeleted", t(9), 1),
            ("s", "t1", "b", "e2", "PatientRegistered", t(9), 1),
            ("s", "t1", "c", "e3", "PrescriptionVoided", t(9), 1),
            ("s", "t1", "d", "e4", None, t(9), 1),
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
    plan = plan_columns([], snapshot_schema, taken={"tenant_id", "aggregate_snapshot"})
    result = with_snapshot_columns(frame, plan).drop("aggregate_snapshot")
    expected = spark.createDataFrame(
        [("t1", "佐藤", "花子", 2, "x"), ("t1", None, None, 1, None), ("t1", None, None, None, None)],
        "tenant_id string, name_family string, name_given string, version long, snapshot_tenant_id string",
    )
    assert_df_equality(result, expected, ignore_row_order=True)


def test_aligned_to_adds_missing_columns_as_null_and_casts_to_the_table_type(spark):
    target = {"id": StringType(), "dropped_field": StringType(), "n": LongType()}
    frame = spark.createDataFrame([("a", 1, "x"), ("b", None, "y")], "id string, n int, extra string")
    expected = spark.createDataFrame([("a", None, 1), ("b", None, None)], "id string, dropped_field string, n long")
    assert_df_equality(aligned_to(frame, target), expected, ignore_row_order=True)


KEYED = "source string, tenant_id string, aggregate_id string, event_id string, event_at timestamp, tx_id long"


def test_valid_to_is_the_next_event_in_business_time_with_deterministic_ties(spark):
    events = spark.createDataFrame(
        [
            ("s", "t1", "a", "e1", t(9), 10),
            ("s", "t1", "a", "e3", t(11), 12),
            ("s", "t1", "a", "e2", t(10), 30),  # committed last, happened second
            ("s", "t1", "b", "e5", t(9), 11),  # same event_at: the transaction decides
            ("s", "t1", "b", "e4", t(9), 10),
            ("s", "t1", "c", "e7", t(9), None),  # no transaction id (lookback mode): event_id decides
            ("s", "t1", "c", "e6", t(9), None),
            ("s", "t2", "a", "e8", t(8), 5),  # same aggregate id, other tenant
        ],
        KEYED,
    )
    expected = spark.createDataFrame(
        [
            ("s", "t1", "a", "e1", t(9), 10, t(10)),
            ("s", "t1", "a", "e2", t(10), 30, t(11)),
            ("s", "t1", "a", "e3", t(11), 12, None),
            ("s", "t1", "b", "e4", t(9), 10, t(9)),
            ("s", "t1", "b", "e5", t(9), 11, None),
            ("s", "t1", "c", "e6", t(9), None, t(9)),
            ("s", "t1", "c", "e7", t(9), None, None),
            ("s", "t2", "a", "e8", t(8), 5, None),
        ],
        KEYED + ", valid_to timestamp",
    )
    assert_df_equality(with_valid_to(events), expected, ignore_row_order=True, ignore_nullable=True)


def test_history_timeline_moves_only_the_valid_to_that_change(spark):
    existing = spark.createDataFrame(
        [
            ("s", "t1", "a", "e1", t(9), 1, t(11)),
            ("s", "t1", "a", "e3", t(11), 3, None),
        ],
        KEYED + ", valid_to timestamp",
    )
    new = spark.createDataFrame(
        [
            ("s", "t1", "a", "e2", t(10), 5),  # late: lands between e1 and e3
            ("s", "t1", "a", "e4", t(12), 6),  # newest
            ("s", "t1", "a", "e3", t(11), 3),  # already in the history: counts once
        ],
        KEYED,
    )
    timeline = history_timeline(existing, new)
    expected = spark.createDataFrame(
        [
            ("t1", "a", "s", "e1", t(10), t(11), False),
            ("t1", "a", "s", "e2", t(11), None, True),
            ("t1", "a", "s", "e3", t(12), None, False),
            ("t1", "a", "s", "e4", None, None, True),
        ],
        "tenant_id string, aggregate_id string, source string, event_id string, valid_to timestamp, "
        "old_valid_to timestamp, is_new boolean",
    )
    assert_df_equality(timeline, expected, ignore_row_order=True, ignore_nullable=True)
    changes = history_changes(timeline, new.withColumn("event_name", new.event_id)).select(
        "event_id", "valid_to", "is_new", "event_name", "valid_from"
    )
    expected_changes = spark.createDataFrame(
        [
            ("e1", t(10), False, None, None),
            ("e2", t(11), True, "e2", t(10)),
            ("e3", t(12), False, "e3", t(11)),  # the duplicate's data joins, but it only moves valid_to
            ("e4", None, True, "e4", t(12)),
        ],
        "event_id string, valid_to timestamp, is_new boolean, event_name string, valid_from timestamp",
    )
    assert_df_equality(changes, expected_changes, ignore_row_order=True, ignore_nullable=True)


def _schema(ddl: str, spark) -> StructType:
    return spark.createDataFrame([], ddl).schema


def test_plan_adds_new_fields_and_keeps_existing_columns_and_types(spark):
    existing = [
        SnapshotColumn(("dose",), "dose", LongType()),
        SnapshotColumn(("address", "city"), "address_city", StringType()),
        SnapshotColumn(("note",), "note", StringType()),
    ]
    # dose became text, address became text, note became an object, status is new, a nested
    # field below the text column note is not a column of its own.
    inferred = _schema("dose string, address string, note struct<text:string>, status string", spark)
    plan = plan_columns(existing, inferred, taken={"tenant_id"})
    assert [(c.path, c.name, c.data_type) for c in plan.columns] == [
        (("dose",), "dose", LongType()),
        (("address", "city"), "address_city", StringType()),
        (("note",), "note", StringType()),
        (("status",), "status", StringType()),
    ]
    assert [c.name for c in plan.added] == ["status"]
    assert drift_checks(plan, inferred) == [
        (("dose",), "dose", "bigint", "string"),
        (("address",), None, "object", "string"),
    ]


def test_drift_conflicts_count_values_that_do_not_fit(spark):
    existing = [
        SnapshotColumn(("dose",), "dose", LongType()),
        SnapshotColumn(("address", "city"), "address_city", StringType()),
    ]
    rows = spark.createDataFrame(
        [
            ("e1", '{"dose": 5, "address": {"city": "札幌市"}}'),
            ("e2", '{"dose": "five", "address": "札幌市北区"}'),  # text where a number was; text where an object was
            ("e3", '{"dose": {"amount": 5, "unit": "mg"}, "address": null}'),  # an object where a number was
            ("e4", '{"dose": null}'),  # a null and a missing field are no conflicts
            ("e5", '{"dose": 7, "address": {"city": null}}'),
        ],
        "event_id string, aggregate_snapshot string",
    )
    inferred = _schema("dose string, address string", spark)
    plan = plan_columns(existing, inferred, taken=set())
    typed = with_snapshot_columns(rows, plan)
    assert typed.orderBy("event_id").select("dose", "address_city").collect() == [
        (5, "札幌市"),
        (None, None),
        (None, None),
        (None, None),
        (7, None),
    ]
    counts = drift_conflicts(typed, plan, inferred).first().asDict()
    assert counts == {"c0_rows": 2, "c0_example": "e2", "c1_rows": 1, "c1_example": "e2"}
