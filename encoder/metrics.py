"""The one metric code every evaluation and baseline goes through.

* `ranking_metrics`: full ranking over the whole catalogue. Each user has a set of relevant items
  (one for leave-last-out, several for the time split) and a set of excluded items (the history).
  Scores come from a ``score_fn(lo, hi) -> (hi-lo, I)`` so that a model, popularity or
  bag-of-items are all scored by the same code. Reports ``hr@K`` (= recall@K: hits / |relevant|) and
  ``ndcg@K`` (binary gains, ideal DCG over min(K, |relevant|) items), averaged over users.
* `purity` / `random_purity`: the share of each user's k nearest neighbours (cosine, self
  excluded) whose planted label equals the user's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

KS = (10, 20, 50)


def csr(lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A list of index arrays -> (offsets (U+1,), flat indices)."""
    lengths = np.array([len(x) for x in lists], dtype=np.int64)
    flat = (
        np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
        if len(lists)
        else np.zeros(0, np.int64)
    )
    return np.r_[0, np.cumsum(lengths)], flat


def _dense(offsets: np.ndarray, flat: np.ndarray, lo: int, hi: int, n_items: int) -> torch.Tensor:
    """Rows lo..hi of a CSR index structure as a (hi-lo, I) bool tensor."""
    out = torch.zeros(hi - lo, n_items, dtype=torch.bool)
    a, b = offsets[lo], offsets[hi]
    rows = np.repeat(np.arange(hi - lo), np.diff(offsets[lo : hi + 1]))
    out[torch.from_numpy(rows), torch.from_numpy(flat[a:b])] = True
    return out


def ranking_metrics(
    score_fn: Callable[[int, int], torch.Tensor],
    relevant: tuple[np.ndarray, np.ndarray],
    exclude: tuple[np.ndarray, np.ndarray] | None,
    n_items: int,
    ks: Sequence[int] = KS,
    chunk: int = 1024,
) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@K (see module doc). ``relevant``/``exclude`` are CSR (offsets, items)."""
    n_users = len(relevant[0]) - 1
    kmax = min(max(ks), n_items)
    discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))  # (K,)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg")}
    counted = 0
    for lo in range(0, n_users, chunk):
        hi = min(lo + chunk, n_users)
        scores = score_fn(lo, hi).float().cpu()  # (u, I)
        rel = _dense(*relevant, lo, hi, n_items)  # (u, I)
        if exclude is not None:
            scores = scores.masked_fill(_dense(*exclude, lo, hi, n_items) & ~rel, float("-inf"))
        n_rel = rel.sum(dim=1)  # (u,)
        keep = n_rel > 0
        top = scores.topk(kmax, dim=1).indices  # (u, K)
        hits = rel.gather(1, top).double()  # (u, K)
        for k in ks:
            dcg = (hits[:, :k] * discount[:k]).sum(dim=1)
            ideal = torch.cumsum(discount[:k], 0)[(n_rel.clamp(max=k) - 1).clamp(min=0)]
            sums[f"hr@{k}"] += (hits[:, :k].sum(dim=1) / n_rel.clamp(min=1))[keep].sum().item()
            sums[f"ndcg@{k}"] += (dcg / ideal)[keep].sum().item()
        counted += int(keep.sum())
    out = {name: value / max(counted, 1) for name, value in sums.items()}
    out["users"] = counted
    return out


def neighbours(vectors: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(U, D) L2-normalised -> (U, k) indexes of the k most similar other users (exact, cosine)."""
    vectors = vectors.float()
    out = []
    for lo in range(0, len(vectors), chunk):
        sims = vectors[lo : lo + chunk] @ vectors.T  # (u, U)
        sims[torch.arange(sims.shape[0]), torch.arange(lo, lo + sims.shape[0])] = float("-inf")  # not oneself
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def purity_of(neigh: torch.Tensor, labels: np.ndarray) -> float:
    """Mean share of each user's neighbours that carry the user's label."""
    lab = torch.as_tensor(labels)
    return float((lab[neigh] == lab[:, None]).float().mean())


def purity(vectors: torch.Tensor, labels: np.ndarray, k: int = 20) -> float:
    return purity_of(neighbours(vectors, k), labels)


def random_purity(labels: np.ndarray, k: int = 20, seed: int = 0) -> float:
    """The same measure with k uniformly random other users as neighbours (the chance level)."""
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    neigh = torch.randint(0, n - 1, (n, k), generator=g)
    neigh = neigh + (neigh >= torch.arange(n)[:, None]).long()  # skip oneself
    return purity_of(neigh, labels)
