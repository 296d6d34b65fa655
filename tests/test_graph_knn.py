"""kNN search: exact vs approximate agreement, self-exclusion, padding, index and device choice."""

from __future__ import annotations

import numpy as np
import pytest

from store.graph.index import build_index, choose_device, choose_spec, searcher
from store.graph.knn import (
    PAD,
    drop_self,
    exact_neighbours,
    recall_at_k,
    reference_neighbours,
    search_neighbours,
)
from store.graph.planted import PlantedConfig, planted_vectors
from store.graph.settings import GraphSettings
from store.graph.vectors import UserVectors


@pytest.fixture(scope="module")
def uv():
    p = planted_vectors(PlantedConfig(n_users=4000, n_clusters=20, seed=3))
    return UserVectors.from_arrays(p.user_ids, p.vectors)


def test_faiss_exact_equals_numpy_reference(uv):
    rows = np.arange(0, len(uv), 37)
    ids, scores = exact_neighbours(uv, rows, 10)
    ref_ids, ref_scores = reference_neighbours(uv, rows, 10)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert recall_at_k(ids, ref_ids) > 0.999  # equal up to float ties


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf_sq8", "ivf_pq", "hnsw", "ivf_hnsw_quantizer"])
def test_index_agrees_with_exact_search(uv, kind):
    if kind == "ivf_hnsw_quantizer":  # IVF whose centroids are found through an HNSW graph
        cfg = GraphSettings(index="ivf", ivf_nprobe=8, k=10, hnsw_quantizer_min_nlist=8)
    else:
        cfg = GraphSettings(index=kind, ivf_nprobe=8, k=10)
    spec = choose_spec(len(uv), cfg)
    assert (spec.quantizer_hnsw_m > 0) == (kind == "ivf_hnsw_quantizer")
    index = searcher(build_index(uv, spec, cfg), spec, uv)
    rows = np.arange(0, len(uv), 11)
    approx, approx_scores = search_neighbours(index, uv, rows, 10, batch=97)  # several batches
    exact, exact_scores = reference_neighbours(uv, rows, 10)
    recall = recall_at_k(approx, exact)
    if kind == "flat":
        assert recall > 0.999
        np.testing.assert_allclose(approx_scores, exact_scores, atol=1e-5)
    else:
        assert recall >= 0.9, recall
    assert (np.diff(approx_scores, axis=1) <= 1e-6).all()  # best first
    if spec.k_factor:  # re-ranked scores are exact similarities, not quantised approximations
        r, c = np.nonzero(approx != PAD)
        true = np.einsum("nd,nd->n", uv.vectors[rows[r]], uv.vectors[uv.positions(approx[r, c])])
        np.testing.assert_allclose(approx_scores[r, c], true, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf_sq8", "ivf_pq"])
def test_self_is_never_a_neighbour_even_with_duplicate_vectors(uv, kind):
    vecs = uv.vectors.copy()
    vecs[1] = vecs[0]  # two users with the same vector: each must list the other, never itself
    dup = UserVectors(uv.ids, vecs)
    cfg = GraphSettings(index=kind, k=5)
    spec = choose_spec(len(dup), cfg)
    ids, _ = search_neighbours(searcher(build_index(dup, spec, cfg), spec, dup), dup, np.arange(len(dup)), 5)
    assert not (ids == dup.ids[:, None]).any()
    assert dup.ids[1] in ids[0] and dup.ids[0] in ids[1]
    assert (ids != PAD).all()


def test_drop_self_keeps_rank_order_and_pads():
    q = np.array([7, 8])
    ids = np.array([[7, 3, 4], [1, 2, -1]])
    scores = np.array([[1.0, 0.9, 0.8], [0.7, 0.6, -np.inf]], np.float32)
    out, sc = drop_self(q, ids, scores, 2)
    assert out.tolist() == [[3, 4], [1, 2]]
    out, sc = drop_self(q, ids, scores, 3)
    assert out.tolist() == [[3, 4, PAD], [1, 2, PAD]] and np.isneginf(sc[:, 2]).all()


def test_fewer_users_than_k_pads_lists():
    uv = UserVectors.from_arrays(np.array([5, 6, 7]), np.eye(3, 4, dtype=np.float32))
    ids, _ = exact_neighbours(uv, np.arange(3), 5)
    assert ((ids != PAD).sum(axis=1) == 2).all()
    ref, _ = reference_neighbours(uv, np.arange(3), 5)
    assert ((ref != PAD).sum(axis=1) == 2).all()


def test_auto_spec_is_flat_for_small_and_ivf_for_large():
    cfg = GraphSettings(flat_max_users=1000, ivf_max_users=100_000)
    assert choose_spec(1000, cfg).kind == "flat"
    assert choose_spec(100_000, cfg).kind == "ivf"
    spec = choose_spec(1_000_000, cfg, dim=64)
    assert spec.kind == "ivf_sq8" and spec.nlist == 4000 and spec.nprobe == cfg.ivf_nprobe
    assert spec.k_factor == cfg.sq_k_factor and spec.quantizer_hnsw_m == 0  # 4000 centroids: scanned
    big = choose_spec(10_000_000, cfg, dim=64)
    assert big.nlist == 12_649 and big.quantizer_hnsw_m == 32  # the FAISS guideline at 10M: HNSW quantiser
    assert choose_spec(10_000_000, cfg, dim=64, device="gpu").quantizer_hnsw_m == 0  # a GPU scans them
    pq = choose_spec(1_000_000, GraphSettings(index="ivf_pq"), dim=64)
    assert pq.pq_m == 32 and pq.k_factor == GraphSettings().pq_k_factor
    assert choose_spec(500, GraphSettings(index="hnsw")).params()["hnsw_m"] == 32


def test_device_choice_falls_back_to_cpu_without_gpu():
    assert choose_device("auto", 0, "ivf") == "cpu"
    assert choose_device("auto", 2, "ivf") == "gpu"
    assert choose_device("auto", 2, "hnsw") == "cpu"  # faiss has no GPU HNSW
    assert choose_device("auto", 2, "ivf_pq") == "cpu"  # nor GPU fast-scan PQ
    assert choose_device("never", 2, "flat") == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        choose_device("always", 0, "flat")
    import faiss

    from store.graph.index import num_gpus

    assert num_gpus() == faiss.get_num_gpus()


@pytest.mark.parametrize("spread", [3, 10**12])  # compact ids (dense table) and sparse ids (binary search)
def test_positions_paths_agree(spread):
    rng = np.random.default_rng(4)
    ids = rng.choice(1000 * spread, 1000, replace=False).astype(np.int64) - 500
    uv = UserVectors.from_arrays(ids, rng.standard_normal((1000, 4)))
    ask = np.concatenate([ids[:300], rng.integers(-2000, 1000 * spread, 300), [-(2**63), 2**63 - 1]])
    got = uv.positions(ask.reshape(2, -1)).ravel()
    np.testing.assert_array_equal(got, uv.positions_by_search(ask))
    assert (uv.ids[got[:300]] == ids[:300]).all()
    assert (uv._table() is not None) == (spread == 3)


@pytest.mark.parametrize("spread", [3, 10**12])
def test_marked_is_isin_on_either_path(spread):
    """`UserVectors.marked`: the dense table's mask and np.isin give the same answer, PAD and unknown
    ids included."""
    rng = np.random.default_rng(5)
    ids = rng.choice(1000 * spread, 1000, replace=False).astype(np.int64)
    uv = UserVectors.from_arrays(ids, rng.standard_normal((1000, 4)))
    rows = np.sort(rng.choice(1000, 120, replace=False))
    ask = np.concatenate([uv.ids[rng.integers(0, 1000, 400)], rng.integers(-5, 1000 * spread, 100), [-1]])
    got = uv.marked(ask.reshape(-1, 1), rows)
    assert got.shape == (len(ask), 1) and got[:, 0].sum() > 20
    np.testing.assert_array_equal(got[:, 0], np.isin(ask, uv.ids[rows]))
