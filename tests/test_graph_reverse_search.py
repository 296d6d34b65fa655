"""graph.reverse_search: every list not searched again looks, through an index of the hour's touched users
only, for the touched users that moved into it. With exact indexes the kept lists are then exact on every
row (the forward insertion alone is exact only where no touched user entered the list)."""

from __future__ import annotations

import numpy as np
import pytest

from core.layout import utc
from store.graph.build import build_graph
from store.graph.incremental import reverse_search
from store.graph.knn import PAD, reference_neighbours
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
from store.graph.settings import GraphSettings
from store.graph.snapshot import GraphSnapshot
from store.graph.vectors import UserVectors, normalise
from tests.fixtures.graph import graph_settings

T1, T2, T3 = "2026-01-01T01:00Z", "2026-01-01T02:00Z", "2026-01-01T03:00Z"
K = 8


@pytest.fixture(scope="module")
def planted():
    return planted_vectors(PlantedConfig(n_users=2000, n_clusters=10, seed=3))


def _move(planted, layout, as_of, seed, n=200):
    """Publish the hour's snapshot: ``n`` users (10 %) moved *to another user's place*, as a user whose
    interests changed does (into lists whose owners are not among its own nearest)."""
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(len(planted.user_ids), n, replace=False))
    to = rng.choice(len(planted.user_ids), n, replace=False)
    moved = normalise(planted.vectors[to] + 0.02 * rng.standard_normal((n, planted.vectors.shape[1])))
    write_embeddings(layout, "m1", as_of, planted.user_ids[sel], moved)


def _hours(settings, planted, root, **graph):
    """A full build then two incremental hours with these graph settings: (layout, manifests)."""
    s = graph_settings(settings, **{"k": K, "index": "flat", "min_recall": 0.0, **graph})
    s = s.model_copy(update={"data": s.data.model_copy(update={"root": root})})
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    out = [build_graph(s.graph, s.redis, layout, "m1", T1)]
    for seed, t in ((1, T2), (2, T3)):
        _move(planted, layout, t, seed)
        out.append(build_graph(s.graph, s.redis, layout, "m1", t))
    return layout, out


def _wrong_rows(layout, as_of) -> int:
    """Rows whose stored top k differs from brute force over the snapshot's vectors."""
    snap = GraphSnapshot(layout.graph("m1", utc(as_of)))
    nbr, scores = snap.neighbours()
    ref, ref_scores = reference_neighbours(snap.vectors, np.arange(len(snap.vectors)), K)
    same = (np.sort(nbr, axis=1) == np.sort(ref, axis=1)).all(axis=1)
    np.testing.assert_allclose(scores[same], ref_scores[same], atol=1e-5)
    return int((~same).sum())


# four figures, each rounded to 3 decimals: the three parts may exceed the whole by up to 2 ms
ROUNDING_S = 0.002


@pytest.mark.parametrize(("spare", "method"), [(0, "join"), (8, "join"), (8, "index")])
def test_reverse_search_makes_every_kept_list_exact(settings, planted, tmp_path, spare, method):
    _, plain = _hours(settings, planted, tmp_path / "plain", spare_neighbours=spare, reverse_search=False)
    rev_settings = {"spare_neighbours": spare, "reverse_search": True, "scan_with": method}
    layout, rev = _hours(settings, planted, tmp_path / "rev", **rev_settings)
    assert [m["mode"] for m in rev] == ["full", "incremental", "incremental"]
    for hour, t in ((1, T2), (2, T3)):
        assert _wrong_rows(layout, t) == 0 and rev[hour]["recall_at_k"] == 1.0
        m = rev[hour]
        assert m["reverse_index"]["kind"] == "flat" and m["reverse_found"] > 0 and m["reverse_search_s"] > 0
        assert m["reverse_method"] == method
        parts = m["forward_search_s"] + m["reverse_search_s"] + m["repair_s"]
        assert 0 < parts <= m["search_s"] + ROUNDING_S  # each figure rounded to the millisecond
        assert m["reverse_queries"] == 2000 - m["n_touched"] - m["n_researched"]
        # the same hours without it: the forward insertion misses lists the moved users jumped into
        assert plain[hour]["recall_at_k"] < 1.0 and "reverse_found" not in plain[hour]


@pytest.mark.parametrize("by", ["touched_index", "forward_scan"])
def test_reverse_search_through_an_ivf_index(settings, planted, tmp_path, by):
    """More touched users than graph.flat_max_users: an IVF index of everyone, calibrated to the target.
    touched_index: an IVF index of the touched users too, each calibrated; forward_scan: the touched
    users' own scan of the full index finds the pairs. Either way the kept lists stay at the target."""
    ivf = {"spare_neighbours": 8, "index": "auto", "flat_max_users": 100}
    _, plain = _hours(settings, planted, tmp_path / "plain", reverse_search=False, **ivf)
    _, m = _hours(settings, planted, tmp_path / "rev", reverse_search=True, reverse_search_by=by, **ivf)
    for hour in (1, 2):
        if by == "touched_index":
            assert m[hour]["reverse_index"]["kind"] == "ivf", m[hour]
            assert m[hour]["reverse_calibration"][-1]["recall"] >= 0.955, m[hour]
        else:
            assert m[hour]["reverse_method"] == "forward_scan" and "reverse_index" not in m[hour], m[hour]
        assert m[hour]["reverse_found"] > 100, m[hour]
        assert m[hour]["recall_at_k"] >= max(0.95, plain[hour]["recall_at_k"]), (m[hour], plain[hour])


def test_forward_scan_on_a_flat_index_searches_an_index_of_the_touched(settings, planted, tmp_path):
    """A flat index has no lists to scan both ways: graph.reverse_search_by: forward_scan falls back to
    the index of the touched users, with the same exact lists."""
    layout, m = _hours(settings, planted, tmp_path, spare_neighbours=8, reverse_search_by="forward_scan")
    assert [h.get("reverse_method") for h in m[1:]] == ["index", "index"]
    assert _wrong_rows(layout, T3) == 0


@pytest.mark.parametrize("method", ["index", "join"])
def test_reverse_search_finds_what_brute_force_finds(method):
    """The candidates of each query row: the touched users scoring above its bar, exactly those of a
    brute-force scan (flat index); the index search keeps only its ``width`` nearest of them."""
    rng = np.random.default_rng(0)
    uv = UserVectors(np.arange(10, 610), normalise(rng.standard_normal((600, 16)).astype(np.float32)))
    touched = np.sort(rng.choice(600, 60, replace=False))
    fixed = np.union1d(touched, np.arange(5))  # the touched rows and five searched again
    bars = rng.uniform(0.1, 0.5, 600).astype(np.float32)
    cfg = GraphSettings(scan_with=method)
    (rows, ids, scores), stats = reverse_search(uv, touched, fixed, bars, 6, cfg, 0.95)
    assert stats["reverse_queries"] == 600 - len(fixed) and stats["reverse_found"] == len(rows)
    assert stats["reverse_method"] == method
    sims = uv.vectors @ uv.vectors[touched].T  # (N, T)
    want = set()
    for r in np.setdiff1d(np.arange(600), fixed):
        top = np.argsort(-sims[r])[: 6 if method == "index" else None]
        want |= {(r, int(uv.ids[touched[j]])) for j in top if sims[r, j] > bars[r]}
    assert set(zip(rows.tolist(), ids.tolist())) == want and (ids != PAD).all()
    np.testing.assert_allclose(scores, sims[rows, np.searchsorted(uv.ids[touched], ids)], atol=1e-5)


def test_the_forward_scan_applies_to_ivf_indexes_searched_on_the_cpu(monkeypatch):
    """graph.reverse_search_by: forward_scan needs IVF lists and the CPU join: a flat index, or an index
    that faiss searches on a GPU (use_gpu auto with GPUs, always), keeps the index of the touched."""
    from store.graph import build
    from store.graph.index import IndexSpec

    ivf, flat = IndexSpec("ivf_sq8", nlist=64, nprobe=8), IndexSpec("flat")
    scan, by_index = GraphSettings(), GraphSettings(reverse_search_by="touched_index")
    monkeypatch.setattr(build, "num_gpus", lambda: 0)
    assert build.reverse_in_forward_scan(scan, ivf) and build.uses_list_join(scan, ivf)
    assert not build.reverse_in_forward_scan(scan, flat) and not build.reverse_in_forward_scan(by_index, ivf)
    assert not build.uses_list_join(scan.model_copy(update={"reverse_search": False}), ivf)
    monkeypatch.setattr(build, "num_gpus", lambda: 2)
    assert not build.reverse_in_forward_scan(scan, ivf)  # faiss on the GPU searches both indexes
    assert build.reverse_in_forward_scan(scan.model_copy(update={"use_gpu": "never"}), ivf)
