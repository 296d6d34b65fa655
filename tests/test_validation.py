"""The event validator: every malformed kind is quarantined with its reason; valid rows survive."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from core.contracts import EVENT, ContractError
from core.validation import QUARANTINE_SCHEMA, ValidationRules, validate_events

START = datetime(2026, 1, 1, 5, tzinfo=timezone.utc)
END = datetime(2026, 1, 1, 6, tzinfo=timezone.utc)
T = datetime(2026, 1, 1, 5, 30, tzinfo=timezone.utc)
RULES = ValidationRules(
    event_types=("impression", "click", "conversion", "view", "search"),
    max_attribute_id=10**12,
    interval_start=START,
    interval_end=END,
    max_lateness_hours=24,
)


def row(**over):
    base = dict(user_id=1, ts=T, event_type="click", item_id=10, category_id=3, advertiser_id=4, campaign_id=5,
                device="ios", country="US")
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
        (row(ts=None), "null_ts"),
        (row(ts=datetime(2026, 1, 1, 6, 0, tzinfo=timezone.utc)), "ts_after_interval"),
        (row(ts=datetime(2025, 12, 30, 0, 0, tzinfo=timezone.utc)), "ts_before_lateness_window"),
        (row(ts=datetime(1970, 1, 2, tzinfo=timezone.utc)), "absurd_value:ts"),
        (row(event_type="hover"), "unknown_event_type"),
        (row(event_type=None), "null_event_type"),
        (row(item_id=None), "null_item_id"),
        (row(item_id=-1), "absurd_value:item_id"),
        (row(category_id=-5), "absurd_value:category_id"),
        (row(advertiser_id=10**15), "absurd_value:advertiser_id"),
    ],
)
def test_each_malformed_kind_is_quarantined_with_its_reason(bad, reason):
    good = [row(user_id=2), row(user_id=3, ts=datetime(2026, 1, 1, 1, tzinfo=timezone.utc))]  # 2nd: late, valid
    result = validate_events(table(good + [bad]), RULES)
    assert result.counts == {reason: 1}
    assert result.quarantine.column("reason").to_pylist() == [reason]
    assert result.valid.column("user_id").to_pylist() == [2, 3]
    assert result.valid.schema.equals(EVENT.schema, check_metadata=False)
    assert result.quarantine.schema.equals(QUARANTINE_SCHEMA)


def test_future_against_wall_clock_when_given():
    rules = ValidationRules(event_types=RULES.event_types, now=datetime(2026, 1, 1, 5, 10, tzinfo=timezone.utc))
    result = validate_events(table([row(), row(user_id=2, ts=datetime(2026, 1, 1, 5, 0, tzinfo=timezone.utc))]), rules)
    assert result.counts == {"ts_in_future": 1}
    assert result.valid.column("user_id").to_pylist() == [2]


def test_exact_duplicates_keep_the_first_copy_only():
    rows = [row(), row(), row(item_id=11), row()]
    result = validate_events(table(rows), RULES)
    assert result.counts == {"duplicate": 2}
    assert result.valid.column("item_id").to_pylist() == [10, 11]


def test_a_row_that_differs_only_in_context_is_not_a_duplicate():
    result = validate_events(table([row(), row(device="web")]), RULES)
    assert result.counts == {} and result.n_valid == 2


def test_wrong_column_type_quarantines_only_unreadable_values():
    raw = pa.table(
        {
            "user_id": pa.array(["7", "abc", "9", None]),  # text where int64 is expected
            "ts": pa.array(["2026-01-01T05:10:00Z", "2026-01-01T05:11:00Z", "yesterday", "2026-01-01T05:12:00Z"]),
            "event_type": ["click", "view", "view", "view"],
            "item_id": pa.array([1.0, 2.0, 3.0, 4.5]),  # float ids: 4.5 is not an id
        }
    )
    result = validate_events(raw, RULES)
    assert result.counts == {"bad_type:user_id": 1, "bad_type:ts": 1, "bad_type:item_id": 1}
    assert result.valid.column("user_id").to_pylist() == [7]
    assert result.valid.column("ts").to_pylist()[0] == datetime(2026, 1, 1, 5, 10, tzinfo=timezone.utc)
    assert result.valid.schema.equals(EVENT.schema, check_metadata=False)
    # nothing is lost: the quarantined rows keep their original text
    assert sorted(result.quarantine.column("user_id").to_pylist(), key=str) == sorted(["abc", "9", None], key=str)
    assert set(result.quarantine.column("ts").to_pylist()) == {"2026-01-01T05:11:00Z", "yesterday", "2026-01-01T05:12:00Z"}


def test_epoch_millis_are_accepted_for_ts():
    ms = int(T.timestamp() * 1000)
    raw = pa.table({"user_id": [1], "ts": pa.array([ms], pa.int64()), "event_type": ["view"], "item_id": [5]})
    result = validate_events(raw, RULES)
    assert result.n_valid == 1 and result.valid.column("ts").to_pylist() == [T]


def test_missing_required_column_fails_the_whole_file_clearly():
    raw = pa.table({"user_id": [1], "event_type": ["view"], "item_id": [5]})
    with pytest.raises(ContractError, match=r"missing required event column\(s\) \['ts'\]"):
        validate_events(raw, RULES)


def test_optional_columns_may_be_absent():
    raw = pa.table({"user_id": [1], "ts": pa.array([T]), "event_type": ["view"], "item_id": [5]})
    result = validate_events(raw, RULES)
    assert result.n_valid == 1
    assert result.valid.column("category_id").to_pylist() == [None]


def test_counts_match_the_generators_injected_malformed_rows():
    from core.datasets.synthetic import SyntheticConfig, generate

    log = generate(SyntheticConfig(n_users=300, n_items=2000, hours=4, malformed_fraction=0.05, seed=3))
    rules = ValidationRules(event_types=RULES.event_types, interval_start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                            interval_end=datetime(2026, 1, 1, 4, tzinfo=timezone.utc), max_lateness_hours=72)
    result = validate_events(log.events, rules)
    assert result.counts == log.manifest["malformed_injected"]
    assert result.n_valid == log.manifest["n_valid_events"]
