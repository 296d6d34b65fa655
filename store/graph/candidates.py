"""Ad/item candidates for a user from what the user's nearest neighbours engaged with positively.

    score(item) = Σ over neighbours v of u that had a recent positive on item:  sim(u, v)

Each neighbour votes once per item with its similarity (a heavy clicker does not outvote several
similar users); the user's own recent positives are excluded; ties break by item id. Two small
read interfaces (Feast-like) feed it, so the same scoring runs on Redis in the service and on
in-memory arrays in tests and the benchmark:

* `NeighbourSource.neighbours(user_ids)` -> per user (ids, scores) or None
* `PositivesSource.positives(user_ids)`  -> per user an array of recent positive item ids
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

import numpy as np

from store.base import VectorStore
from store.settings import RedisSettings


class NeighbourSource(ABC):
    @abstractmethod
    def neighbours(self, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Each user's neighbour ids and similarities (best first), None when unknown."""


class PositivesSource(ABC):
    @abstractmethod
    def positives(self, user_ids) -> list[np.ndarray]:
        """Each user's recent positive item ids (empty array when none)."""


class ArrayNeighbours(NeighbourSource):
    """Neighbours from (N,) user ids (sorted) and (N, k) arrays padded with -1."""

    def __init__(self, user_ids: np.ndarray, nbr_ids: np.ndarray, scores: np.ndarray):
        self.ids, self.nbr, self.scores = user_ids, nbr_ids, scores

    def neighbours(self, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
        user_ids = np.asarray(user_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, user_ids), len(self.ids) - 1)
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for uid, p in zip(user_ids, pos):
            if self.ids[p] != uid:
                out.append(None)
                continue
            ok = self.nbr[p] >= 0
            out.append((self.nbr[p][ok], self.scores[p][ok]))
        return out


class DictPositives(PositivesSource):
    def __init__(self, by_user: dict[int, np.ndarray]):
        self.by_user = by_user

    def positives(self, user_ids) -> list[np.ndarray]:
        empty = np.zeros(0, np.int64)
        return [np.asarray(self.by_user.get(int(u), empty), np.int64) for u in user_ids]


class StoreNeighbours(NeighbourSource):
    """The model's neighbour lists in the store (store.client.LookupClient pinned to the model)."""

    def __init__(self, redis_settings: RedisSettings, model_version: str, store: VectorStore | None = None):
        from store.client import LookupClient

        self.rs, self.model = redis_settings, model_version
        self.client = LookupClient(redis_settings, model=model_version, store=store)

    def neighbours(self, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
        from store.graph.redis_io import read_neighbour_lists

        return read_neighbour_lists(self.rs, self.model, user_ids, client=self.client)


class StorePositives(PositivesSource):
    """Recent positives in the store (store.graph.redis_io), those younger than the window at ``now``."""

    def __init__(
        self,
        redis_settings: RedisSettings,
        window_hours: float,
        now: datetime | None = None,
        store: VectorStore | None = None,
    ):
        from store.backends import open_store

        self.rs, self.window, self.now = redis_settings, window_hours, now
        self.store = store if store is not None else open_store(redis_settings)

    def positives(self, user_ids) -> list[np.ndarray]:
        from store.graph.redis_io import read_positives

        return read_positives(self.rs, user_ids, self.window, self.now, store=self.store)


def score_items(
    nbr_ids: np.ndarray, nbr_scores: np.ndarray, nbr_positives: list[np.ndarray], own: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-weighted votes of the neighbours' positives, the user's own removed; top k."""
    lists = [np.unique(p) for p in nbr_positives]  # one vote per neighbour and item
    if not lists or not sum(len(p) for p in lists):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    items = np.concatenate(lists)
    weights = np.repeat(np.asarray(nbr_scores, np.float64), [len(p) for p in lists])
    uniq, inv = np.unique(items, return_inverse=True)
    score = np.bincount(inv, weights=weights, minlength=len(uniq))
    keep = ~np.isin(uniq, own)
    uniq, score = uniq[keep], score[keep]
    order = np.lexsort((uniq, -score))[:k]
    return uniq[order], score[order].astype(np.float32)


def candidates(
    user_id: int, k: int, neighbours: NeighbourSource, positives: PositivesSource, exclude_own: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (item ids, scores) for ``user_id``; raises LookupError when the user has no neighbours."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    (found,) = neighbours.neighbours([user_id])
    if found is None:
        raise LookupError(f"user {user_id} has no neighbour list (unknown user, or not in the graph yet)")
    nbr_ids, nbr_scores = found
    lists = positives.positives(np.concatenate([[user_id], nbr_ids]).astype(np.int64))
    own = lists[0] if exclude_own else np.zeros(0, np.int64)
    return score_items(nbr_ids, nbr_scores, lists[1:], own, k)
