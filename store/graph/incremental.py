"""The hourly incremental update of a kNN graph, and why it is shaped this way.

Per refresh only the *active* users (a few % of all) get new vectors. A full rebuild re-searches all
N users; the incremental path touches only what changed:

1. `update_index`: remove the touched users' old vectors and add their new ones. IVF ``remove_ids``
   is one pass over every inverted list per *call*, so all touched ids go in one call with an
   ``IDSelectorBatch`` (O(N) id checks, milliseconds), never one call per user. The IVF centroids are
   kept: drift slowly unbalances the lists, which the scheduled full rebuild (retraining) resets.
   HNSW cannot remove vectors at all, so an HNSW graph is always rebuilt in full.
2. The touched users' neighbours are searched again (exactly what a full build would compute for them
   on the same index).
3. The other users' lists are kept, with two repairs. `rescore`: entries that point at a touched user
   get its new similarity. Every list stores its (k+1)-th score, the bar any user outside it had to
   beat; a row whose moved neighbour now falls below that bar may miss a better user, so it is
   searched again (``graph.research_dropped``), while a row whose moved neighbours stay above it is
   still exact. `repair_untouched`: each touched user is inserted into the lists of its new neighbours
   when it beats their current k-th score (inner product is symmetric), the evicted entry raising the
   row's bar, and re-scored rows are re-sorted. What can remain stale: a touched user that moved
   *closer* to v without v being among its own k nearest.

   **Spare neighbours** (``graph.spare_neighbours`` B > 0): lists keep k + B entries and the bar is the
   (k+B+1)-th score. `thin` drops the moved entries that fell below the bar instead of searching the
   row again; every entry left is still above the bar, so the row's top k stays exact while at least
   k entries remain, and only rows left with fewer are searched again (for k + B). On dense encoder
   neighbourhoods with 10 % of users moved by noise (1M) this took the re-searched lists from 793 k
   to 67, but on a real encoder hour the kept lists reached recall 0.920 only: the touched users'
   reverse insertion misses lists they moved into, which B = 0's re-searches repaired in passing
   (BENCHMARKS.md "spare neighbours"). Readers see the first k entries only.

   **Reverse search** (``graph.reverse_search``) closes that gap from the lists' side: every row not
   searched again queries an index of the touched users' new vectors only (`reverse_search`), and the
   touched users scoring above its bar join its candidates. A row's entries above the bar are exact
   (no unmoved outsider beat it) and every touched user above the bar is found (up to that small
   index's recall), so a row keeping at least k entries holds its exact top k, whichever way its
   neighbours moved. Cost: (N - searched) queries against T vectors instead of the B = 0 re-search
   of ~0.8 N rows against N.
   Every build measures recall@k of the stored lists on a random sample against exact search,
   and a drop below ``graph.min_recall`` triggers the full rebuild at once.
"""

from __future__ import annotations

import time

import numpy as np

from core.forget import ForgetList
from store.graph import cell_join
from store.graph.exact_sample import CALIBRATION_SALT, exact_check
from store.graph.index import build_index, choose_device, choose_spec, num_gpus, on_device, searcher
from store.graph.knn import PAD
from store.graph.settings import GraphSettings
from store.graph.tune import calibrate
from store.graph.vectors import CHUNK_ROWS, UserVectors


def update_index(index, old: UserVectors, new: UserVectors) -> None:
    """Replace the vectors of ``new``'s users in ``index`` (ids = user ids) in one remove + one add."""
    import faiss

    replaced = new.ids[old.positions(new.ids) >= 0]
    if len(replaced):
        removed = index.remove_ids(faiss.IDSelectorBatch(len(replaced), faiss.swig_ptr(replaced)))
        if removed != len(replaced):
            raise RuntimeError(
                f"index held {removed} of the {len(replaced)} replaced users: snapshot corrupt?"
            )
    index.add_with_ids(new.vectors, new.ids)


def drop_forgotten(
    forget: ForgetList | None,
    index,
    old: UserVectors,
    old_nbr: np.ndarray,
    old_scores: np.ndarray,
    old_next: np.ndarray,
) -> tuple[UserVectors, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The previous graph without the users of ``forget``: removed from ``index`` (in place), their rows
    dropped, their entries in other lists emptied. Returns (vectors, lists, scores, bars, ids of the
    users whose list named a forgotten user: to be searched again, number of users removed)."""
    holed = np.zeros(0, np.int64)
    if forget is None or not len(forget):
        return old, old_nbr, old_scores, old_next, holed, 0
    gone_rows, listed = forget.mask(old.ids), forget.mask(old_nbr)
    if not (gone_rows.any() or listed.any()):
        return old, old_nbr, old_scores, old_next, holed, 0
    import faiss

    gone = np.ascontiguousarray(old.ids[gone_rows])
    if len(gone):
        index.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone)))
    keep = ~gone_rows
    holed = old.ids[listed.any(axis=1) & keep]
    old_nbr = np.where(listed, PAD, old_nbr)[keep]
    old_scores = np.where(listed, -np.inf, old_scores)[keep].astype(np.float32)
    return (
        UserVectors(old.ids[keep], old.vectors[keep]),
        old_nbr,
        old_scores,
        old_next[keep],
        holed,
        len(gone),
    )


def mean_entries(nbr: np.ndarray, chunk: int = CHUNK_ROWS) -> float:
    """Entries per list (not PAD), block by block: k + B when the spares are full."""
    kept = sum(int((nbr[lo : lo + chunk] != PAD).sum()) for lo in range(0, len(nbr), chunk))
    return kept / max(len(nbr), 1)


def carry_over(
    old_ids: np.ndarray,
    old_nbr: np.ndarray,
    old_scores: np.ndarray,
    uv: UserVectors,
    old_next: np.ndarray | None = None,
    width: int | None = None,
):
    """Previous neighbour rows re-aligned to the merged user set (new users get empty rows).

    With ``old_next`` also returns the re-aligned bars (+inf for new users). ``width`` (default: the
    previous lists' width) is the entries kept per row: wider pads with empty entries (a snapshot of
    fewer spare neighbours), narrower cuts the tail, whose first entry then raises the bar."""
    width = old_nbr.shape[1] if width is None else width
    keep = min(width, old_nbr.shape[1])
    nbr = np.full((len(uv), width), PAD, dtype=np.int64)
    scores = np.full((len(uv), width), -np.inf, dtype=np.float32)
    rows = uv.positions(old_ids)
    nbr[rows, :keep], scores[rows, :keep] = old_nbr[:, :keep], old_scores[:, :keep]
    if old_next is None:
        return nbr, scores
    nxt = np.full(len(uv), np.inf, dtype=np.float32)
    nxt[rows] = old_next
    if keep < old_nbr.shape[1]:  # the first entry cut off is now an outsider: the bar is its score
        nxt[rows] = np.maximum(nxt[rows], old_scores[:, keep])
    return nbr, scores, nxt


def changed_lists(
    nbr: np.ndarray, old_rows: np.ndarray, old_nbr: np.ndarray, chunk: int = CHUNK_ROWS
) -> np.ndarray:
    """Rows of ``nbr`` whose ids differ from the previous lists (``old_nbr``, the rows ``old_rows`` of
    ``nbr``; other rows had no list, so any neighbour is a change), sorted. Block by block: the same
    rows as comparing with the whole `carry_over`, without building it."""
    differs = np.zeros(len(nbr), bool)
    for lo in range(0, len(nbr), chunk):
        differs[lo : lo + chunk] = np.any(nbr[lo : lo + chunk] != PAD, axis=1)
    for lo in range(0, len(old_rows), chunk):
        rows = old_rows[lo : lo + chunk]
        differs[rows] = np.any(nbr[rows] != old_nbr[lo : lo + chunk], axis=1)
    return np.flatnonzero(differs)


def moved_entries(
    uv: UserVectors, nbr: np.ndarray, is_fixed: np.ndarray, moved_ids: np.ndarray, chunk: int = CHUNK_ROWS
):
    """Yield ``(r, c, score)`` per block of ``chunk`` rows: the entries ``nbr[r, c]`` of rows not in
    ``is_fixed`` that name a user of ``moved_ids``, with their similarity under the current vectors.

    Block by block so that the scratch (the (rows, k) id test, two (entries, D) gathers) stays
    bounded by ``chunk`` whatever N is; the scores are exactly those of one unchunked pass."""
    moved_rows = uv.positions(moved_ids)
    moved_rows = moved_rows[moved_rows >= 0]
    for lo in range(0, len(nbr), chunk):
        hit = uv.marked(nbr[lo : lo + chunk], moved_rows) & ~is_fixed[lo : lo + chunk, None]
        r, c = np.nonzero(hit)
        r += lo
        score = np.einsum("nd,nd->n", uv.vectors[r], uv.vectors[uv.positions(nbr[r, c])])
        yield r, c, score


def rescore(
    uv: UserVectors,
    nbr: np.ndarray,
    scores: np.ndarray,
    fixed: np.ndarray,
    moved_ids: np.ndarray,
    next_scores: np.ndarray,
    chunk: int = CHUNK_ROWS,
) -> np.ndarray:
    """Re-score entries of rows not in ``fixed`` that point at a moved user; returns the rows that
    must be searched again: a moved neighbour fell below the row's (k+1)-th score, so a user outside
    the list may now belong in it. Rows whose moved neighbours stay above that bar remain exact.
    ``chunk``: rows per block of the pass (bounds its scratch memory, not its result)."""
    is_fixed = np.zeros(len(nbr), bool)
    is_fixed[fixed] = True
    dropped = [np.zeros(0, np.int64)]
    for r, c, new in moved_entries(uv, nbr, is_fixed, moved_ids, chunk):
        scores[r, c] = new
        dropped.append(r[new < next_scores[r]])
    return np.unique(np.concatenate(dropped))


def thin(
    uv: UserVectors,
    nbr: np.ndarray,
    scores: np.ndarray,
    fixed: np.ndarray,
    moved_ids: np.ndarray,
    next_scores: np.ndarray,
    k: int,
    chunk: int = CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """`rescore` for lists with spare entries (``graph.spare_neighbours``): entries of rows not in
    ``fixed`` that point at a moved user get its new similarity; those now below the row's bar are
    dropped (PAD, -inf: a user outside the list may beat them). Every entry left is still >= the bar,
    which no outsider beat, so a row keeping at least ``k`` entries still holds its exact top k.

    Returns (rows left with fewer than ``k`` entries: to be searched again, the other thinned rows: to
    be re-sorted). Lists are modified in place."""
    is_fixed = np.zeros(len(nbr), bool)
    is_fixed[fixed] = True
    dropped = [np.zeros(0, np.int64)]
    for r, c, new in moved_entries(uv, nbr, is_fixed, moved_ids, chunk):
        below = new < next_scores[r]
        scores[r, c] = np.where(below, np.float32(-np.inf), new)
        nbr[r[below], c[below]] = PAD
        dropped.append(r[below])
    thinned = np.unique(np.concatenate(dropped))
    short = np.zeros(len(thinned), bool)
    for lo in range(0, len(thinned), chunk):
        rows = thinned[lo : lo + chunk]
        short[lo : lo + chunk] = (nbr[rows] != PAD).sum(axis=1) < k
    return thinned[short], thinned[~short]


def reverse_search(
    uv: UserVectors,
    touched: np.ndarray,
    fixed: np.ndarray,
    next_scores: np.ndarray,
    width: int,
    cfg: GraphSettings,
    target_recall: float,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict]:
    """The touched users that now belong in the other users' lists, found from the lists' side.

    An index of the touched users' new vectors only (T of them, a few % of N: flat, IVF or IVF-SQ8 as
    `choose_spec` picks for T, calibrated on them to ``target_recall``) is searched by every user not in
    ``fixed`` for its ``width`` nearest touched users; those scoring above the row's bar
    (``next_scores``) are the row's candidates. The reverse of the touched users' own search: a user
    that moved *into* v's neighbourhood is found even when v is not among its own nearest (what the
    forward insertion misses). Each of the (N - fixed) queries scans T·nprobe/nlist vectors, not the
    N·nprobe/nlist of a search of the full index. ``graph.scan_with`` picks how: the index's own search
    (`index_above_bar`, top ``width`` per row) or the cell join (`cell_join.ListJoin.above_bar`, every
    pair above the bar in the same lists).

    Returns ((row positions, touched ids, scores) flat, for `repair_untouched`'s ``found``; stats).
    """
    t0 = time.perf_counter()
    tv = UserVectors(uv.ids[touched], uv.vectors[touched])  # (T, D): uv's ids are sorted, so are these
    spec = choose_spec(len(tv), cfg, tv.dim, device=choose_device(cfg.use_gpu, num_gpus(), "ivf"))
    index = build_index(tv, spec, cfg)
    check = exact_check(tv, cfg.calibration_sample, cfg.seed + CALIBRATION_SALT, cfg.k)
    # calibrated on the CPU index, as the main index is; then searched where it runs best
    spec, tried = calibrate(index, spec, tv, check, target_recall, cfg.max_nprobe)
    device = choose_device(cfg.use_gpu, num_gpus(), spec.kind)
    is_fixed = np.zeros(len(uv), bool)
    is_fixed[fixed] = True
    queries = np.flatnonzero(~is_fixed)
    method = cfg.scan_with  # graph.scan_with; under the join a flat T is one list
    if method == "join":  # the same lists probed, every pair above the bar, by matrix products
        join = cell_join.ListJoin(index, spec, tv, copy=True)
        found = join.above_bar(uv.vectors, queries, next_scores, cfg.chunk_rows)
    else:  # the index's top ``width`` per row, kept above the bar
        search = searcher(on_device(index, device), spec, tv)
        found = index_above_bar(
            search, uv.vectors, queries, next_scores, min(width, len(tv)), cfg.search_batch
        )
    stats = {
        "reverse_index": spec.params(),  # the touched users' index
        "reverse_method": method,
        "reverse_calibration": tried,
        "reverse_queries": len(queries),  # the lists that looked (every row not searched again)
        "reverse_found": len(found[0]),  # (list, touched user) pairs above the list's bar
        "reverse_search_s": round(time.perf_counter() - t0, 3),
    }
    return found, stats


def index_above_bar(
    search, vectors: np.ndarray, rows: np.ndarray, bars: np.ndarray, width: int, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference of `cell_join.ListJoin.above_bar`: each row's ``width`` best targets by ``search``
    (a faiss index or `Searcher`), kept where they score above the row's bar. Same return shape."""
    rows_out, ids_out, scores_out = (
        [np.zeros(0, np.int64)],
        [np.zeros(0, np.int64)],
        [np.zeros(0, np.float32)],
    )
    for lo in range(0, len(rows), batch):
        r = rows[lo : lo + batch]
        s, ids = search.search(vectors[r], width)  # (b, m) best first
        keep = (ids != PAD) & (s > bars[r][:, None])  # only above the bar can enter a list
        rows_out.append(np.broadcast_to(r[:, None], ids.shape)[keep])
        ids_out.append(ids[keep])
        scores_out.append(s[keep].astype(np.float32))
    return np.concatenate(rows_out), np.concatenate(ids_out), np.concatenate(scores_out)


def repair_untouched(
    uv: UserVectors,
    nbr: np.ndarray,
    scores: np.ndarray,
    touched: np.ndarray,
    next_scores: np.ndarray,
    fixed: np.ndarray | None = None,
    chunk: int = CHUNK_ROWS,
    resort: np.ndarray | None = None,
    found: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> int:
    """Re-score entries pointing at touched users and insert touched users where they now belong.

    ``nbr``/``scores`` (N, k) and ``next_scores`` (N,) are modified in place (an evicted entry raises
    its row's bar); rows in ``fixed`` (default ``touched``: already recomputed) are left alone.
    ``chunk``: rows per block of the re-scoring pass (bounds its scratch memory, not its result).
    ``resort``: further rows to merge (rows `thin` dropped entries from: sorted again, holes last).
    ``found``: further candidates (row positions, touched ids, scores), flat: what `reverse_search`
    found from the lists' side (the forward candidates: each touched user into its own new list's rows).
    A row that is not full takes a touched user only above its bar (when the bar is known), so every
    kept entry stays above it. Returns the number of rows changed.
    """
    n = len(nbr)
    fixed = touched if fixed is None else fixed
    is_fixed = np.zeros(n, bool)
    is_fixed[fixed] = True
    touched_ids = uv.ids[touched]
    # 1. re-score: entries of the other rows whose neighbour got a new vector
    blocks = [np.zeros(0, np.int64)]
    for r, c, new in moved_entries(uv, nbr, is_fixed, touched_ids, chunk):
        scores[r, c] = new
        blocks.append(np.unique(r))
    hit_rows = np.concatenate(blocks)  # sorted and unique: blocks are disjoint and in row order
    # 2. reverse insertion candidates: (v <- u) for each touched u and each of its new neighbours v
    rev_ids, rev_scores = nbr[touched], scores[touched]  # (T, k + B)
    cand_rows = uv.positions(rev_ids.ravel())  # (T*m,)
    cand_ids = np.repeat(touched_ids, rev_ids.shape[1])
    cand_scores = rev_scores.ravel()
    if found is not None:
        cand_rows = np.concatenate([cand_rows, found[0]])
        cand_ids = np.concatenate([cand_ids, found[1]])
        cand_scores = np.concatenate([cand_scores, found[2]])
    keep = (cand_rows >= 0) & ~is_fixed[np.maximum(cand_rows, 0)]
    cand_rows, cand_ids, cand_scores = cand_rows[keep], cand_ids[keep], cand_scores[keep]
    kth = scores.min(axis=1)  # current worst kept score (-inf when the row is not full)
    short = np.isneginf(kth) & np.isfinite(next_scores)  # thinned rows: an entry must beat the bar
    kth[short] = next_scores[short]
    better = cand_scores > kth[cand_rows]
    cand_rows, cand_ids, cand_scores = cand_rows[better], cand_ids[better], cand_scores[better]
    extra = np.zeros(0, np.int64) if resort is None else np.asarray(resort, np.int64)
    rows = np.unique(np.concatenate([hit_rows, cand_rows, extra]))
    if not len(rows):
        return 0
    n_rows = len(rows)
    # 3. merge each affected row's list with its candidates: dedupe (row, id), top k by score; rows in
    # blocks of ``chunk`` (their scratch follows the block: with spare entries nearly every row is merged).
    # A row without candidates is only sorted again, in place (the merge's order: score, then id)
    by_row = np.argsort(cand_rows, kind="stable")
    cand_rows, cand_ids, cand_scores = cand_rows[by_row], cand_ids[by_row], cand_scores[by_row]
    alone = np.setdiff1d(rows, cand_rows, assume_unique=False)  # no candidate: only sorted again
    for lo in range(0, len(alone), chunk):
        block = alone[lo : lo + chunk]
        order = np.lexsort((nbr[block], -scores[block]), axis=1)  # best first, ties by id, holes last
        nbr[block] = np.take_along_axis(nbr[block], order, axis=1)
        scores[block] = np.take_along_axis(scores[block], order, axis=1)
    rows = np.setdiff1d(rows, alone, assume_unique=True)
    for lo in range(0, len(rows), chunk):
        block = rows[lo : lo + chunk]
        a = int(np.searchsorted(cand_rows, block[0], side="left"))
        b = int(np.searchsorted(cand_rows, block[-1], side="right"))
        merge_rows(nbr, scores, next_scores, block, cand_rows[a:b], cand_ids[a:b], cand_scores[a:b])
    return n_rows


def merge_rows(
    nbr: np.ndarray,
    scores: np.ndarray,
    next_scores: np.ndarray,
    rows: np.ndarray,
    cand_rows: np.ndarray,
    cand_ids: np.ndarray,
    cand_scores: np.ndarray,
) -> None:
    """Merge the lists at ``rows`` (sorted) with their candidates (rows among ``rows``), in place: each
    (row, id) once (the list's entry first), best first, the first ``k`` kept, evicted ones raising the
    row's bar, holes (PAD) last.

    Duplicates are found without sorting the lists: a candidate already in its row's list is dropped
    (one row-wise comparison), and only the candidates are sorted by (row, id) to keep each pair once.
    The merged entries are then ordered by one float64 key, ``row * 4 + (2 - score)`` (scores lie in
    [-1, 1]; a block of up to 2^22 rows leaves ~2^-30 of resolution), stably: ties keep the list's
    order. Two int64 lexsorts over every entry took 9x longer (the 10M hour's repair: 207 s)."""
    k = nbr.shape[1]
    local = np.searchsorted(rows, cand_rows)  # each candidate's row within the block
    fresh = ~(nbr[cand_rows] == cand_ids[:, None]).any(axis=1)  # not in its row's list already
    local, cand_ids, cand_scores = local[fresh], cand_ids[fresh], cand_scores[fresh]
    order = np.lexsort((cand_ids, local))  # the candidates only: a pair found twice is kept once
    local, cand_ids, cand_scores = local[order], cand_ids[order], cand_scores[order]
    first = np.ones(len(local), bool)
    first[1:] = (local[1:] != local[:-1]) | (cand_ids[1:] != cand_ids[:-1])
    all_local = np.concatenate([np.repeat(np.arange(len(rows)), k), local[first]])
    all_ids = np.concatenate([nbr[rows].ravel(), cand_ids[first]])
    all_scores = np.concatenate([scores[rows].ravel(), cand_scores[first]])
    valid = all_ids != PAD
    all_local, all_ids, all_scores = all_local[valid], all_ids[valid], all_scores[valid]
    order = np.argsort(all_local * 4.0 + (2.0 - all_scores.astype(np.float64)), kind="stable")
    all_rows, all_ids, all_scores = rows[all_local[order]], all_ids[order], all_scores[order]
    starts = np.searchsorted(all_rows, all_rows, side="left")
    rank = np.arange(len(all_rows)) - starts
    top = rank < k
    evicted = ~top
    np.maximum.at(next_scores, all_rows[evicted], all_scores[evicted])
    nbr[rows], scores[rows] = PAD, -np.inf
    nbr[all_rows[top], rank[top]] = all_ids[top]
    scores[all_rows[top], rank[top]] = all_scores[top]


def local_neighbours(
    uv: UserVectors, nbr: np.ndarray, rows: np.ndarray, k: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours of the users at ``rows``, ranked exactly among their 2-hop neighbourhood in ``nbr``.

    The candidates of a row are its current neighbours and their neighbours (k + k² ids; NN-descent's
    "local join"), so the cost per row is ~k² dot products whatever N is, where an index search costs
    nprobe x N / nlist. The cheap re-search of the rows a moved neighbour left (``graph.research_with:
    local``); it can miss a better user outside the 2-hop neighbourhood, which the build's measured
    recall (and ``graph.min_recall``'s full rebuild) guards. Returns (ids (n, k), scores (n, k),
    (k+1)-th score (n,)) like `store.graph.knn.search_neighbours` with ``with_next``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out_ids = np.full((len(rows), k), PAD, dtype=np.int64)
    out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    out_next = np.full(len(rows), -np.inf, dtype=np.float32)
    for lo in range(0, len(rows), chunk):
        r = rows[lo : lo + chunk]
        first = nbr[r]  # (b, k)
        second = nbr[np.maximum(uv.positions(first), 0)]  # (b, k, k)
        second = np.where((first != PAD)[:, :, None], second, PAD)
        cand = np.concatenate([first, second.reshape(len(r), -1)], axis=1)  # (b, m)
        cand = np.where(cand == uv.ids[r][:, None], PAD, cand)  # never the user itself
        cand.sort(axis=1)
        cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = PAD  # each candidate once
        pos = uv.positions(cand)  # (b, m), -1 for PAD
        sims = np.matmul(uv.vectors[np.maximum(pos, 0)], uv.vectors[r][:, :, None])[:, :, 0]  # (b, m)
        sims[pos < 0] = -np.inf
        kk = min(k + 1, sims.shape[1])
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]  # (b, kk) unordered
        top_s = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top, top_s = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_s, order, axis=1)
        ids = np.where(np.isfinite(top_s), np.take_along_axis(cand, top, axis=1), PAD)
        n = min(k, kk)
        out_ids[lo : lo + len(r), :n], out_scores[lo : lo + len(r), :n] = ids[:, :n], top_s[:, :n]
        if kk > k:
            out_next[lo : lo + len(r)] = top_s[:, k]
    return out_ids, out_scores, out_next
