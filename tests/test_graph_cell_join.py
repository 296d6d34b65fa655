"""store.graph.cell_join against its references, on random clustered vectors and random bars.

The join must find, for each query row, exactly the targets above the row's bar among the inverted
lists an IVF search of that row probes (checked against a per-row scan of those lists), and so every
pair the index search (`incremental.index_above_bar`, the reference) keeps, at the same scores.
"""

from __future__ import annotations

import numpy as np
import pytest

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
    found = cell_join.above_bar(uv.vectors, queries, bars, tv, index, spec, block_rows=block, workers=1)
    got = _pairs(found)
    threaded = cell_join.above_bar(uv.vectors, queries, bars, tv, index, spec, block_rows=block, workers=3)
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
        r, i, s = cell_join.above_bar(uv.vectors, rows, bar, tv, index, spec)
        assert len(r) == len(i) == len(s) == 0 and r.dtype == i.dtype == np.int64
