"""Lookalike audiences: rank every user by similarity to a seed set (ALURE-style expansion).

Three scorers, selected by ``graph.lookalike_method`` (bench.graph measures them side by side on
planted clusters; see docs/graph.md for the numbers):

* ``centroid``        score(u) = <x_u, mean of the seed vectors (normalised)>. One dot per user; good
  when the seeds form one blob, poor when they mix interests (the mean lands between them).
* ``multi_centroid``  spherical k-means of the seeds into up to ``lookalike_centroids`` centroids;
  score(u) = max over centroids <x_u, c>. Keeps several interests apart; exact over all users at
  O(N·C·D), so 1M users x 16 centroids is ~1 GFLOP.
* ``max_seed``        score(u) = max over seeds <x_u, x_s>, restricted to each seed's
  ``lookalike_seed_k`` nearest users (more when the audience needs it) found through the FAISS index
  (an exact max over 100k seeds x N users is out of reach). Most local; noisy seeds pull in their own
  neighbourhoods. The default: the most precise of the three on planted clusters (bench.graph,
  docs/graph.md).

Seeds without a vector are reported, not an error, unless none has one. Seeds are excluded from the
audience unless ``exclude_seeds=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from store.graph.vectors import UserVectors, normalise

METHODS = ("centroid", "multi_centroid", "max_seed")


@dataclass
class Audience:
    user_ids: np.ndarray  # (size,) int64, best first
    scores: np.ndarray  # (size,) float32
    n_seeds_used: int  # seeds that have a vector
    missing_seeds: np.ndarray  # seed ids without a vector


def seed_centroids(seeds: np.ndarray, n_centroids: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means of the seed vectors -> (C, D) unit centroids (C <= n_centroids)."""
    import faiss

    c = max(1, min(n_centroids, len(seeds) // 4 or 1))
    if c == 1:
        return normalise(seeds.mean(axis=0, keepdims=True))
    km = faiss.Kmeans(
        seeds.shape[1], c, niter=20, spherical=True, seed=seed + 1, verbose=False, min_points_per_centroid=1
    )
    km.train(np.ascontiguousarray(seeds, np.float32))
    if km.centroids is None:  # faiss sets them in train()
        raise RuntimeError("faiss k-means produced no centroids")
    return normalise(km.centroids)


def score_all(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """max over centroids of <x, c> for every row of ``vectors`` -> (N,) float32, chunked."""
    out = np.empty(len(vectors), np.float32)
    for lo in range(0, len(vectors), chunk):
        out[lo : lo + chunk] = (vectors[lo : lo + chunk] @ centroids.T).max(axis=1)  # (n, C) -> (n,)
    return out


def max_seed_scores(uv: UserVectors, seed_rows: np.ndarray, index, seed_k: int) -> np.ndarray:
    """Per user the max similarity to any seed among the seeds' ``seed_k`` nearest users; -inf elsewhere."""
    scores = np.full(len(uv), -np.inf, np.float32)
    for lo in range(0, len(seed_rows), 16_384):
        d, ids = index.search(uv.vectors[seed_rows[lo : lo + 16_384]], seed_k)  # (b, seed_k)
        ok = ids >= 0
        rows = uv.positions(ids[ok])
        np.maximum.at(scores, rows[rows >= 0], d[ok][rows >= 0])
    return scores


def lookalike(
    uv: UserVectors,
    seed_user_ids,
    size: int,
    exclude_seeds: bool = True,
    method: str = "max_seed",
    n_centroids: int = 16,
    index=None,
    seed_k: int = 100,
    seed: int = 0,
) -> Audience:
    """The ``size`` users most similar to the seed set under ``method`` (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"lookalike method must be one of {METHODS}, got {method!r}")
    if size < 1:
        raise ValueError(f"audience size must be positive, got {size}")
    seed_ids = np.unique(np.asarray(seed_user_ids, dtype=np.int64))
    rows = uv.positions(seed_ids)
    missing, seed_rows = seed_ids[rows < 0], rows[rows >= 0]
    if not len(seed_rows):
        raise LookupError(f"none of the {len(seed_ids)} seed users has a vector in the graph")
    seeds = uv.vectors[seed_rows]  # (S, D)
    if method == "centroid":
        scores = score_all(uv.vectors, normalise(seeds.mean(axis=0, keepdims=True)))
    elif method == "multi_centroid":
        scores = score_all(uv.vectors, seed_centroids(seeds, n_centroids, seed))
    else:
        if index is None:
            raise ValueError("lookalike method max_seed needs the graph's FAISS index")
        # each seed contributes its nearest users; enough of them to fill the audience twice over
        seed_k = int(min(2048, max(seed_k, np.ceil(2 * (size + len(seed_rows)) / len(seed_rows)))))
        scores = max_seed_scores(uv, seed_rows, index, seed_k)
    if exclude_seeds:
        scores[seed_rows] = -np.inf
    size = min(size, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, size - 1)[:size] if size else np.zeros(0, np.int64)
    top = top[np.lexsort((uv.ids[top], -scores[top]))]  # best first, ties by id
    return Audience(uv.ids[top], scores[top], len(seed_rows), missing)
