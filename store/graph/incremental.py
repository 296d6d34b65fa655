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
   get its new similarity; a row where such a neighbour moved *away* may now miss a better user, so
   it is searched again (``graph.research_dropped``). `repair_untouched`: each touched user is inserted
   into the lists of its new neighbours when it beats their current k-th score (inner product is
   symmetric), and re-scored rows are re-sorted. What can remain stale: a touched user that moved
   *closer* to v without v being among its own k nearest. Every build measures recall@k of the stored lists on a random sample against exact search,
   and a drop below ``graph.min_recall`` triggers the full rebuild at once.
"""

from __future__ import annotations

import numpy as np

from store.graph.knn import PAD
from store.graph.vectors import UserVectors


def update_index(index, old: UserVectors, new: UserVectors) -> None:
    """Replace the vectors of ``new``'s users in ``index`` (ids = user ids) in one remove + one add."""
    import faiss

    replaced = new.ids[old.positions(new.ids) >= 0]
    if len(replaced):
        removed = index.remove_ids(faiss.IDSelectorBatch(len(replaced), faiss.swig_ptr(replaced)))
        if removed != len(replaced):
            raise RuntimeError(f"index held {removed} of the {len(replaced)} replaced users: snapshot corrupt?")
    index.add_with_ids(new.vectors, new.ids)


def carry_over(old_ids: np.ndarray, old_nbr: np.ndarray, old_scores: np.ndarray,
               uv: UserVectors) -> tuple[np.ndarray, np.ndarray]:
    """Previous neighbour rows re-aligned to the merged user set (new users get empty rows)."""
    k = old_nbr.shape[1]
    nbr = np.full((len(uv), k), PAD, dtype=np.int64)
    scores = np.full((len(uv), k), -np.inf, dtype=np.float32)
    rows = uv.positions(old_ids)
    nbr[rows], scores[rows] = old_nbr, old_scores
    return nbr, scores


def rescore(uv: UserVectors, nbr: np.ndarray, scores: np.ndarray, fixed: np.ndarray,
            moved_ids: np.ndarray) -> np.ndarray:
    """Re-score entries of rows not in ``fixed`` that point at a moved user; returns the rows that
    *lost* similarity (a neighbour moved away: a better user may now be missing from their list)."""
    n = len(nbr)
    is_fixed = np.zeros(n, bool)
    is_fixed[fixed] = True
    hit = np.isin(nbr, moved_ids) & ~is_fixed[:, None]  # (N, k)
    r, c = np.nonzero(hit)
    new = np.einsum("nd,nd->n", uv.vectors[r], uv.vectors[uv.positions(nbr[r, c])])
    dropped = np.unique(r[new < scores[r, c] - 1e-6])
    scores[r, c] = new
    return dropped


def repair_untouched(uv: UserVectors, nbr: np.ndarray, scores: np.ndarray, touched: np.ndarray,
                     fixed: np.ndarray | None = None) -> int:
    """Re-score entries pointing at touched users and insert touched users where they now belong.

    ``nbr``/``scores`` (N, k) are modified in place; rows in ``fixed`` (default ``touched``: already
    recomputed) are left alone. Returns the number of rows changed.
    """
    n, k = nbr.shape
    fixed = touched if fixed is None else fixed
    is_fixed = np.zeros(n, bool)
    is_fixed[fixed] = True
    touched_ids = uv.ids[touched]
    # 1. re-score: entries of the other rows whose neighbour got a new vector
    hit_rows = np.unique(np.nonzero(np.isin(nbr, touched_ids) & ~is_fixed[:, None])[0])
    rescore(uv, nbr, scores, fixed, touched_ids)
    # 2. reverse insertion candidates: (v <- u) for each touched u and each of its new neighbours v
    cand_rows = uv.positions(nbr[touched].ravel())  # (T*k,)
    cand_ids = np.repeat(touched_ids, k)
    cand_scores = scores[touched].ravel()
    keep = (cand_rows >= 0) & ~is_fixed[np.maximum(cand_rows, 0)]
    cand_rows, cand_ids, cand_scores = cand_rows[keep], cand_ids[keep], cand_scores[keep]
    kth = scores.min(axis=1)  # current worst kept score (-inf when the row is not full)
    better = cand_scores > kth[cand_rows]
    cand_rows, cand_ids, cand_scores = cand_rows[better], cand_ids[better], cand_scores[better]
    rows = np.unique(np.concatenate([hit_rows, cand_rows]))
    if not len(rows):
        return 0
    # 3. merge each affected row's list with its candidates: dedupe (row, id), top k by score
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
    order = np.lexsort((-all_scores, all_rows))  # by row, best first
    all_rows, all_ids, all_scores = all_rows[order], all_ids[order], all_scores[order]
    starts = np.searchsorted(all_rows, all_rows, side="left")
    rank = np.arange(len(all_rows)) - starts
    top = rank < k
    nbr[rows], scores[rows] = PAD, -np.inf
    nbr[all_rows[top], rank[top]] = all_ids[top]
    scores[all_rows[top], rank[top]] = all_scores[top]
    return len(rows)
