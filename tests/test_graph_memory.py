"""The graph build's memory: the streamed read of the embedding snapshots equals the whole-table merge."""

from __future__ import annotations

import numpy as np
import pytest

from core.embeddings import latest_embeddings, vector_array
from core.forget import ForgetList
from core.layout import utc
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
from store.graph.vectors import UserVectors, latest_vectors

T1, T2, T3 = "2026-01-01T01:00Z", "2026-01-01T02:00Z", "2026-01-01T03:00Z"


@pytest.fixture
def planted():
    return planted_vectors(PlantedConfig(n_users=3000, n_clusters=15, seed=5))


def _whole_table(layout, model, as_of, after=None, forget=None) -> UserVectors:
    """The path before streaming: every shard in one table, then `UserVectors.from_arrays`."""
    t = latest_embeddings(layout, model, after=after, until=utc(as_of), columns=["user_id", "vector"])
    ids = t.column("user_id").to_numpy()
    keep = ~forget.mask(ids) if forget is not None else np.ones(len(ids), bool)
    return UserVectors.from_arrays(ids[keep], vector_array(t.column("vector"), dtype=None)[keep])


def _hours(settings, planted):
    """Three snapshots: all users in two shards, then moved + new users (one id twice in a shard)."""
    layout = settings.layout()
    rng = np.random.default_rng(2)
    ids, vecs = planted.user_ids, planted.vectors
    write_embeddings(layout, "m1", T1, ids[:1700], vecs[:1700], shard=0)
    write_embeddings(layout, "m1", T1, ids[1700:], vecs[1700:], shard=1)
    for t, seed in ((T2, 3), (T3, 4)):
        sel = np.sort(rng.choice(len(ids), 400, replace=False))
        new = ids.max() + 1 + seed * 100 + np.arange(30)
        hour_ids = np.concatenate([ids[sel], new, ids[sel[:5]]])  # 5 users twice: the first row wins
        hour = rng.standard_normal((len(hour_ids), vecs.shape[1])).astype(np.float32) * (seed + 1)
        write_embeddings(layout, "m1", t, hour_ids, hour)
    return layout


@pytest.mark.parametrize("chunk", [7, 1000, 65_536])
def test_streamed_read_equals_the_whole_table_merge(settings, planted, chunk):
    layout = _hours(settings, planted)
    forget = ForgetList(np.sort(planted.user_ids[[3, 1800, 2999]]))
    for after, forgotten in ((None, None), (None, forget), (utc(T1), None)):
        got = latest_vectors(layout, "m1", T3, after=after, forget=forgotten or ForgetList(), chunk=chunk)
        ref = _whole_table(layout, "m1", T3, after=after, forget=forgotten)
        assert got.vectors.dtype == np.float32 and len(got) == len(ref) > 0
        np.testing.assert_array_equal(got.ids, ref.ids)
        assert got.vectors.tobytes() == ref.vectors.tobytes()  # bit for bit


def test_streamed_read_leaves_out_an_unreadable_file_like_the_table(settings, planted, caplog):
    layout = _hours(settings, planted)
    bad = next((layout.embeddings("m1", utc(T1)) / "shard=00001").glob("*.parquet"))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated on disk
    got = latest_vectors(layout, "m1", T3, forget=ForgetList())
    assert str(bad) in caplog.text and "unreadable" in caplog.text
    ref = _whole_table(layout, "m1", T3)
    assert len(got) < 3000 + 60  # the bad shard's users that no later hour has are gone, as before
    np.testing.assert_array_equal(got.ids, ref.ids)
    assert got.vectors.tobytes() == ref.vectors.tobytes()
