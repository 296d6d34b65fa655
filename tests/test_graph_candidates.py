"""Candidates from neighbours' recent positives on hand-made data; recent positives from sequences + store."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.atomic import publish_dir
from core.contracts import SEQUENCE, conform
from core.layout import utc
from store.graph.candidates import (
    ArrayNeighbours,
    DictPositives,
    StoreNeighbours,
    StorePositives,
    candidates,
    score_items,
)
from store.graph.positives import publish_recent_positives, recent_positives

AS_OF = utc("2026-01-02T00:00Z")


def test_scores_are_similarity_weighted_votes_without_own_items():
    # neighbours 2 (sim .9) and 3 (sim .5); item 100 engaged by both, 101 by 2 only (twice), 102 by 3,
    # 103 by 2 but already engaged by the user -> excluded
    nbrs = ArrayNeighbours(
        np.array([1, 2, 3]),
        np.array([[2, 3], [1, 3], [1, 2]]),
        np.array([[0.9, 0.5], [0.9, 0.2], [0.5, 0.2]], np.float32),
    )
    pos = DictPositives({1: np.array([103]), 2: np.array([100, 101, 101, 103]), 3: np.array([100, 102])})
    items, scores = candidates(1, 10, nbrs, pos)
    assert items.tolist() == [100, 101, 102]
    np.testing.assert_allclose(scores, [1.4, 0.9, 0.5], rtol=1e-6)
    items, _ = candidates(1, 10, nbrs, pos, exclude_own=False)
    assert 103 in items
    assert candidates(1, 1, nbrs, pos)[0].tolist() == [100]
    with pytest.raises(LookupError, match="user 9"):
        candidates(9, 5, nbrs, pos)
    assert score_items(np.array([2]), np.array([0.9]), [np.zeros(0, np.int64)], np.zeros(0), 5)[0].size == 0


def _sequences(rows):
    """Sequence-contract table from (user, [(hours_before_as_of, event_type, item), ...])."""
    cols = {c: [] for c in ("user_id", "as_of", "n_events", "ts", "event_type", "item_id")}
    for uid, events in rows:
        events = sorted(events, key=lambda e: -e[0])  # oldest -> newest
        cols["user_id"].append(uid)
        cols["as_of"].append(AS_OF)
        cols["n_events"].append(len(events))
        cols["ts"].append([AS_OF - timedelta(hours=h) for h, _, _ in events])
        cols["event_type"].append([t for _, t, _ in events])
        cols["item_id"].append([i for _, _, i in events])
    return conform(pa.table(cols), SEQUENCE)


def test_recent_positives_window_dedupe_order_and_cap():
    table = _sequences(
        [
            (
                1,
                [
                    (1, "click", 10),
                    (2, "view", 11),
                    (3, "conversion", 12),
                    (5, "click", 10),
                    (200, "click", 13),
                ],
            ),
            (2, [(1, "impression", 20)]),
            (3, [(h, "click", 30 + h) for h in range(1, 9)]),
        ]
    )
    ids, items, ages = recent_positives(table, ["click", "conversion"], AS_OF, window_hours=48, per_user=5)
    assert ids.tolist() == [1, 2, 3]
    # newest first, 10 once, 13 too old
    assert items[0].tolist() == [10, 12] and ages[0].tolist() == [1.0, 3.0]
    assert items[1].size == 0
    assert items[2].tolist() == [31, 32, 33, 34, 35]  # capped at the 5 newest


def test_publish_positives_and_candidates_through_the_store(settings, redis_memory):
    from store.graph.redis_io import write_neighbour_lists

    s = settings.model_copy(update={"redis": redis_memory})
    layout = s.layout()
    table = _sequences(
        [
            (1, [(1, "click", 103)]),
            (2, [(2, "click", 100), (3, "click", 101)]),
            (3, [(1, "conversion", 100), (4, "click", 102), (500, "click", 104)]),
        ]
    )
    with publish_dir(layout.active(AS_OF)) as tmp:
        pq.write_table(table, tmp / "shard=00000.parquet")
    out = publish_recent_positives(s.graph, s.events, s.redis, s.layout(), AS_OF)
    assert out["users"] == 3 and out["users_with_positives"] == 3
    write_neighbour_lists(
        s.redis,
        "m1",
        8,
        np.array([1, 2, 3]),
        np.array([[2, 3], [1, 3], [1, 2]]),
        np.array([[0.9, 0.5], [0.9, 0.2], [0.5, 0.2]], np.float32),
        AS_OF,
    )
    items, scores = candidates(1, 10, StoreNeighbours(s.redis, "m1"), StorePositives(s.redis, 168))
    assert items.tolist() == [100, 101, 102]  # 104 is outside the window, 103 is the user's own
    np.testing.assert_allclose(scores, [1.4, 0.9, 0.5], rtol=1e-6)
    # the window is applied at read time too: a day later, a 24h window keeps nothing
    later = StorePositives(s.redis, 24, now=AS_OF + timedelta(hours=24))
    assert all(p.size == 0 for p in later.positives([1, 2, 3]))
    with pytest.raises(FileNotFoundError, match="active-user sequences"):
        publish_recent_positives(s.graph, s.events, s.redis, s.layout(), AS_OF + timedelta(hours=1))


def test_positives_of_an_older_hour_never_replace_newer_ones(settings, store_any):
    s = settings.model_copy(update={"redis": store_any})
    layout = s.layout()
    earlier = AS_OF - timedelta(hours=1)
    for as_of, item in [(AS_OF, 103), (earlier, 999)]:
        hours = 1 if as_of == AS_OF else 2  # hours before AS_OF: inside each hour's own window
        table = _sequences([(1, [(hours, "click", item)]), (2, [(hours, "click", item + 1)])])
        with publish_dir(layout.active(as_of)) as tmp:
            stamped = table.set_column(1, "as_of", pa.array([as_of] * 2, table.schema.field("as_of").type))
            pq.write_table(stamped, tmp / "shard=00000.parquet")
    first = publish_recent_positives(s.graph, s.events, s.redis, layout, AS_OF)
    assert (first["written"], first["stale"]) == (2, 0)
    assert publish_recent_positives(s.graph, s.events, s.redis, layout, AS_OF)["unchanged"] == 2  # rerun
    late = publish_recent_positives(s.graph, s.events, s.redis, layout, earlier)  # a late older hour
    assert (late["users_with_positives"], late["written"], late["stale"]) == (2, 0, 2)
    got = StorePositives(s.redis, 168).positives([1, 2])
    assert [p.tolist() for p in got] == [[103], [104]]
