"""The event validator: every malformed kind is quarantined with its reason; valid rows survive."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.contracts import EVENT, ContractError
from core.settings import EventSettings
from core.validation import (
    QUARANTINE_SCHEMA,
    SeenEvents,
    ValidationRules,
    row_reasons,
    validate_events,
    validate_files,
)

START = datetime(2026, 1, 1, 5, tzinfo=UTC)
END = datetime(2026, 1, 1, 6, tzinfo=UTC)
T = datetime(2026, 1, 1, 5, 30, tzinfo=UTC)
RULES = ValidationRules(
    event_types=("impression", "click", "conversion", "view", "search"),
    max_attribute_id=10**12,
    interval_start=START,
    interval_end=END,
    max_lateness_hours=24,
)


def row(**over):
    base = dict(
        user_id=1,
        ts=T,
        event_type="click",
        item_id=10,
        category_id=3,
        advertiser_id=4,
        campaign_id=5,
        device="ios",
        country="US",
    )
    base.update(over)
    return base


def table(rows, schema=EVENT.schema):
    nullable = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_pylist(rows, schema=nullable)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (row(user_id=None), "null_user_id"),
        (row(user_id=-3), "negative_user_id"),
        (row(user_id=0), "absurd_value:user_id"),
        (row(user_id=2**63 - 1), "absurd_value:user_id"),
        (row(ts=None), "null_ts"),
        (row(ts=datetime(2026, 1, 1, 6, 0, tzinfo=UTC)), "ts_after_interval"),
        (row(ts=datetime(2025, 12, 30, 0, 0, tzinfo=UTC)), "ts_before_lateness_window"),
        (row(ts=datetime(1970, 1, 2, tzinfo=UTC)), "absurd_value:ts"),
        (row(event_type="hover"), "unknown_event_type"),
        (row(event_type=None), "null_event_type"),
        (row(item_id=None), "null_item_id"),
        (row(item_id=-1), "absurd_value:item_id"),
        (row(category_id=-5), "absurd_value:category_id"),
        (row(advertiser_id=10**15), "absurd_value:advertiser_id"),
    ],
)
def test_each_malformed_kind_is_quarantined_with_its_reason(bad, reason):
    good = [row(user_id=2), row(user_id=3, ts=datetime(2026, 1, 1, 1, tzinfo=UTC))]  # 2nd: late, valid
    result = validate_events(table(good + [bad]), RULES)
    assert result.counts == {reason: 1}
    assert result.quarantine.column("reason").to_pylist() == [reason]
    assert result.valid.column("user_id").to_pylist() == [2, 3]
    assert result.valid.schema.equals(EVENT.schema, check_metadata=False)
    assert result.quarantine.schema.equals(QUARANTINE_SCHEMA)


def test_future_against_wall_clock_when_given():
    rules = ValidationRules(event_types=RULES.event_types, now=datetime(2026, 1, 1, 5, 10, tzinfo=UTC))
    result = validate_events(table([row(), row(user_id=2, ts=datetime(2026, 1, 1, 5, 0, tzinfo=UTC))]), rules)
    assert result.counts == {"ts_in_future": 1}
    assert result.valid.column("user_id").to_pylist() == [2]


def test_exact_duplicates_keep_the_first_copy_only():
    rows = [row(), row(), row(item_id=11), row()]
    result = validate_events(table(rows), RULES)
    assert result.counts == {"duplicate": 2}
    assert result.valid.column("item_id").to_pylist() == [10, 11]


def test_a_row_that_differs_only_in_context_is_a_duplicate_and_the_smallest_context_is_kept():
    """The sequence key decides, as in the Spark step (main counted exact copies only: 20 vs 25)."""
    result = validate_events(table([row(device="web"), row(), row(device=None), row(item_id=11)]), RULES)
    assert result.counts == {"duplicate": 2}
    assert result.valid.column("device").to_pylist() == [None, "ios"]  # nulls first, then "ios" < "web"
    assert sorted(result.quarantine.column("device").to_pylist()) == ["ios", "web"]
    assert result.quarantine.column("source_file").to_pylist() == [None, None]  # a property of the run


def test_wrong_column_type_quarantines_only_unreadable_values():
    raw = pa.table(
        {
            "user_id": pa.array(["7", "abc", "9", None]),  # text where int64 is expected
            "ts": pa.array(
                ["2026-01-01T05:10:00Z", "2026-01-01T05:11:00Z", "yesterday", "2026-01-01T05:12:00Z"]
            ),
            "event_type": ["click", "view", "view", "view"],
            "item_id": pa.array([1.0, 2.0, 3.0, 4.5]),  # float ids: 4.5 is not an id
        }
    )
    result = validate_events(raw, RULES)
    assert result.counts == {"bad_type:user_id": 1, "bad_type:ts": 1, "bad_type:item_id": 1}
    assert result.valid.column("user_id").to_pylist() == [7]
    assert result.valid.column("ts").to_pylist()[0] == datetime(2026, 1, 1, 5, 10, tzinfo=UTC)
    assert result.valid.schema.equals(EVENT.schema, check_metadata=False)
    # nothing is lost: the quarantined rows keep their original text
    quarantined = result.quarantine
    assert sorted(quarantined.column("user_id").to_pylist(), key=str) == sorted(["abc", "9", None], key=str)
    texts = {"2026-01-01T05:11:00Z", "yesterday", "2026-01-01T05:12:00Z"}
    assert set(quarantined.column("ts").to_pylist()) == texts


def test_epoch_millis_are_accepted_for_ts():
    ms = int(T.timestamp() * 1000)
    raw = pa.table({"user_id": [1], "ts": pa.array([ms], pa.int64()), "event_type": ["view"], "item_id": [5]})
    result = validate_events(raw, RULES)
    assert result.n_valid == 1 and result.valid.column("ts").to_pylist() == [T]


def test_missing_required_column_quarantines_the_whole_table_as_one_record():
    raw = pa.table({"user_id": [1, 2], "event_type": ["view", "view"], "item_id": [5, 6]})
    result = validate_events(raw, RULES, source="feed.parquet")
    assert result.counts == {"missing_column:ts": 2} and result.n_valid == 0 and result.n_quarantined == 2
    record = result.quarantine.to_pylist()
    assert len(record) == 1 and record[0]["source_file"] == "feed.parquet" and record[0]["rows"] == 2
    assert "requires ['user_id', 'ts', 'event_type', 'item_id']" in record[0]["detail"]
    with pytest.raises(ContractError, match=r"input: quarantined whole \(missing_column:ts"):
        row_reasons(raw, RULES)  # the per-batch entry point refuses such a table outright


def test_optional_columns_may_be_absent():
    raw = pa.table({"user_id": [1], "ts": pa.array([T]), "event_type": ["view"], "item_id": [5]})
    result = validate_events(raw, RULES)
    assert result.n_valid == 1
    assert result.valid.column("category_id").to_pylist() == [None]


def test_counts_match_the_generators_injected_malformed_rows():
    from core.datasets.synthetic import SyntheticConfig, generate

    log = generate(SyntheticConfig(n_users=300, n_items=2000, hours=4, malformed_fraction=0.05, seed=3))
    rules = ValidationRules(
        event_types=RULES.event_types,
        interval_start=datetime(2026, 1, 1, tzinfo=UTC),
        interval_end=datetime(2026, 1, 1, 4, tzinfo=UTC),
        max_lateness_hours=72,
    )
    result = validate_events(log.events, rules)
    assert result.counts == log.manifest["malformed_injected"]
    assert result.n_valid == log.manifest["n_valid_events"]


def test_the_user_id_range_comes_from_the_settings():
    events = EventSettings(min_user_id=100, max_user_id=10**9)
    rules = ValidationRules.from_settings(events, START, END)
    rows = [row(user_id=99), row(user_id=100), row(user_id=10**9), row(user_id=10**9 + 1)]
    result = validate_events(table(rows), rules)
    assert result.counts == {"absurd_value:user_id": 2}
    assert result.valid.column("user_id").to_pylist() == [100, 10**9]
    defaults = ValidationRules.from_settings(EventSettings())
    assert (defaults.min_user_id, defaults.max_user_id) == (1, 2**63 - 2)
    with pytest.raises(ValueError, match="min_user_id <= max_user_id"):
        EventSettings(min_user_id=5, max_user_id=4)


def test_bytes_that_are_not_utf8_in_device_null_the_value_and_keep_every_event(tmp_path):
    """On main one such value sent all 23 rows of the file to quarantine, the 20 good ones included."""
    from bench.bad_input import invalid_utf8

    t = table([row(user_id=i + 1, item_id=100 + i) for i in range(23)])
    devices = [b"ios"] * 20 + [b"\xff\xfe", b"w\xe9b", b"ok"]
    t = t.set_column(t.schema.get_field_index("device"), "device", invalid_utf8(devices))
    pq.write_table(t, tmp_path / "part-00000.parquet")
    result = validate_files([tmp_path / "part-00000.parquet"], RULES)
    assert result.counts == {} and result.n_valid == 23
    assert result.valid.column("device").to_pylist() == ["ios"] * 20 + [None, None, "ok"]


def test_a_corrupt_row_group_is_quarantined_with_its_rows_and_the_other_row_groups_are_kept(tmp_path):
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table([row(user_id=i + 1) for i in range(10)]), path, row_group_size=5, compression="none")
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 16] = (
        b"\xff" * 16
    )  # the page header of row group 1
    path.write_bytes(bytes(data))
    result = validate_files([path], RULES)
    assert result.valid.column("user_id").to_pylist() == [1, 2, 3, 4, 5]
    assert result.counts == {"unreadable_file": 5}
    assert result.files[0].path == str(path) and result.files[0].detail.startswith("row group 1 of 2:")


def test_a_redelivery_in_a_later_hour_is_a_duplicate_when_both_hours_are_validated_together(tmp_path):
    seen = SeenEvents(max_lateness_hours=24)
    first, second = tmp_path / "h05.parquet", tmp_path / "h06.parquet"
    pq.write_table(table([row(), row(user_id=2)]), first)
    pq.write_table(table([row(), row(user_id=3, ts=datetime(2026, 1, 1, 6, 5, tzinfo=UTC))]), second)
    r5 = validate_files([first], RULES, seen=seen)
    r6 = validate_files([second], RULES.for_hour(END), seen=seen)
    assert r5.counts == {} and r6.counts == {"duplicate": 1}
    assert r6.valid.column("user_id").to_pylist() == [3]
    alone = validate_files([second], RULES.for_hour(END))  # without the earlier hour: nothing to repeat
    assert alone.counts == {} and alone.n_valid == 2
