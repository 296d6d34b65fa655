"""build_graph end to end on planted vectors: published snapshot, manifest, incremental == rebuild."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.atomic import is_complete, read_marker
from core.contracts import NEIGHBOURS
from core.layout import utc
from store.graph.build import build_graph
from store.graph.index import searcher, set_search_params
from store.graph.knn import PAD, recall_at_k, reference_neighbours, search_neighbours
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
from store.graph.snapshot import GraphSnapshot, latest_snapshot
from store.graph.vectors import latest_vectors, normalise
from tests.fixtures.graph import graph_settings as _settings

T1, T2, T3 = "2026-01-01T01:00Z", "2026-01-01T02:00Z", "2026-01-01T03:00Z"


@pytest.fixture
def planted():
    return planted_vectors(PlantedConfig(n_users=3000, n_clusters=15, seed=5))


def _touch(planted, layout, as_of, n=150, seed=1, new_users=20):
    """Publish a later snapshot: n existing users moved, plus some brand-new users."""
    rng = np.random.default_rng(seed)
    sel = rng.choice(len(planted.user_ids), n, replace=False)
    moved = normalise(planted.vectors[sel] + 0.3 * rng.standard_normal((n, planted.vectors.shape[1])))
    new_ids = planted.user_ids.max() + 1 + np.arange(new_users)
    new_vecs = normalise(rng.standard_normal((new_users, planted.vectors.shape[1])))
    ids = np.concatenate([planted.user_ids[sel], new_ids])
    write_embeddings(layout, "m1", as_of, ids, np.concatenate([moved, new_vecs]))
    return ids


def test_latest_vectors_newest_snapshot_wins(settings, planted):
    layout = settings.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    ids = _touch(planted, layout, T2)
    uv1, uv2 = latest_vectors(layout, "m1", T1), latest_vectors(layout, "m1", T2)
    assert len(uv1) == 3000 and len(uv2) == 3020
    later = pq.read_table(next(layout.embeddings("m1", utc(T2)).rglob("*.parquet")))
    later_vec = np.asarray(later.column("vector").to_pylist(), np.float32)
    np.testing.assert_allclose(uv2.vectors[uv2.positions(ids)], normalise(later_vec), atol=1e-6)
    untouched = np.setdiff1d(planted.user_ids, ids)[:50]
    np.testing.assert_array_equal(
        uv2.vectors[uv2.positions(untouched)], uv1.vectors[uv1.positions(untouched)]
    )
    with pytest.raises(FileNotFoundError, match="no published embeddings"):
        latest_vectors(layout, "other", T2)


def test_stale_shards_of_a_marked_snapshot_are_ignored(settings, planted):
    """The encoder's rule: once a snapshot is marked with num_shards, extra leftover shards do not count."""
    from core.embeddings import mark_snapshot

    layout = settings.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids[:1000], planted.vectors[:1000], shard=0)
    write_embeddings(layout, "m1", T1, planted.user_ids[1000:1200], planted.vectors[1000:1200], shard=1)
    assert len(latest_vectors(layout, "m1", T1)) == 1200
    mark_snapshot(layout, "m1", utc(T1), num_shards=1)  # a rerun with one shard; shard 1 is a leftover
    assert len(latest_vectors(layout, "m1", T1)) == 1000


def test_full_build_publishes_snapshot_and_manifest(settings, planted):
    s = _settings(settings, index="ivf")
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    m = build_graph(s.graph, s.redis, s.layout(), "m1", T1)
    path = layout.graph("m1", utc(T1))
    assert is_complete(path) and read_marker(path)["recall_at_k"] == m["recall_at_k"]
    for key in ("n_users", "k", "index", "recall_at_k", "build_s", "model_version", "as_of"):
        assert key in m
    assert (m["mode"], m["n_users"], m["index"]["kind"], m["device"]) == ("full", 3000, "ivf", "cpu")
    assert m["recall_at_k"] >= 0.9
    table = pq.read_table(path / "neighbours.parquet")
    assert table.schema.equals(NEIGHBOURS.schema) and table.num_rows == 3000
    uids = table.column("user_id").to_numpy()
    lists = table.column("neighbor_ids").to_pylist()
    assert all(len(x) == 8 and u not in x for u, x in zip(uids, lists))
    # idempotent rerun: same neighbours, one published directory
    first = table.column("neighbor_ids").to_pylist()
    build_graph(s.graph, s.redis, s.layout(), "m1", T1, incremental=False)
    assert pq.read_table(path / "neighbours.parquet").column("neighbor_ids").to_pylist() == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf_sq8", "ivf_pq"])
def test_incremental_equals_rebuild_for_touched_users(settings, planted, kind):
    s = _settings(settings, index=kind, min_recall=0.0)
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    build_graph(s.graph, s.redis, s.layout(), "m1", T1)
    prev = latest_snapshot(layout, "m1")
    touched = _touch(planted, layout, T2)
    m = build_graph(s.graph, s.redis, s.layout(), "m1", T2)
    assert m["mode"] == "incremental" and m["n_touched"] == len(touched) and m["n_new_users"] == 20
    snap = GraphSnapshot(layout.graph("m1", utc(T2)))
    nbr, _ = snap.neighbours()
    uv = snap.vectors
    rows = uv.positions(touched)
    # a from-scratch index over the merged vectors (IVF: same trained centroids, refilled)
    index = prev.index()
    index.reset()
    index.add_with_ids(uv.vectors, uv.ids)
    assert (snap.spec.nprobe or 0) >= (prev.spec.nprobe or 0)  # re-calibrated: the knob only climbs
    assert m["search_knob"] == (None if kind == "flat" else snap.spec.nprobe)  # the knob it searched with
    set_search_params(index, snap.spec)  # ... and the hour searched with it
    # touched rows are searched for k + spare entries (the quantised kinds re-rank k_factor x that)
    fresh = search_neighbours(searcher(index, snap.spec, uv), uv, rows, 8 + snap.spare)[0][:, :8]
    if kind == "ivf_pq":  # fast-scan ranks by 16-bit quantised distances: ties at the re-rank cut-off
        assert recall_at_k(nbr[rows], fresh) > 0.95  # fall by list layout, which remove+add changes
    elif kind == "ivf_sq8":  # 8-bit codes: rarer ties at the cut-off, broken the same way
        assert recall_at_k(nbr[rows], fresh) > 0.99
    else:
        np.testing.assert_array_equal(nbr[rows], fresh)
    if kind == "flat":  # and for the exact index: equal to brute force over the merged vectors
        ref, _ = reference_neighbours(uv, rows, 8)
        assert (nbr[rows] == ref).mean() > 0.999
    assert snap.manifest["last_full_as_of"] == "20260101T0100Z"


@pytest.mark.parametrize("research_with", ["index", "local"])
def test_incremental_repairs_untouched_lists(settings, planted, research_with):
    s = _settings(settings, index="flat", min_recall=0.0, research_with=research_with)
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    build_graph(s.graph, s.redis, s.layout(), "m1", T1)
    _touch(planted, layout, T2, n=300)
    build_graph(s.graph, s.redis, s.layout(), "m1", T2)
    snap = GraphSnapshot(layout.graph("m1", utc(T2)))
    nbr, scores = snap.neighbours()
    uv = snap.vectors
    # every stored score is the true similarity under the new vectors, lists sorted best first
    r, c = np.nonzero(nbr != PAD)
    true = np.einsum("nd,nd->n", uv.vectors[r], uv.vectors[uv.positions(nbr[r, c])])
    np.testing.assert_allclose(scores[r, c], true, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # the repair beats keeping the untouched lists as they were (recall on the untouched users)
    from store.graph.incremental import carry_over
    from store.graph.knn import exact_neighbours, recall_at_k

    prev = latest_snapshot(layout, "m1", before=utc(T2))
    kept, _ = carry_over(prev.vectors.ids, *prev.neighbours(), uv)
    touched = latest_vectors(layout, "m1", T2, after=utc(T1)).ids
    untouched = uv.positions(np.setdiff1d(prev.vectors.ids, touched))
    exact, _ = exact_neighbours(uv, untouched, 8)
    repaired, stale = recall_at_k(nbr[untouched], exact), recall_at_k(kept[untouched], exact)
    floor = 0.99 if research_with == "index" else 0.97  # local: 2-hop candidates only
    assert repaired > stale + 0.05 and repaired >= floor, (repaired, stale)
    # the samples' exact lists came from the previous build, updated by the hour's users alone, and the
    # recall the manifest reports is what brute force gives on the same sample
    m = snap.manifest
    assert m["exact_carried"] > m["exact_searched"] and m["exact_s"] >= 0
    sample_rows, sample_top = snap.exact_sample().checks(uv)[1]
    np.testing.assert_array_equal(sample_top, exact_neighbours(uv, sample_rows, 8)[0])
    assert m["recall_at_k"] == pytest.approx(recall_at_k(nbr[sample_rows], sample_top), abs=1e-5)


def test_local_neighbours_rank_the_two_hop_neighbourhood_exactly():
    """The local re-search against a plain-Python reference on random lists (PAD entries included)."""
    from store.graph.incremental import local_neighbours
    from store.graph.vectors import UserVectors

    rng = np.random.default_rng(5)
    n, k = 300, 6
    uv = UserVectors.from_arrays(rng.permutation(10 * n)[:n] + 7, rng.standard_normal((n, 8)))
    nbr = uv.ids[rng.integers(0, n, (n, k))]
    nbr[rng.random((n, k)) < 0.1] = PAD
    rows = rng.choice(n, 50, replace=False)
    ids, scores, nxt = local_neighbours(uv, nbr, rows, k, chunk=7)  # several chunks
    for i, r in enumerate(rows):
        cand = {int(j) for j in nbr[r] if j != PAD}
        for j in list(cand):
            cand |= {int(x) for x in nbr[uv.positions(np.array([j]))[0]] if x != PAD}
        cand.discard(int(uv.ids[r]))
        ref = sorted(
            ((float(uv.vectors[r] @ uv.vectors[uv.positions(np.array([c]))[0]]), c) for c in cand),
            reverse=True,
        )
        np.testing.assert_allclose(scores[i][: min(k, len(ref))], [s for s, _ in ref[:k]], atol=1e-5)
        assert set(ids[i][ids[i] != PAD]) == {c for _, c in ref[:k]}
        assert (nxt[i] == -np.inf) if len(ref) <= k else np.isclose(nxt[i], ref[k][0], atol=1e-5)


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({"index": "hnsw"}, "HNSW cannot remove"),
        ({"min_recall": 1.01}, "below graph.min_recall"),
        ({"full_rebuild_every_hours": 1}, "scheduled"),
        ({"max_incremental_fraction": 0.01}, "exceed"),
    ],
)
def test_full_rebuild_triggers(settings, planted, overrides, reason):
    s = _settings(settings, **overrides)
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    build_graph(s.graph, s.redis, s.layout(), "m1", T1)
    _touch(planted, layout, T2)
    m = build_graph(s.graph, s.redis, s.layout(), "m1", T2)
    assert m["mode"] == "full" and reason in m["full_reason"]
    assert m["last_full_as_of"] == "20260101T0200Z"


def test_neighbour_lists_in_the_store_match_parquet(settings, planted, redis_memory):
    s = _settings(settings, index="flat", publish_redis=True)
    s = s.model_copy(update={"redis": redis_memory})
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    m = build_graph(s.graph, s.redis, s.layout(), "m1", T1)
    assert m["redis_lists"]["written"] == 3000
    from store.graph.redis_io import read_neighbour_lists

    snap = latest_snapshot(layout, "m1")
    nbr, scores = snap.neighbours()
    ask = np.concatenate([snap.vectors.ids[:50], [-5]])
    got = read_neighbour_lists(s.redis, "m1", ask)
    assert got[-1] is None
    for i in range(50):
        np.testing.assert_array_equal(got[i][0], nbr[i])
        np.testing.assert_allclose(got[i][1], scores[i])
    # incremental: only changed lists are written again
    _touch(planted, layout, T2)
    m2 = build_graph(s.graph, s.redis, s.layout(), "m1", T2)
    assert m2["mode"] == "incremental" and m2["redis_lists"]["written"] == m2["n_changed_lists"] < 3020


def test_chunked_vector_merge_is_bit_identical():
    """`from_arrays` / `merged` build the result block by block: the same bits as one whole-matrix pass."""
    from store.graph.vectors import UserVectors

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 500, 800)  # duplicates: the last row of an id wins
    x = rng.standard_normal((800, 8)) * 3  # float64 in, float32 out
    got = UserVectors.from_arrays(ids, x, chunk=7)
    order = np.argsort(ids, kind="stable")
    last = np.r_[ids[order][1:] != ids[order][:-1], True]
    np.testing.assert_array_equal(got.ids, ids[order][last])
    assert got.vectors.dtype == np.float32
    np.testing.assert_array_equal(got.vectors, normalise(x.astype(np.float32)[order[last]]))
    newer = UserVectors.from_arrays(rng.integers(400, 700, 100), rng.standard_normal((100, 8)), chunk=3)
    merged = got.merged(newer, chunk=5)
    whole = UserVectors.from_arrays(
        np.concatenate([got.ids, newer.ids]), np.concatenate([got.vectors, newer.vectors]), chunk=10**9
    )
    np.testing.assert_array_equal(merged.ids, whole.ids)
    np.testing.assert_array_equal(merged.vectors, whole.vectors)
    f16 = rng.standard_normal((50, 8)).astype(np.float16)  # the snapshots' dtype, converted per block
    np.testing.assert_array_equal(
        UserVectors.from_arrays(np.arange(50), f16, chunk=4).vectors, normalise(f16.astype(np.float32))
    )


# B = 0: rows searched again (or, research_dropped False, the repair pass does the work); B = 10 (the
# default): spare entries thinned, the reverse search's candidates merged
@pytest.mark.parametrize("research_dropped, spare", [(True, 0), (False, 0), (True, 10)])
def test_chunk_rows_bounds_memory_not_the_graph(settings, planted, tmp_path, research_dropped, spare):
    """graph.chunk_rows only sizes the blocks of the row-wise passes: a full then an incremental build
    in blocks of 7 rows (merge, re-scoring, change detection, Parquet row groups written and read back)
    publishes exactly the graph of one block."""
    built = {}
    for chunk in (7, 1_000_000):
        s = _settings(
            settings,
            index="ivf",
            min_recall=0.0,
            chunk_rows=chunk,
            research_dropped=research_dropped,
            spare_neighbours=spare,
            reverse_search=spare > 0,
        )
        s = s.model_copy(update={"data": s.data.model_copy(update={"root": tmp_path / f"chunk{chunk}"})})
        layout = s.layout()
        write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
        build_graph(s.graph, s.redis, layout, "m1", T1)
        _touch(planted, layout, T2, n=300)
        m = build_graph(s.graph, s.redis, layout, "m1", T2)
        did = (
            m["n_thinned"] and m["reverse_found"]
            if spare
            else m["n_researched"]
            if research_dropped
            else m["n_repaired"]
        )
        assert m["mode"] == "incremental" and did > 0, m
        rows = pq.ParquetFile(layout.graph("m1", utc(T2)) / "neighbours.parquet").metadata.num_row_groups
        assert rows == (-(-3020 // chunk) if chunk == 7 else 1)
        snaps = [GraphSnapshot(layout.graph("m1", utc(t))) for t in (T1, T2)]
        built[chunk] = (m, [(x.vectors, *x.neighbours(), x.next_scores(), x.changed_ids()) for x in snaps])
    (m_small, small), (m_one, one) = built[7], built[1_000_000]
    for key in (
        "recall_at_k",
        "n_touched",
        "n_researched",
        "n_thinned",
        "n_repaired",
        "n_changed_lists",
        "search_knob",
    ):
        assert m_small[key] == m_one[key], key
    for a, b in zip(small, one):
        np.testing.assert_array_equal(a[0].ids, b[0].ids)
        np.testing.assert_array_equal(a[0].vectors, b[0].vectors)
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(x, y)
