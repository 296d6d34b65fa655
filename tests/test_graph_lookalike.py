"""Lookalike audiences on hand-made vectors where the right audience is known."""

from __future__ import annotations

import numpy as np
import pytest

from store.graph.index import build_index, choose_spec
from store.graph.lookalike import lookalike
from store.graph.settings import GraphSettings
from store.graph.vectors import UserVectors, normalise


def _blobs(rng, centres, per, noise=0.05):
    """Users around given centre directions; returns (vectors, blob label)."""
    dim = len(centres[0])
    x = np.concatenate([np.asarray(c, np.float32) + noise * rng.standard_normal((per, dim)) for c in centres])
    return normalise(x), np.repeat(np.arange(len(centres)), per)


@pytest.fixture(scope="module")
def world():
    """Blob A along e0, blob B along e1, blob C along (e0+e1)/sqrt2 (between A and B), blob D along e2."""
    rng = np.random.default_rng(0)
    e = np.eye(8, dtype=np.float32)
    x, label = _blobs(rng, [e[0], e[1], (e[0] + e[1]) / np.sqrt(2), e[2]], per=200)
    ids = np.arange(len(x), dtype=np.int64) * 10 + 3
    return UserVectors.from_arrays(ids, x), label[np.argsort(ids)]


@pytest.mark.parametrize("method", ["centroid", "multi_centroid", "max_seed"])
def test_single_blob_seeds_give_their_blob(world, method):
    uv, label = world
    seeds = uv.ids[label == 3][:40]
    cfg = GraphSettings(index="flat")
    index = build_index(uv, choose_spec(len(uv), cfg), cfg)
    aud = lookalike(uv, seeds, size=160, method=method, index=index, seed_k=100)
    assert len(aud.user_ids) == 160
    assert (label[uv.positions(aud.user_ids)] == 3).all()  # the other 160 members of blob D
    assert not np.isin(aud.user_ids, seeds).any()
    assert (np.diff(aud.scores) <= 1e-6).all()


def test_multi_interest_seeds_need_multiple_centroids(world):
    """Seeds from A and B: their mean points at C, the blob nobody seeded; multi-centroid keeps A and B."""
    uv, label = world
    seeds = np.concatenate([uv.ids[label == 0][:30], uv.ids[label == 1][:30]])
    mean = lookalike(uv, seeds, size=200, method="centroid")
    multi = lookalike(uv, seeds, size=200, method="multi_centroid", n_centroids=4)
    assert (label[uv.positions(mean.user_ids)] == 2).mean() > 0.9
    got = label[uv.positions(multi.user_ids)]
    assert np.isin(got, [0, 1]).mean() > 0.9 and (got == 0).any() and (got == 1).any()


def test_seed_handling(world):
    uv, label = world
    seeds = list(uv.ids[label == 0][:10]) + [-1, 999_999]
    aud = lookalike(uv, seeds, size=5, exclude_seeds=False, method="centroid")
    assert aud.n_seeds_used == 10 and sorted(aud.missing_seeds.tolist()) == [-1, 999_999]
    assert np.isin(aud.user_ids, seeds).any()  # seeds allowed in when exclude_seeds=False
    big = lookalike(uv, seeds, size=10_000, method="centroid")
    assert len(big.user_ids) == len(uv) - 10  # capped at everyone but the seeds
    with pytest.raises(LookupError, match="none of the 2 seed users"):
        lookalike(uv, [-1, -2], size=5)
    with pytest.raises(ValueError, match="method"):
        lookalike(uv, seeds, size=5, method="nope")
    with pytest.raises(ValueError, match="index"):
        lookalike(uv, seeds, size=5, method="max_seed")
