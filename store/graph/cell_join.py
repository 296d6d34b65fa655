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
and quantised codes re-ranked from 2 x k candidates). `ListJoin.search` answers a top-k search the
same way (the k-th best of each query's nearest list is the floor of what it keeps).

`ListJoin.search_both_ways` adds the reverse direction to a top-k search: each product is also
compared with its *targets'* bars, so the hour's touched users searching the full index find, in the
same scan, the lists they now belong in (``graph.reverse_search_by: forward_scan``, the default).

Measured (BENCHMARKS.md "Reverse search"): with one thread, 50k queries against 300k targets (1,024
lists, nprobe 24) took 1.7 s against faiss's 5.5 s. With two join threads each on one BLAS thread, on
the 2-core 1M hour: a top-k search 7.8 s against faiss's 7.6 s, the reverse search of the touched
users' index 7.1 s against 17.7 s, the search both ways 7.3 s against 7.6 + 17.7 s; at 10M / 1M the
search both ways took 211 s against faiss's 305 s forward and 701 s reverse.

A flat spec (few targets) is the one-list case: every query is scored against every target.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from store.graph.index import IVF_KINDS, IndexSpec, on_device, searcher
from store.graph.vectors import UserVectors

PROBE_BLOCK = 1 << 21  # (row, list probed) pairs grouped at a time: ~32 B each of scratch (64 MB)
SCORE_BLOCK = 1 << 22  # scores of one matrix product at most (16 MB): a flat spec's one list is all T
SEARCH_BLOCK = 32_768  # `ListJoin.search` queries per block: ~5 KB of kept pairs and their sort each
BAR_MARGIN = 1e-5  # `ListJoin.search`: products of different shapes may round the same score apart


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


class ListJoin:
    """The targets of an index arranged by inverted list (one list of every target for a flat spec),
    scored against many queries at once, list by list.

    ``copy``: hold a list-ordered float32 copy of the targets' vectors (T x D: the reverse search's few
    touched users), else gather each list's vectors when it is scored (the full index's N users).
    ``workers`` threads take the query blocks (0: one per CPU faiss uses; numpy releases the GIL in the
    products, the comparisons and the gathers); any count gives the same result in the same order.
    """

    def __init__(
        self, index: Any, spec: IndexSpec, targets: UserVectors, copy: bool = True, workers: int = 0
    ):

        self.index, self.spec, self.targets = index, spec, targets
        if spec.kind in IVF_KINDS:
            self.offsets, list_ids = ivf_lists(index)
            self.members = targets.positions(list_ids)  # (n,) target rows, list by list
        else:  # one list holding every target
            self.offsets, self.members = np.array([0, len(targets)]), np.arange(len(targets))
        self.cells = np.flatnonzero(np.diff(self.offsets))  # the non-empty lists
        self.member_ids = targets.ids[self.members]
        # a pair names its target by slot (its place in ``members``): 4 bytes, not an 8-byte id
        self.slot_dtype = np.int32 if len(self.members) < 2**31 else np.int64
        self.copied = targets.vectors[self.members] if copy else None  # (n, D) list by list
        self.workers = workers or join_workers()
        self.batch = SEARCH_BLOCK * self.workers  # queries per `search` call: a block for every worker
        self._cell_of: np.ndarray | None = None  # (n_targets,) the list of each target row, when asked

    def list_vectors(self, cell: int | np.integer) -> np.ndarray:
        a, b = self.offsets[cell], self.offsets[cell + 1]
        if self.copied is not None:
            return self.copied[a:b]
        return self.targets.vectors[self.members[a:b]]

    def probes(self, q: np.ndarray) -> np.ndarray:
        if self.spec.kind in IVF_KINDS:
            return probes(self.index, self.spec, q)
        return np.zeros((len(q), 1), np.int64)

    def _blocks(self, n: int, block_rows: int) -> list[slice]:
        block_rows = max(1, min(block_rows, PROBE_BLOCK // max(1, self.spec.nprobe)))
        return [slice(lo, lo + block_rows) for lo in range(0, n, block_rows)]

    def _map(self, fn, blocks: list) -> list:
        """``fn`` of each block, by ``workers`` threads when there are several: each thread's products
        then run on one BLAS thread (BLAS's own threads on top of ours oversubscribe the cores: the 1M
        hour's forward scan took 11.6 s that way, 7.5 s on one BLAS thread per worker). One worker
        leaves BLAS its threads, and a BLAS that splits a product may round a score's last bit apart."""
        if self.workers > 1 and len(blocks) > 1:
            with (
                threadpool_limits(limits=1, user_api="blas"),
                ThreadPoolExecutor(self.workers, thread_name_prefix="cell-join") as pool,
            ):
                return list(pool.map(fn, blocks))
        return [fn(b) for b in blocks]

    def _group(self, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, starts, ends): ``lists[order]`` grouped by list, list ``self.cells[c]``'s entries at
        ``order[starts[c]:ends[c]]`` (entries of -1, no list, are left out)."""
        order = np.argsort(lists, kind="stable")
        by_list = lists[order]
        starts = np.searchsorted(by_list, self.cells, "left")
        return order, starts, np.searchsorted(by_list, self.cells, "right")

    def _join(
        self, q: np.ndarray, probed: np.ndarray, bars: np.ndarray, target_bars: np.ndarray | None = None
    ):
        """(query rows of ``q``, target slots, scores): every target above its query's bar in the lists
        each query probes (``probed`` (b, P), -1 = none); a slot is the target's place in the
        list-ordered ``members`` (``member_ids[slot]`` its id). With ``target_bars`` ((n_targets,) by
        target row) also the reverse pairs of the same products, (target rows, query rows, scores):
        every scanned pair above its *target's* bar; else those three are empty."""
        order, starts, ends = self._group(probed.ravel())  # (b * P,) entries, grouped by list
        asking = (order // probed.shape[1]).astype(np.int32)  # the query row of each entry (a block's)
        fwd, rev = _Pairs(), _Pairs()
        for cell, i, j in zip(self.cells, starts, ends, strict=True):
            if i == j:
                continue
            a = self.offsets[cell]
            v = self.list_vectors(cell)  # (t, D)
            t_bars = None if target_bars is None else target_bars[self.members[a : a + len(v)]]  # (t,)
            step = max(1, SCORE_BLOCK // len(v))  # rows per product: (step, t) scores at most
            for lo in range(i, j, step):
                who = asking[lo : min(j, lo + step)]
                q_bars = bars[who]  # (w,)
                s = q[who] @ v.T  # (w, t)
                hit = s > q_bars[:, None]
                if t_bars is not None:
                    hit |= s > t_bars[None, :]
                flat = np.flatnonzero(hit)  # far cheaper than a 2-D nonzero
                hit_q, hit_t = np.divmod(flat, len(v))
                score = s.ravel()[flat]
                if t_bars is None:
                    fwd.add(who[hit_q], (a + hit_t).astype(self.slot_dtype), score)
                    continue
                up, back = score > q_bars[hit_q], score > t_bars[hit_t]
                fwd.add(who[hit_q[up]], (a + hit_t[up]).astype(self.slot_dtype), score[up])
                rev.add(self.members[a + hit_t[back]], who[hit_q[back]], score[back])
        return fwd.arrays() + rev.arrays()

    def above_bar(
        self, vectors: np.ndarray, rows: np.ndarray, bars: np.ndarray, block_rows: int = 65_536
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (row, target) with ``vectors[row] . target > bars[row]``, for each row in ``rows``,
        among the targets in the lists an IVF search of that row's vector probes. Rows go ``block_rows``
        at a time, fewer when ``nprobe`` is large (`PROBE_BLOCK`): the scratch is bounded, not the result.

        Returns (row positions, target ids, scores), flat, in no particular order.
        """

        def block(sl: slice):
            r = rows[sl]
            q = vectors[r]  # (b, D)
            hit_q, slots, scores = self._join(q, self.probes(q), bars[r])[:3]
            return r[hit_q], self.member_ids[slots], scores

        return concat_pairs(self._map(block, self._blocks(len(rows), block_rows)))

    def search(self, x: np.ndarray, k: int, block_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n, k), ids (n, k)) best first, as a faiss index's ``search``: each query's k best
        targets in the lists its IVF search probes, by exact float scores (-inf / -1 where fewer).

        Two passes per block: the k-th best score in each query's nearest list is a lower bound of its
        k-th best overall (those k are candidates), so the join over every probed list keeps only what
        beats it (less a rounding margin), and the k best of what it kept are the answer.
        """
        return self._search(x, k, block_rows, None)[:2]

    def search_both_ways(
        self, x: np.ndarray, k: int, target_bars: np.ndarray, block_rows: int = 0
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`search`, and from the same products the reverse pairs: every scanned (target, query) whose
        score beats the *target's* bar (``target_bars`` (n_targets,) by target row; +inf: never). The
        hour's touched users searching the full index find, in one scan, their own k best and the
        lists they now belong in (what `store.graph.incremental.reverse_search` finds from the lists'
        side). Returns (scores, ids, (target rows, query positions in ``x``, scores) flat)."""
        return self._search(x, k, block_rows, target_bars)

    def _search(self, x: np.ndarray, k: int, block_rows: int, target_bars: np.ndarray | None):
        n = len(x)
        out_s = np.full((n, k), -np.inf, np.float32)
        out_i = np.full((n, k), -1, np.int64)

        def block(sl: slice):
            q = x[sl]  # (b, D)
            probed = self.probes(q)  # (b, P)
            floor = self._kth_in_nearest(q, probed[:, 0], k) - BAR_MARGIN  # (b,)
            # ~100-300 pairs per query (k = 30, nprobe 16-48): the block's largest scratch
            hit_q, slots, scores, *rev = self._join(q, probed, floor, target_bars)
            # by query, best first: one float64 key (query x 4 + 2 - score: scores lie in [-1, 1], and
            # 2^22 queries x 4 leave ~2^-28 of resolution for the score), far cheaper than a lexsort;
            # only the kept pairs are gathered (~k per query), never the whole block's in sorted order
            order = np.argsort(hit_q * 4.0 + (2.0 - scores), kind="stable")
            by_query = hit_q[order]
            rank = np.arange(len(order)) - np.searchsorted(by_query, np.arange(len(q)))[by_query]
            keep = rank < k
            top, rank = order[keep], rank[keep]
            out_s[sl][hit_q[top], rank] = scores[top]
            out_i[sl][hit_q[top], rank] = self.member_ids[slots[top]]
            return rev[0], rev[1] + sl.start, rev[2]  # query rows of the block -> positions in x

        reverse = concat_pairs(self._map(block, self._blocks(n, block_rows or SEARCH_BLOCK)))
        return out_s, out_i, reverse

    def in_list_order(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (target rows) ordered by the inverted list holding each: the queries of one list go
        into the same block and probe the same nearest list. List ids are not ordered in space, so a
        block still probes most lists: 44.6 s against 46.4 s in random order (200k users of the 10M
        world searched both ways). Rows not in any list go last."""
        if self._cell_of is None:
            cell_of = np.full(len(self.targets), np.iinfo(np.int64).max, np.int64)
            cell_of[self.members] = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))
            self._cell_of = cell_of
        return rows[np.argsort(self._cell_of[rows], kind="stable")]

    def _kth_in_nearest(self, q: np.ndarray, nearest: np.ndarray, k: int) -> np.ndarray:
        """(b,) each query's k-th best score within its nearest list (-inf when it holds fewer)."""
        kth = np.full(len(q), -np.inf, np.float32)
        order, starts, ends = self._group(nearest)
        for cell, i, j in zip(self.cells, starts, ends, strict=True):
            v = self.list_vectors(cell)
            if i == j or len(v) < k:
                continue
            step = max(1, SCORE_BLOCK // len(v))
            for lo in range(i, j, step):
                who = order[lo : min(j, lo + step)]
                s = q[who] @ v.T  # (w, t)
                kth[who] = np.partition(s, len(v) - k, axis=1)[:, len(v) - k]
        return kth


class _Pairs:
    """Pairs found block by block: (first, second, score) arrays appended, concatenated once."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, first: np.ndarray, second: np.ndarray, scores: np.ndarray) -> None:
        self.parts.append((first, second, scores))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return concat_pairs(self.parts)


def concat_pairs(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs found in parts, ``[(first, second, scores), ...]``, as three flat arrays (empty if none)."""
    rows, ids, scores = zip(*parts, strict=True) if parts else ((), (), ())
    return (
        np.concatenate([np.zeros(0, np.int64), *rows]),
        np.concatenate([np.zeros(0, np.int64), *ids]),
        np.concatenate([np.zeros(0, np.float32), *scores]),
    )


def join_workers() -> int:
    """Threads a `ListJoin` uses by default: as many as faiss's CPU searches."""
    import faiss

    return faiss.omp_get_max_threads()


def bulk_scan(spec: IndexSpec, scan_with: str) -> str:
    """How a build's bulk searches of an index of ``spec`` scan under ``graph.scan_with``: the join
    only for IVF kinds (a flat index's own search is already one matrix product; HNSW has no lists)."""
    return "join" if spec.kind in IVF_KINDS and scan_with == "join" else "index"


def bulk_searcher(index: Any, spec: IndexSpec, uv: UserVectors, scan_with: str, device: str):
    """What a build's bulk searches call ``.search`` on: a `ListJoin` of the index's lists (IVF kinds
    under the join: on the CPU), else the index on ``device`` (re-ranked for quantised codes)."""
    if bulk_scan(spec, scan_with) == "join":
        return ListJoin(index, spec, uv, copy=False)
    return searcher(on_device(index, device), spec, uv)
