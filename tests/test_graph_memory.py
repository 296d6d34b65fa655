"""The graph build's memory: the streamed read of the embedding snapshots equals the whole-table merge,
and graph.memory_budget_mb (store.graph.memory) either stops a build before it starts or leaves its
result unchanged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from core.embeddings import latest_embeddings, vector_array
from core.forget import ForgetList
from core.layout import utc
from store.graph.build import build_graph
from store.graph.cell_join import SEARCH_BLOCK, join_workers
from store.graph.index import IndexSpec
from store.graph.memory import (
    JOIN_BYTES_PER_PROBE,
    MB,
    MemoryBudgetError,
    join_scratch_bytes,
    per_block_row,
    per_user,
    plan,
)
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings
from store.graph.snapshot import GraphSnapshot
from store.graph.vectors import UserVectors, latest_vectors
from tests.fixtures.graph import graph_settings as _settings

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


def test_the_estimate_itemised():
    """Bytes per user at D = 64, k = 20: the figures docs/graph.md "Memory" quotes."""
    sq8 = IndexSpec("ivf_sq8", nlist=1000, k_factor=2)
    full = per_user(64, 20, sq8, "full")
    assert full == {
        "vectors": 256,
        "ids + id->row table": 12,
        "index": 72,
        "neighbour lists": 256,
        "row numbers": 16,
    }
    inc = per_user(64, 20, sq8, "incremental")
    assert sum(inc.values()) == 256 + 12 + 72 + 16 + max(256 + 244 + 33, 2 * 244 + 8)
    assert per_block_row(64, 20) == 992
    assert sum(per_user(64, 20, IndexSpec("ivf", nlist=10), "full").values()) == sum(full.values()) + 192
    est = plan(10_000_000, 64, 20, sq8, "incremental", 65_536)
    assert est.block_rows == 65_536 and 8_600 < est.peak_bytes / MB < 8_700  # ~8.5 GiB at 10M
    # graph.reverse_search adds the index of the hour's touched users: 1M x (4 x 64 + 4 x 64 + 56) B,
    # and under graph.scan_with: join the cell join's copy of them: 1M x (4 x 64 + 8) B more
    rev = plan(10_000_000, 64, 20, sq8, "incremental", 65_536, reverse_touched=1_000_000)
    assert rev.peak_bytes - est.peak_bytes == 1_000_000 * 568 and rev.as_dict()["touched_index_mb"] == 541.7
    joined = plan(
        10_000_000, 64, 20, sq8, "incremental", 65_536, reverse_touched=1_000_000, reverse_join=True
    )
    assert joined.peak_bytes - rev.peak_bytes == 1_000_000 * 264
    assert "touched_index_mb" not in est.as_dict()
    # graph.reverse_search_by: forward_scan: no index of the touched; a cell join over all 10M users
    # (32 B each) and its search scratch, by workers, nprobe and the block (2 x 32k x 48 x 460 B)
    sq8_48 = replace(sq8, nprobe=48)
    scan = plan(10_000_000, 64, 20, sq8_48, "incremental", 65_536, join_workers=2, join_queries=1_000_000)
    assert scan.peak_bytes - est.peak_bytes == 10_000_000 * 32 + 2 * SEARCH_BLOCK * 48 * JOIN_BYTES_PER_PROBE
    assert 1_375 < join_scratch_bytes(sq8_48, 2, 1_000_000) / MB < 1_385
    assert "touched_index_mb" not in scan.as_dict() and 1_375 < scan.as_dict()["join_scratch_mb"] < 1_385
    # fewer queries than two blocks: the blocks are smaller
    assert join_scratch_bytes(sq8_48, 2, 1_000) == 1_000 * 48 * JOIN_BYTES_PER_PROBE
    assert join_scratch_bytes(IndexSpec("flat"), 2, 10) == join_scratch_bytes(sq8, 0, 10) == 0


def test_the_budget_sizes_the_blocks_or_stops_the_plan():
    spec = IndexSpec("ivf", nlist=100)
    unbounded = plan(1_000_000, 64, 20, spec, "full", 65_536)
    roomy = plan(1_000_000, 64, 20, spec, "full", 65_536, budget_mb=math.ceil(unbounded.peak_bytes / MB) + 1)
    assert roomy.block_rows == 65_536  # enough room: graph.chunk_rows as set
    tight_mb = math.ceil((unbounded.resident_bytes + 5000 * per_block_row(64, 20)) / MB)
    tight = plan(1_000_000, 64, 20, spec, "full", 65_536, budget_mb=tight_mb)
    assert tight.block_rows % 1024 == 0 and 5000 <= tight.block_rows < 7 * 1024  # shrunk to fit
    assert tight.peak_bytes <= tight_mb * MB
    with pytest.raises(MemoryBudgetError) as err:
        plan(1_000_000, 64, 20, spec, "full", 65_536, budget_mb=int(unbounded.resident_bytes / MB) - 1)
    text = str(err.value)
    assert "\n" not in text and "graph.memory_budget_mb=" in text and "1,000,000 users" in text
    assert isinstance(err.value, ValueError)  # soe's CLI prints a ValueError as one line


def test_a_budget_below_the_estimate_stops_the_build_and_publishes_nothing(settings, planted):
    s = _settings(settings, index="ivf", memory_budget_mb=100)  # the fixed part alone is 128 MB
    layout = s.layout()
    write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
    with pytest.raises(MemoryBudgetError, match=r"graph.memory_budget_mb=100 \(full, 3,000 users"):
        build_graph(s.graph, s.redis, layout, "m1", T1)
    assert not layout.model_graphs("m1").exists() or not any(layout.model_graphs("m1").iterdir())
    # an hour on a graph built without a cap: stopped too, the previous graph stays the newest
    ok = _settings(settings, index="ivf")
    build_graph(ok.graph, ok.redis, layout, "m1", T1)
    write_embeddings(layout, "m1", T2, planted.user_ids[:50], planted.vectors[:50] * 0.5)
    with pytest.raises(MemoryBudgetError, match=r"\(incremental, 3,050 users"):
        build_graph(s.graph, s.redis, layout, "m1", T2)
    assert [p.name for p in layout.model_graphs("m1").iterdir()] == ["as_of=20260101T0100Z"]
    # the command line: one line on stderr, exit 2, no traceback
    from soe.cli.app import app

    env = {"SOE_DATA__ROOT": str(s.data.root), "SOE_GRAPH__MEMORY_BUDGET_MB": "100"}
    r = CliRunner().invoke(app, ["graph", "--model", "m1", "--as-of", T2, "--no-redis"], env=env)
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: graph build needs ~"), r.output


def test_a_budget_that_fits_changes_nothing(settings, planted, tmp_path):
    """A full then an incremental build under a budget that shrinks the blocks below N (1,024 rows) publish
    exactly the graph of an uncapped build (and the manifest says which blocks ran)."""
    spare = settings.graph.spare_neighbours  # the default lists and reverse search (300 users touched)

    def budget_for(nprobe: int) -> int:  # the hour's plan: lists, and the cell join of its 300 queries
        ivf = IndexSpec("ivf", nlist=219, nprobe=nprobe)
        probe = plan(
            3_100, 64, 8, ivf, "incremental", 65_536, 0, spare, join_workers=join_workers(), join_queries=300
        )
        return math.ceil((probe.resident_bytes + 1500 * per_block_row(64, 8 + spare)) / MB)

    built, full_knob = {}, {}
    for run in ("uncapped", "capped"):
        # the capped run's budget follows the full build's calibrated nprobe (the join's scratch does)
        cap = 0 if run == "uncapped" else budget_for(full_knob[0])
        s = _settings(settings, index="ivf", min_recall=0.0, memory_budget_mb=cap)
        s = s.model_copy(update={"data": s.data.model_copy(update={"root": tmp_path / f"cap{cap}"})})
        layout = s.layout()
        write_embeddings(layout, "m1", T1, planted.user_ids, planted.vectors)
        m1 = build_graph(s.graph, s.redis, layout, "m1", T1)
        full_knob[cap] = m1["search_knob"]
        write_embeddings(layout, "m1", T2, planted.user_ids[:300], planted.vectors[300:600])
        m2 = build_graph(s.graph, s.redis, layout, "m1", T2)
        assert m2["mode"] == "incremental"
        blocks = [m["memory"]["block_rows"] for m in (m1, m2)]
        assert blocks == [65_536] * 2 if cap == 0 else (blocks[1] == 1024 and blocks[0] < 65_536)
        assert m2["memory"]["budget_mb"] == cap and m2["memory"]["peak_mb"] <= (cap or 1e9)
        snaps = [GraphSnapshot(layout.graph("m1", utc(t))) for t in (T1, T2)]
        built[cap] = (m2, [(x.vectors, *x.neighbours(), x.next_scores(), x.changed_ids()) for x in snaps])
    (m_cap, capped), (m_free, free) = built[cap], built[0]
    for key in ("recall_at_k", "n_touched", "n_researched", "n_repaired", "n_changed_lists", "search_knob"):
        assert m_cap[key] == m_free[key], key
    for a, b in zip(capped, free):
        np.testing.assert_array_equal(a[0].ids, b[0].ids)
        assert a[0].vectors.tobytes() == b[0].vectors.tobytes()
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_the_estimate_is_within_a_sane_factor_of_the_measured_peak(tmp_path):
    """A full build of 100k planted users in a fresh process (IVF, k = 20; the vectors written here
    first): its peak RSS above the start (VmHWM) against the build's own estimate. BENCHMARKS.md
    "Graph build memory" has the same comparison on encoder vectors (bench.graph_memory --quick)."""
    from core.layout import Layout

    p = planted_vectors(PlantedConfig(n_users=100_000, n_clusters=100, seed=1))
    write_embeddings(Layout(tmp_path), "m1", T1, p.user_ids, p.vectors)
    script = textwrap.dedent(
        f"""
        import json, os
        os.environ["OMP_NUM_THREADS"] = "1"
        import faiss
        faiss.omp_set_num_threads(1)
        from soe.config import load_settings
        from store.graph.build import build_graph
        s = load_settings(environ={{"SOE_DATA__ROOT": "{tmp_path}", "SOE_GRAPH__PUBLISH_REDIS": "false"}})
        def status(key):
            return int(next(x for x in open("/proc/self/status") if x.startswith(key)).split()[1]) / 1024
        open("/proc/self/clear_refs", "w").write("5")
        start = status("VmRSS:")
        m = build_graph(s.graph, s.redis, s.layout(), "m1", "{T1}")
        print(json.dumps({{"peak": status("VmHWM:") - start, "estimate": m["memory"]["peak_mb"]}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.5 <= got["estimate"] / got["peak"] <= 2.0, got
