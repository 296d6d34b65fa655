"""Training sets: exact match with a plain-Python reference, and no target ever leaks into its input."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.atomic import read_marker
from core.datasets.events import partition_hour, published_partitions, read_partition
from core.datasets.synthetic import SyntheticConfig, generate, write_log
from core.layout import HOUR, utc
from core.validation import ValidationRules, validate_events
from pipelines.trainset import build_trainset
from soe.config import load_settings
from tests.test_pipelines_reference import FIELDS, sort_key, table_events

MAX_LEN = 5


@pytest.fixture(scope="module")
def log_settings(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainset") / "data"
    settings = load_settings(environ={"SOE_DATA__ROOT": str(root), "SOE_SEQUENCES__MAX_LEN": str(MAX_LEN)})
    cfg = SyntheticConfig(
        n_users=40,
        n_items=200,
        n_clusters=4,
        hours=4,
        base_events_per_user=30,
        ctr_interest=0.3,
        ctr_other=0.1,
        late_fraction=0.1,
        malformed_fraction=0.02,
        seed=11,
    )
    write_log(generate(cfg), settings.layout())
    return settings


def reference_events(settings) -> dict[int, list[tuple]]:
    """Valid, deduplicated events per user, sorted, from the foundation validator."""
    out: dict[int, set] = {}
    for part in published_partitions(settings.layout()):
        hour = partition_hour(part)
        valid = validate_events(
            read_partition(part), ValidationRules.from_settings(settings.events, hour, hour + HOUR)
        ).valid
        for user, event in table_events(valid):
            out.setdefault(user, set()).add(event)
    return {u: sorted(e, key=sort_key) for u, e in out.items()}


def rows_of(path) -> dict[int, dict]:
    table = pq.read_table(path)
    for c in ("ts", "target_ts"):
        table = table.set_column(table.schema.get_field_index(c), c, table[c].cast(pa.list_(pa.int64())))
    out = {}
    for row in table.to_pylist():
        out[row["user_id"]] = {
            "input": list(zip(*[row[c] for c in FIELDS])),
            "targets": list(zip(*[row[f"target_{c}"] for c in FIELDS])),
            "as_of": row["as_of"],
            "n_events": row["n_events"],
            "n_targets": row["n_targets"],
        }
    return out


def test_time_split_matches_reference_and_never_leaks(spark, log_settings):
    path = build_trainset(log_settings.pipeline(), "time_split", window_hours=1, spark=spark)
    marker = read_marker(path)
    split = utc(marker["split_time"])
    split_ms, end_ms = int(split.timestamp() * 1000), int((split + timedelta(hours=1)).timestamp() * 1000)
    positives = set(log_settings.events.positive_event_types)
    expected = {}
    for user, events in reference_events(log_settings).items():
        inp = [e for e in events if e[0] <= split_ms][-MAX_LEN:]
        tgt = [e for e in events if split_ms < e[0] <= end_ms and e[1] in positives]
        if inp and tgt:
            expected[user] = (inp, tgt)
    rows = rows_of(path)
    assert len(expected) >= 5 and marker["users"] == len(expected)
    assert {u: (r["input"], r["targets"]) for u, r in rows.items()} == expected
    for r in rows.values():  # the no-leak property, stated directly
        assert max(e[0] for e in r["input"]) <= split_ms < min(e[0] for e in r["targets"])
        assert not set(r["input"]) & set(r["targets"])
        assert (
            r["as_of"] == split and r["n_events"] == len(r["input"]) and r["n_targets"] == len(r["targets"])
        )


def test_leave_last_out_matches_reference_and_never_leaks(spark, log_settings):
    path = build_trainset(log_settings.pipeline(), "leave_last_out", name="llo", spark=spark)
    positives = set(log_settings.events.positive_event_types)
    expected = {}
    for user, events in reference_events(log_settings).items():
        idx = [i for i, e in enumerate(events) if e[1] in positives]
        if idx and idx[-1] > 0:
            expected[user] = (events[: idx[-1]][-MAX_LEN:], [events[idx[-1]]])
    rows = rows_of(path)
    assert len(expected) >= 5
    assert {u: (r["input"], r["targets"]) for u, r in rows.items()} == expected
    for r in rows.values():
        (target,) = r["targets"]
        assert all(sort_key(e) < sort_key(target) for e in r["input"]) and target not in r["input"]
        assert int(r["as_of"].timestamp() * 1000) == r["input"][-1][0]  # as_of says nothing about the target


def test_unknown_kind_is_a_clear_error(log_settings):
    with pytest.raises(ValueError, match="time_split"):
        build_trainset(log_settings.pipeline(), "random", spark=object())
