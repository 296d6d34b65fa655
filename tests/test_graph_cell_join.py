"""store.graph.cell_join against its references, on random clustered vectors and random bars.

The join must find, for each query row, exactly the targets above the row's bar among the inverted
lists an IVF search of that row probes (checked against a per-row scan of those lists), and so every
pair the index search (`incremental.index_above_bar`, the reference) keeps, at the same scores.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from store.graph import cell_join
from store.graph.incremental import index_above_bar
from store.graph.index import build_index, choose_spec, searcher
from store.graph.settings import GraphSettings
from store.graph.vectors import UserVectors, normalise


def _world(seed: int, n: int, t: int, dim: int = 16):
    """(all users, the target rows, query rows, bars): clustered unit vectors, ids sparse and sorted."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    x = normalise(centres[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32))
    uv = UserVectors(np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64), x)
    targets = np.sort(rng.choice(n, t, replace=False))
    queries = np.setdiff1d(np.arange(n), targets)
    bars = rng.uniform(0.3, 0.9, n).astype(np.float32)
    return uv, targets, queries, bars


def _pairs(found) -> dict[tuple[int, int], float]:
    rows, ids, scores = found
    assert len(set(zip(rows.tolist(), ids.tolist(), strict=True))) == len(rows), "a pair found twice"
    return {(int(r), int(i)): float(s) for r, i, s in zip(rows, ids, scores, strict=True)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf_sq8"])
def test_the_join_finds_every_pair_above_the_bar_in_the_probed_lists(seed, kind):
    uv, targets, queries, bars = _world(seed, n=3000, t=800)
    tv = UserVectors(uv.ids[targets], uv.vectors[targets])
    cfg = GraphSettings(index=kind, ivf_nlist=16, ivf_nprobe=3)
    spec = choose_spec(len(tv), cfg, tv.dim)
    index = build_index(tv, spec, cfg)
    block = int(np.random.default_rng(seed).integers(50, 700))  # any block size gives the same pairs
    # one BLAS thread per product, as the workers run theirs (a BLAS that splits one product over its own
    # threads may round a score's last bit apart: OpenBLAS 0.3.31 does on a flat list's (w, 800) products)
    with threadpool_limits(limits=1, user_api="blas"):
        found = cell_join.ListJoin(index, spec, tv, workers=1).above_bar(uv.vectors, queries, bars, block)
    got = _pairs(found)
    threaded = cell_join.ListJoin(index, spec, tv, workers=3).above_bar(uv.vectors, queries, bars, block)
    for mine, theirs in zip(found, threaded, strict=True):  # threads change nothing, not even the order
        np.testing.assert_array_equal(mine, theirs)

    # the reference: per row, every target in the lists its IVF search probes (all targets when flat)
    if kind == "flat":
        probed_targets = [np.arange(len(tv))] * len(queries)
    else:
        offsets, list_ids = cell_join.ivf_lists(index)
        assert np.array_equal(np.sort(list_ids), tv.ids)  # every target in exactly one list
        lists = cell_join.probes(index, spec, uv.vectors[queries])
        probed_targets = [
            tv.positions(np.concatenate([list_ids[offsets[c] : offsets[c + 1]] for c in p if c >= 0]))
            for p in lists
        ]
    want = {}
    for r, cand in zip(queries, probed_targets, strict=True):
        s = uv.vectors[targets[cand]] @ uv.vectors[r]
        want |= {(int(r), int(tv.ids[c])): float(v) for c, v in zip(cand, s, strict=True) if v > bars[r]}
    assert got.keys() == want.keys() and len(want) > 100
    np.testing.assert_allclose([got[p] for p in want], list(want.values()), atol=1e-5)

    # ... so it holds every pair the index search keeps above the bar, with the same (exact) scores
    ref = _pairs(index_above_bar(searcher(index, spec, tv), uv.vectors, queries, bars, 20, 256))
    assert ref.keys() <= got.keys()
    if kind != "ivf_sq8":  # float codes over the same lists: a row with fewer than 20 above the bar has all
        per_row = np.bincount([r for r, _ in ref], minlength=len(uv))
        short = {r for r in queries.tolist() if per_row[r] < 20}
        assert {p for p in ref if p[0] in short} == {p for p in got if p[0] in short} and len(short) > 100
    np.testing.assert_allclose([got[p] for p in ref], list(ref.values()), atol=1e-4)


def test_no_queries_or_no_pair_above_the_bar():
    uv, targets, queries, bars = _world(0, n=500, t=100)
    tv = UserVectors(uv.ids[targets], uv.vectors[targets])
    cfg = GraphSettings(index="ivf", ivf_nlist=4, ivf_nprobe=2)
    spec = choose_spec(len(tv), cfg, tv.dim)
    index = build_index(tv, spec, cfg)
    for rows, bar in ((queries[:0], bars), (queries, np.full_like(bars, 2.0))):
        r, i, s = cell_join.ListJoin(index, spec, tv).above_bar(uv.vectors, rows, bar)
        assert len(r) == len(i) == len(s) == 0 and r.dtype == i.dtype == np.int64


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["ivf", "ivf_sq8"])
def test_the_join_search_is_the_exact_top_k_of_the_probed_lists(seed, kind):
    """`ListJoin.search`: each query's k best by exact score over the lists its IVF search probes (a
    per-row scan is the reference), whatever the block size or thread count; for IVF-Flat that is
    exactly faiss's own search of the same index."""
    uv, _, _, _ = _world(seed, n=4000, t=1)
    nlist = 64 if seed else 400  # seed 0: lists of ~10 users, fewer than k: the nearest list gives no floor
    cfg = GraphSettings(index=kind, ivf_nlist=nlist, ivf_nprobe=5)
    spec = choose_spec(len(uv), cfg, uv.dim)
    index = build_index(uv, spec, cfg)
    k, x = 21, uv.vectors[::7]
    join = cell_join.ListJoin(index, spec, uv, copy=False, workers=1)
    scores, ids = join.search(x, k, block_rows=97)
    again = cell_join.ListJoin(index, spec, uv, copy=True, workers=3).search(x, k, block_rows=512)
    np.testing.assert_allclose(scores, again[0], atol=1e-5)  # products of other shapes round apart
    assert (ids == again[1]).mean() > 0.999

    offsets, list_ids = cell_join.ivf_lists(index)
    for q, p, got_s, got_i in zip(x, cell_join.probes(index, spec, x), scores, ids, strict=True):
        cand = np.concatenate([list_ids[offsets[c] : offsets[c + 1]] for c in p if c >= 0])
        s = uv.vectors[uv.positions(cand)] @ q
        top = np.argsort(-s, kind="stable")[:k]
        np.testing.assert_allclose(got_s[: len(top)], s[top], atol=1e-5)
        assert set(got_i[: len(top)].tolist()) == set(cand[top].tolist()) or np.isclose(s[top][-1], got_s[-1])
        assert (got_i[len(top) :] == -1).all()
    if kind == "ivf":
        ref_s, ref_i = index.search(x, k)
        np.testing.assert_allclose(scores, ref_s, atol=1e-5)
        assert (ids == ref_i).mean() > 0.999


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["ivf", "ivf_sq8"])
def test_the_search_both_ways_also_keeps_every_scanned_pair_above_the_targets_bar(seed, kind):
    """`ListJoin.search_both_ways`: the same top k as `search`, and from the same products every
    (target, query) in the lists the query probes whose score beats the *target's* bar (a per-query
    scan of those lists is the reference), whatever the block size or thread count."""
    uv, _, _, _ = _world(seed, n=4000, t=1)
    rng = np.random.default_rng(seed)
    cfg = GraphSettings(index=kind, ivf_nlist=64, ivf_nprobe=5)
    spec = choose_spec(len(uv), cfg, uv.dim)
    index = build_index(uv, spec, cfg)
    k, rows = 21, np.sort(rng.choice(len(uv), 300, replace=False))
    target_bars = rng.uniform(0.5, 0.95, len(uv)).astype(np.float32)
    target_bars[rows] = np.inf  # as the hour does: no pair into a list that is searched itself
    target_bars[rng.choice(len(uv), 500, replace=False)] = np.inf
    join = cell_join.ListJoin(index, spec, uv, copy=False, workers=1)
    x = uv.vectors[join.in_list_order(rows)]
    scores, ids, (t_rows, q_pos, t_scores) = join.search_both_ways(x, k, target_bars, block_rows=67)
    plain_s, plain_i = join.search(x, k, block_rows=67)
    np.testing.assert_array_equal(ids, plain_i)
    np.testing.assert_array_equal(scores, plain_s)
    threaded = cell_join.ListJoin(index, spec, uv, copy=True, workers=3).search_both_ways(x, k, target_bars)
    np.testing.assert_allclose(scores, threaded[0], atol=1e-5)

    got = {(int(t), int(q)): float(v) for t, q, v in zip(t_rows, q_pos, t_scores, strict=True)}
    assert len(got) == len(t_rows), "a pair found twice"
    again = {(int(t), int(q)) for t, q in zip(threaded[2][0], threaded[2][1], strict=True)}
    offsets, list_ids = cell_join.ivf_lists(index)
    want = {}
    for qi, (q, p) in enumerate(zip(x, cell_join.probes(index, spec, x), strict=True)):
        cand = uv.positions(np.concatenate([list_ids[offsets[c] : offsets[c + 1]] for c in p if c >= 0]))
        s = uv.vectors[cand] @ q
        want |= {(int(c), qi): float(v) for c, v in zip(cand, s, strict=True) if v > target_bars[c]}

    def at_the_bar(pair) -> bool:  # products of other shapes may round a score at the bar either way
        return abs(float(uv.vectors[pair[0]] @ x[pair[1]]) - target_bars[pair[0]]) < 1e-5

    assert all(map(at_the_bar, want.keys() ^ got.keys())) and len(want) > 200
    assert all(map(at_the_bar, again ^ got.keys()))
    common = sorted(want.keys() & got.keys())
    np.testing.assert_allclose([got[p] for p in common], [want[p] for p in common], atol=1e-5)
    assert not np.isin(t_rows, rows).any()  # +inf bars: never


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_graph_built_by_the_join_equals_one_built_by_the_index(settings, tmp_path, mode):
    """The same IVF-Flat graph (full build, then an hour) with graph.scan_with join and index."""
    from core.layout import utc
    from store.graph.build import build_graph
    from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
    from store.graph.snapshot import GraphSnapshot
    from tests.fixtures.graph import graph_settings

    planted = planted_vectors(PlantedConfig(n_users=3000, n_clusters=10, seed=5))
    lists = {}
    for scan in ("index", "join"):
        s = graph_settings(settings, k=10, index="ivf", flat_max_users=100, min_recall=0.0, scan_with=scan)
        s = s.model_copy(update={"data": s.data.model_copy(update={"root": tmp_path / scan})})
        layout = s.layout()
        write_embeddings(layout, "m1", "2026-01-01T01:00Z", planted.user_ids, planted.vectors)
        m = build_graph(s.graph, s.redis, layout, "m1", "2026-01-01T01:00Z")
        as_of = "2026-01-01T01:00Z"
        if mode == "incremental":
            rng = np.random.default_rng(1)
            sel = np.sort(rng.choice(3000, 300, replace=False))
            moved = normalise(planted.vectors[sel] + 0.1 * rng.standard_normal((300, 64)).astype(np.float32))
            as_of = "2026-01-01T02:00Z"
            write_embeddings(layout, "m1", as_of, planted.user_ids[sel], moved)
            m = build_graph(s.graph, s.redis, layout, "m1", as_of)
        assert m["mode"] == mode and m["scan"] == scan, m
        lists[scan] = GraphSnapshot(layout.graph("m1", utc(as_of))).neighbours()
    assert (lists["join"][0] == lists["index"][0]).mean() > 0.999
    np.testing.assert_allclose(lists["join"][1], lists["index"][1], atol=1e-5)
