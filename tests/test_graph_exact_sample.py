"""The samples' exact lists carried from build to build equal brute force every hour (exact_sample.py)."""

from __future__ import annotations

import numpy as np
import pytest

from store.graph.exact_sample import (
    CALIBRATION_SALT,
    RECALL_SALT,
    ExactSample,
    SampleKey,
    carry_exact,
    fresh_exact,
    sample_ids,
)
from store.graph.knn import exact_neighbours
from store.graph.vectors import UserVectors


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def moved(uv: UserVectors, rng, n_moved: int, n_new: int, n_gone: int, drift: float):
    """One hour: ``n_moved`` users' vectors drift, ``n_new`` users arrive, ``n_gone`` are forgotten."""
    ids, vecs = uv.ids.copy(), uv.vectors.copy()
    rows = rng.choice(len(ids), n_moved, replace=False)
    vecs[rows] += drift * rng.standard_normal((n_moved, uv.dim)).astype(np.float32)
    vecs[rows] /= np.linalg.norm(vecs[rows], axis=1, keepdims=True)
    fresh = np.setdiff1d(rng.integers(0, 10**9, n_new), ids)
    gone = rng.choice(np.setdiff1d(np.arange(len(ids)), rows), n_gone, replace=False)
    keep = np.ones(len(ids), bool)
    keep[gone] = False
    all_ids = np.concatenate([ids[keep], fresh])
    all_vecs = np.concatenate([vecs[keep], unit(rng, len(fresh), uv.dim)])
    order = np.argsort(all_ids)
    return UserVectors(all_ids[order], all_vecs[order]), np.union1d(ids[rows], fresh)


@pytest.mark.parametrize("seed", range(3))
def test_carried_lists_equal_brute_force_hour_after_hour(seed, tmp_path):
    rng = np.random.default_rng(seed)
    n, d = 3_000, 12
    uv = UserVectors(np.sort(rng.choice(10**9, n, replace=False)), unit(rng, n, d))
    key = SampleKey(seed=seed, calibration=150, recall=100, k=10)
    exact = fresh_exact(uv, key)
    carried = 0
    for hour in range(8):
        uv, touched = moved(uv, rng, n_moved=int(rng.integers(50, 400)), n_new=40, n_gone=15, drift=0.6)
        exact.save(tmp_path)  # through the snapshot file, as the next build reads it
        exact, stats = carry_exact(
            ExactSample.load(tmp_path), uv, touched, key, block=int(rng.integers(64, 900))
        )
        carried += stats["exact_carried"]
        assert stats["exact_carried"] + stats["exact_searched"] == len(exact.ids)
        ids, in_cal, in_rec = key.members(uv)
        assert np.array_equal(exact.ids, ids)
        assert np.array_equal(exact.in_calibration, in_cal) and np.array_equal(exact.in_recall, in_rec)
        ref_ids, ref_scores = exact_neighbours(uv, uv.positions(exact.ids), key.k)
        np.testing.assert_array_equal(exact.nbr_ids[:, : key.k], ref_ids, err_msg=f"hour {hour}")
        np.testing.assert_allclose(exact.scores[:, : key.k], ref_scores, atol=1e-6)
        # the cut is a true bound: nobody outside a row's list scores above it
        sims = uv.vectors[uv.positions(exact.ids)] @ uv.vectors.T
        sims[np.arange(len(exact.ids)), uv.positions(exact.ids)] = -np.inf  # self
        listed = uv.marked(exact.nbr_ids, np.arange(len(uv)))  # PAD is unknown: never marked
        for i in range(len(exact.ids)):
            outside = np.setdiff1d(np.arange(len(uv)), uv.positions(exact.nbr_ids[i][listed[i]]))
            assert sims[i, outside].max(initial=-np.inf) <= exact.cut[i] + 1e-6
        checks = exact.checks(uv)  # the two samples: rows and their exact top k
        for (rows, top), size, salt in zip(checks, (150, 100), (CALIBRATION_SALT, RECALL_SALT), strict=True):
            assert np.array_equal(uv.ids[rows], sample_ids(uv.ids, size, seed + salt))
            np.testing.assert_array_equal(top, exact_neighbours(uv, rows, key.k)[0])
    assert carried > 0.5 * 8 * len(exact.ids)  # most rows came from the previous hour, not brute force


def test_samples_are_stable_unbiased_hashes_and_a_new_key_starts_over():
    ids = np.arange(0, 20_000, 3, dtype=np.int64)
    a = sample_ids(ids, 100, salt=7)
    assert len(a) == 100 and np.isin(a, ids).all() and (np.diff(a) > 0).all()
    more = np.union1d(ids, np.arange(1, 20_000, 3))  # the same users plus as many new ones
    b = sample_ids(more, 100, salt=7)
    assert 20 < np.isin(b, a).sum() < 80  # new users entered; the members kept are members before
    assert np.isin(b[np.isin(b, ids)], a).all()
    assert not np.array_equal(sample_ids(ids, 100, salt=13), a)  # the calibration sample is another one
    assert np.array_equal(sample_ids(ids[:50], 100, salt=7), ids[:50])  # fewer users than the sample
    rng = np.random.default_rng(0)
    uv = UserVectors(ids, unit(rng, len(ids), 8))
    first = fresh_exact(uv, SampleKey(0, 30, 30, 5))
    other, stats = carry_exact(first, uv, ids[:0], SampleKey(0, 30, 30, 6))
    assert stats == {"exact_carried": 0, "exact_searched": len(other.ids)}


def test_fewer_users_than_the_depth_lists_everyone():
    rng = np.random.default_rng(1)
    uv = UserVectors(np.arange(12, dtype=np.int64), unit(rng, 12, 4))
    key = SampleKey(0, 5, 5, 10)  # depth 20 > 11 other users
    exact = fresh_exact(uv, key)
    assert (exact.cut == -np.inf).all()
    uv2, touched = moved(uv, rng, 3, 2, 1, 0.5)
    carried, stats = carry_exact(exact, uv2, touched, key)
    assert stats["exact_carried"] > 0
    ref, _ = exact_neighbours(uv2, uv2.positions(carried.ids), 10)
    np.testing.assert_array_equal(carried.nbr_ids[:, :10], ref)
