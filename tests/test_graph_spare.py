"""graph.spare_neighbours: k + B entries per list, so an incremental hour searches a row again only when
fewer than k of them stay above its bar; readers still see exactly the top k."""

from __future__ import annotations

import numpy as np
import pytest

from core.layout import utc
from store.graph.build import build_graph
from store.graph.knn import PAD, reference_neighbours
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
from store.graph.snapshot import SPARE_IDS_FILE, GraphSnapshot
from store.graph.vectors import normalise
from tests.fixtures.graph import graph_settings

T1, T2, T3 = "2026-01-01T01:00Z", "2026-01-01T02:00Z", "2026-01-01T03:00Z"
K = 8


def _settings(settings, **graph):
    return graph_settings(settings, **{"k": K, "index": "flat", "min_recall": 0.0, **graph})


@pytest.fixture(scope="module")
def planted():
    return planted_vectors(PlantedConfig(n_users=2000, n_clusters=10, seed=3))


def _move(planted, layout, as_of, seed, n=200):
    """Publish the hour's snapshot: ``n`` users (10 %) moved a little, as an active hour does."""
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(len(planted.user_ids), n, replace=False))
    moved = normalise(planted.vectors[sel] + 0.05 * rng.standard_normal((n, planted.vectors.shape[1])))
    write_embeddings(layout, "m1", as_of, planted.user_ids[sel], moved)
    return planted.user_ids[sel]


def _hours(settings, planted, spare_first: int, spare_after: int):
    """A full build (``spare_first``) then two incremental hours (``spare_after``): the manifests."""
    s1, s2 = (
        _settings(settings, spare_neighbours=spare_first),
        _settings(settings, spare_neighbours=spare_after),
    )
    layout = s1.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    out = [build_graph(s1.graph, s1.redis, layout, "m1", T1)]
    moved = []
    for seed, t in ((1, T2), (2, T3)):
        moved.append(_move(planted, layout, t, seed))
        out.append(build_graph(s2.graph, s2.redis, layout, "m1", t))
    return layout, out, moved


def _exact_where_no_miss_is_possible(layout, as_of, moved_ids):
    """Stored top k == brute force on every row whose exact top k names no user moved since the full build
    (there a reverse-insertion miss is impossible); returns the share of rows checked."""
    snap = GraphSnapshot(layout.graph("m1", utc(as_of)))
    nbr, scores = snap.neighbours()
    assert nbr.shape[1] == K  # the served lists are k wide
    uv = snap.vectors
    ref, ref_scores = reference_neighbours(uv, np.arange(len(uv)), K)
    safe = ~np.isin(ref, moved_ids).any(axis=1)
    np.testing.assert_array_equal(np.sort(nbr[safe], axis=1), np.sort(ref[safe], axis=1))
    np.testing.assert_allclose(scores[safe], ref_scores[safe], atol=1e-5)
    return safe.mean()


def test_spare_lists_stay_exact_and_cut_the_research(settings, planted, tmp_path):
    base = settings.model_copy(update={"data": settings.data.model_copy(update={"root": tmp_path / "b0"})})
    spare = settings.model_copy(update={"data": settings.data.model_copy(update={"root": tmp_path / "b8"})})
    _, m0, _ = _hours(base, planted, 0, 0)
    layout, m8, moved = _hours(spare, planted, 8, 8)
    assert [m["mode"] for m in m8] == ["full", "incremental", "incremental"]
    for hour in (1, 2):
        assert m8[hour]["n_thinned"] > 0 and m0[hour]["n_thinned"] == 0
        # the B = 0 build searches again nearly every list a moved user left; B = 8 a few of them
        assert m8[hour]["n_researched"] * 5 < m0[hour]["n_researched"], (m8[hour], m0[hour])
        assert m8[hour]["recall_at_k"] >= 0.99 and m8[hour]["recall_at_k"] >= m0[hour]["recall_at_k"] - 0.005
        assert (
            _exact_where_no_miss_is_possible(layout, (T2, T3)[hour - 1], np.concatenate(moved[:hour])) > 0.1
        )
    snap = GraphSnapshot(layout.graph("m1", utc(T3)))
    wide, _ = snap.neighbours(spare=True)
    assert snap.spare == 8 and wide.shape[1] == K + 8 and (snap.path / SPARE_IDS_FILE).is_file()
    np.testing.assert_array_equal(wide[:, :K], snap.neighbours()[0])  # the spare entries follow the top k


def test_zero_spare_writes_todays_snapshot(settings, planted):
    layout, m, _ = _hours(_settings(settings), planted, 0, 0)
    for hour, t in enumerate((T1, T2, T3)):
        snap = GraphSnapshot(layout.graph("m1", utc(t)))
        assert (
            snap.spare == 0 and not (snap.path / SPARE_IDS_FILE).exists() and m[hour].get("n_thinned", 0) == 0
        )
        assert snap.neighbours(spare=True)[0].shape == (len(snap.vectors), K)


@pytest.mark.parametrize("first, after", [(0, 8), (8, 0), (8, 4)])
def test_a_snapshot_of_another_width_loads_and_updates(settings, planted, first, after):
    """Older snapshots (B = 0, no spare files) update with spare entries, and B can shrink: the cut
    entries raise the bar; either way the lists stay exact where no miss is possible."""
    layout, m, moved = _hours(settings, planted, first, after)
    assert [x["mode"] for x in m] == ["full", "incremental", "incremental"]
    assert [x["spare_neighbours"] for x in m] == [first, after, after]
    for hour, t in ((1, T2), (2, T3)):
        assert m[hour]["recall_at_k"] >= 0.99
        assert _exact_where_no_miss_is_possible(layout, t, np.concatenate(moved[:hour])) > 0.1
    nbr, _ = GraphSnapshot(layout.graph("m1", utc(T3))).neighbours(spare=True)
    assert nbr.shape[1] == K + after and (nbr[:, :K] != PAD).all()


def test_served_lists_are_k_wide(settings, planted, redis_memory):
    s = _settings(settings, spare_neighbours=8, publish_redis=True)
    s = s.model_copy(update={"redis": redis_memory})
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    build_graph(s.graph, s.redis, layout, "m1", T1)
    _move(planted, layout, T2, seed=1)
    m = build_graph(s.graph, s.redis, layout, "m1", T2)
    assert m["mode"] == "incremental"
    from store.graph.redis_io import read_neighbour_lists

    snap = GraphSnapshot(layout.graph("m1", utc(T2)))
    nbr, scores = snap.neighbours()
    got = read_neighbour_lists(s.redis, "m1", snap.vectors.ids[:100])
    changed = set(snap.changed_ids().tolist())
    for i in range(100):
        assert len(got[i][0]) == K
        np.testing.assert_array_equal(got[i][0], nbr[i])
        if snap.vectors.ids[i] in changed:  # unchanged ids are not written again (scores may be older)
            np.testing.assert_allclose(got[i][1], scores[i])


def _merge_rows_by_lexsort(nbr, scores, next_scores, rows, cand_rows, cand_ids, cand_scores) -> None:
    """The reference of `merge_rows` (its earlier code): every entry sorted by (row, id) to drop
    duplicates, then by (row, -score), with two lexsorts."""
    k = nbr.shape[1]
    all_rows = np.concatenate([np.repeat(rows, k), cand_rows])
    all_ids = np.concatenate([nbr[rows].ravel(), cand_ids])
    all_scores = np.concatenate([scores[rows].ravel(), cand_scores])
    valid = all_ids != PAD
    all_rows, all_ids, all_scores = all_rows[valid], all_ids[valid], all_scores[valid]
    order = np.lexsort((all_ids, all_rows))
    all_rows, all_ids, all_scores = all_rows[order], all_ids[order], all_scores[order]
    first = np.ones(len(all_rows), bool)
    first[1:] = (all_rows[1:] != all_rows[:-1]) | (all_ids[1:] != all_ids[:-1])
    all_rows, all_ids, all_scores = all_rows[first], all_ids[first], all_scores[first]
    order = np.lexsort((-all_scores, all_rows))
    all_rows, all_ids, all_scores = all_rows[order], all_ids[order], all_scores[order]
    rank = np.arange(len(all_rows)) - np.searchsorted(all_rows, all_rows, side="left")
    top = rank < k
    np.maximum.at(next_scores, all_rows[~top], all_scores[~top])
    nbr[rows], scores[rows] = PAD, -np.inf
    nbr[all_rows[top], rank[top]] = all_ids[top]
    scores[all_rows[top], rank[top]] = all_scores[top]


@pytest.mark.parametrize("seed", range(5))
def test_merge_rows_equals_its_lexsort_reference(seed):
    """Random lists with holes, candidates that repeat list entries and each other (the forward
    insertion and the reverse search find the same pair), distinct scores: the same lists, scores and
    bars as the two-lexsort reference."""
    from store.graph.incremental import merge_rows

    rng = np.random.default_rng(seed)
    n, k, n_ids = 500, 12, 3000
    ids = np.sort(rng.choice(10**9, n_ids, replace=False))
    score_of = rng.permutation(n_ids * 4)[:n_ids].astype(np.float32) / (n_ids * 4)  # distinct per id
    nbr = np.stack([rng.choice(ids, k, replace=False) for _ in range(n)])
    nbr[rng.random((n, k)) < 0.15] = PAD
    row_shift = rng.random(n).astype(np.float32) * 1e-3  # a row's scores: its own, all distinct
    scores = np.where(nbr == PAD, -np.inf, score_of[np.searchsorted(ids, nbr)] + row_shift[:, None])
    scores = scores.astype(np.float32)
    bars = rng.random(n).astype(np.float32) * 0.1
    rows = np.sort(rng.choice(n, 300, replace=False))
    cand_rows = np.sort(rng.choice(rows, 2000))
    cand_ids = np.where(
        rng.random(2000) < 0.3, nbr[cand_rows, rng.integers(0, k, 2000)], rng.choice(ids, 2000)
    )
    cand_ids = np.where(cand_ids == PAD, ids[0], cand_ids)
    cand_scores = (score_of[np.searchsorted(ids, cand_ids)] + row_shift[cand_rows]).astype(np.float32)
    dup = rng.random(2000) < 0.2  # the same pair found twice
    cand_rows = np.concatenate([cand_rows, cand_rows[dup]])
    cand_ids = np.concatenate([cand_ids, cand_ids[dup]])
    cand_scores = np.concatenate([cand_scores, cand_scores[dup]])
    by_row = np.argsort(cand_rows, kind="stable")
    cand = (cand_rows[by_row], cand_ids[by_row], cand_scores[by_row])
    got = (nbr.copy(), scores.copy(), bars.copy())
    want = (nbr.copy(), scores.copy(), bars.copy())
    merge_rows(*got, rows, *cand)
    _merge_rows_by_lexsort(*want, rows, *cand)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (got[0][rows] != nbr[rows]).any(axis=1).mean() > 0.5  # the merge changed most rows
