"""k nearest neighbours per user, self excluded, and recall against exact search.

Two paths that must agree (tests compare them):

* `search_neighbours`   batched ``index.search`` (any faiss index, CPU or GPU) for k+1 results,
  then `drop_self` removes the user itself (or, if an approximate index missed it, the last hit).
* `exact_neighbours`    the reference: brute-force inner product over every vector (`exact_top`:
  faiss.knn, tiled BLAS), behind the exact lists recall@k is measured against at every build
  (store.graph.exact_sample); `reference_neighbours` is the same in plain numpy, for tests on small
  data.

Neighbour arrays are (n, k) int64 user ids with scores (n, k) float32, best first; a row with fewer
than k neighbours (N <= k, or an approximate index returning fewer) is padded with id -1.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa

from core.contracts import NEIGHBOURS, TS
from store.graph.vectors import UserVectors

PAD = -1


def drop_self(
    query_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """From (n, k+1) search results keep the first k hits that are not the query user (nor padding)."""
    bad = (ids == query_ids[:, None]) | (ids < 0)  # (n, k+1)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]  # good hits first, rank order kept
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    invalid = np.take_along_axis(bad, order, axis=1)
    out_ids[invalid] = PAD
    out_scores[invalid] = np.float32("-inf")
    return out_ids, out_scores


def search_neighbours(
    index,
    uv: UserVectors,
    rows: np.ndarray,
    k: int,
    batch: int = 16_384,
    on_batch=None,
    with_next: bool = False,
):
    """Neighbours of the users at ``rows`` of ``uv`` by batched search of ``index`` (ids = user ids).

    Returns (ids (n, k), scores (n, k)); with ``with_next`` also the (k+1)-th score (n,), the bar a
    user outside the list must beat (the incremental build uses it to know which lists stay exact).
    """
    rows = np.asarray(rows, dtype=np.int64)
    kk = k + 1 if with_next else k
    out_ids = np.full((len(rows), kk), PAD, dtype=np.int64)
    out_scores = np.full((len(rows), kk), -np.inf, dtype=np.float32)
    for lo in range(0, len(rows), batch):
        r = rows[lo : lo + batch]
        scores, ids = index.search(uv.vectors[r], kk + 1)  # (b, kk+1)
        out_ids[lo : lo + len(r)], out_scores[lo : lo + len(r)] = drop_self(uv.ids[r], ids, scores, kk)
        if on_batch is not None:
            on_batch(len(r))
    if with_next:
        return out_ids[:, :k], out_scores[:, :k], out_scores[:, k].copy()
    return out_ids, out_scores


def exact_top(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n, k), positions in ``base`` (n, k)): exact inner-product top k by brute force (faiss.knn,
    tiled BLAS); -inf / -1 padded when ``base`` holds fewer than k vectors."""
    import faiss

    kk = min(k, len(base))
    scores, pos = faiss.knn(queries, base, kk, metric=faiss.METRIC_INNER_PRODUCT)
    if kk < k:
        scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        pos = np.pad(pos, ((0, 0), (0, k - kk)), constant_values=-1)
    return scores, pos


def exact_neighbours(uv: UserVectors, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours of the users at ``rows`` (brute force over all vectors, `exact_top`)."""
    rows = np.asarray(rows, dtype=np.int64)
    scores, pos = exact_top(uv.vectors[rows], uv.vectors, k + 1)  # (n, k+1): the user itself among them
    ids = np.where(pos >= 0, uv.ids[np.maximum(pos, 0)], PAD)
    return drop_self(uv.ids[rows], ids, scores, k)


def reference_neighbours(uv: UserVectors, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy brute force (small N only): the spec the faiss paths are tested against."""
    sims = uv.vectors[rows] @ uv.vectors.T  # (n, N)
    sims[np.arange(len(rows)), rows] = -np.inf  # self excluded
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    ids, scores = uv.ids[order], np.take_along_axis(sims, order, axis=1).astype(np.float32)
    if order.shape[1] < k:
        pad = k - order.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=PAD)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    ids[~np.isfinite(scores)] = PAD
    return ids, scores


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| (padding ignored); 1.0 for no rows."""
    hits, total = 0, 0
    for a, e in zip(approx_ids, exact_ids):
        e = e[e != PAD]
        total += len(e)
        hits += len(np.intersect1d(a[a != PAD], e, assume_unique=True))
    return hits / total if total else 1.0


def neighbours_table(
    user_ids: np.ndarray, nbr_ids: np.ndarray, scores: np.ndarray, model_version: str, as_of: datetime
) -> pa.Table:
    """Rows of the *neighbours* contract (padding dropped, so lists may be shorter than k)."""
    valid = nbr_ids != PAD  # (n, k)
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    ids_list = pa.ListArray.from_arrays(pa.array(offsets), pa.array(nbr_ids[valid], pa.int64()))
    score_list = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid], pa.float32()))
    n = len(user_ids)
    return pa.Table.from_arrays(
        [
            pa.array(user_ids, pa.int64()),
            ids_list,
            score_list,
            pa.array([model_version] * n, pa.string()),
            pa.array([as_of] * n, TS),
        ],
        schema=NEIGHBOURS.schema,
    )


def neighbours_from_table(table: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_ids (n,), nbr_ids (n, k), scores (n, k)) from a neighbours table, padded with -1."""
    n = table.num_rows
    user_ids = table.column("user_id").to_numpy()
    out_ids = np.full((n, k), PAD, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    lists = table.column("neighbor_ids").combine_chunks()
    slists = table.column("scores").combine_chunks()
    counts = np.minimum(np.diff(lists.offsets.to_numpy()), k)
    flat_ids, flat_scores = lists.flatten().to_numpy(), slists.flatten().to_numpy()
    starts = lists.offsets.to_numpy()[:-1] - lists.offsets.to_numpy()[0]
    col = np.arange(k)[None, :]
    mask = col < counts[:, None]  # (n, k)
    src = (starts[:, None] + col)[mask]
    out_ids[mask], out_scores[mask] = flat_ids[src], flat_scores[src]
    return user_ids, out_ids, out_scores
