"""Every (query, target) pair above the query's bar, found by joining IVF cells with matrix products.

The hourly reverse search (`store.graph.incremental.reverse_search`) asks, for every list that is not
searched again (~0.9 N queries), which of the hour's T touched users now score above the list's bar.
A faiss IVF search answers it one query at a time: each query scans its ``nprobe`` inverted lists
vector by vector and keeps a top-m heap. The same question has a batched form: group the queries by
the lists they probe, and score each list's queries against that list's targets in one matrix product

    S = Q_cell @ T_cell^T        (q, D) x (D, t) -> (q, t),   keep S > bar(query)

which runs at BLAS speed and needs no heap. The lists probed are exactly the IVF search's (the index's
coarse quantiser, its calibrated ``nprobe``), and scores are exact float inner products, so the pairs
found are a superset of what the index search keeps above the bar (it keeps only its top m per query,
and quantised codes re-ranked from 2 x k candidates). Measured with one thread on 50k queries against
300k targets (1,024 lists, nprobe 24): 1.7 s against faiss's 5.5 s (BENCHMARKS.md "Reverse search").

A flat spec (few targets) is the one-list case: every query is scored against every target.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from store.graph.index import IVF_KINDS, IndexSpec
from store.graph.vectors import UserVectors

PROBE_BLOCK = 1 << 21  # (row, list probed) pairs grouped at a time: ~32 B each of scratch (64 MB)
SCORE_BLOCK = 1 << 22  # scores of one matrix product at most (16 MB): a flat spec's one list is all T


def ivf_lists(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The inverted lists of a CPU IVF index: (offsets (nlist + 1,), ids (n,)), list l holding
    ``ids[offsets[l]:offsets[l + 1]]``: exactly where the index put each vector."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists: Any = ivf.invlists  # ArrayInvertedLists at run time
    sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    ids = np.empty(int(offsets[-1]), np.int64)
    for i in np.flatnonzero(sizes):
        ids[offsets[i] : offsets[i + 1]] = faiss.rev_swig_ptr(lists.get_ids(int(i)), int(sizes[i]))
    return offsets, ids


def probes(index: Any, spec: IndexSpec, queries: np.ndarray) -> np.ndarray:
    """(q, nprobe) the inverted lists an IVF search of ``queries`` scans (-1 where fewer exist)."""
    import faiss

    _, lists = faiss.extract_index_ivf(index).quantizer.search(queries, spec.nprobe)
    return lists


def above_bar(
    vectors: np.ndarray,
    rows: np.ndarray,
    bars: np.ndarray,
    targets: UserVectors,
    index: Any,
    spec: IndexSpec,
    block_rows: int = 65_536,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (row, target) with ``vectors[row] . target > bars[row]``, for each row in ``rows``, among the
    targets in the lists an IVF search of that row's vector probes (every target for a flat spec).
    ``index``: the targets' CPU index (holding ``targets``: its ids are theirs). Rows go ``block_rows``
    at a time, fewer when ``nprobe`` is large (`PROBE_BLOCK`): the scratch is bounded, not the result.
    ``workers`` threads take the blocks (0: one per CPU faiss uses; numpy releases the GIL in the
    products, the comparisons and the gathers); any count gives the same pairs in the same order.

    Returns (row positions, target ids, scores), flat, in no particular order.
    """
    import faiss

    if spec.kind in IVF_KINDS:
        offsets, list_ids = ivf_lists(index)
        members = targets.positions(list_ids)  # (n,) target rows, list by list
    else:  # one list holding every target
        offsets, members = np.array([0, len(targets)]), np.arange(len(targets))
    cells = np.flatnonzero(np.diff(offsets))  # the non-empty lists
    cell_vectors = targets.vectors[members]  # (n, D) list by list
    member_ids = targets.ids[members]

    def join_block(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = vectors[r]  # (b, D)
        probed = probes(index, spec, q) if spec.kind in IVF_KINDS else np.zeros((len(q), 1), np.int64)
        flat = probed.ravel()  # (b * P,)
        order = np.argsort(flat, kind="stable")
        by_list = flat[order]
        asking = np.repeat(np.arange(len(q)), probed.shape[1])[order]  # block rows, grouped by list
        starts, ends = np.searchsorted(by_list, cells, "left"), np.searchsorted(by_list, cells, "right")
        out_r, out_t, out_s = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for cell, i, j in zip(cells, starts, ends, strict=True):
            a, b = offsets[cell], offsets[cell + 1]
            step = max(1, SCORE_BLOCK // (b - a))  # rows per product: (step, t) scores at most
            for lo in range(i, j, step):
                who = asking[lo : min(j, lo + step)]
                s = q[who] @ cell_vectors[a:b].T  # (w, t)
                hit_q, hit_t = np.nonzero(s > bars[r[who]][:, None])
                out_r.append(r[who[hit_q]])
                out_t.append(member_ids[a + hit_t])
                out_s.append(s[hit_q, hit_t])
        return np.concatenate(out_r), np.concatenate(out_t), np.concatenate(out_s)

    block_rows = max(1, min(block_rows, PROBE_BLOCK // max(1, spec.nprobe)))
    blocks = [rows[lo : lo + block_rows] for lo in range(0, len(rows), block_rows)]
    workers = workers or faiss.omp_get_max_threads()
    if workers > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="cell-join") as pool:
            parts = list(pool.map(join_block, blocks))
    else:
        parts = [join_block(r) for r in blocks]
    found_rows, found_ids, found_scores = zip(*parts, strict=True) if parts else ((), (), ())
    return (
        np.concatenate([np.zeros(0, np.int64), *found_rows]),
        np.concatenate([np.zeros(0, np.int64), *found_ids]),
        np.concatenate([np.zeros(0, np.float32), *found_scores]),
    )
