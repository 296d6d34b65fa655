"""Every user's latest vector: the embedding snapshots of one model merged, the newest ``as_of`` winning.

The encoder writes one snapshot per hourly refresh, ``embeddings/<model>/as_of=<T>/shard=<i>/*.parquet``,
holding only that hour's *active* users. A user's current vector is therefore the one in the newest
snapshot that contains the user. `latest_vectors` takes the snapshots in ``(after, as_of]`` (full
build: every snapshot up to ``as_of``; incremental build: only those newer than the previous graph).

Snapshots are read only through `core.embeddings` (which shards are published, the newest-wins merge,
the vector column as numpy), streamed: `window_vectors` first learns the window's users (ids only; the
build sizes itself on their number, see store.graph.memory), then `WindowVectors.load` fills the
(N, D) result one batch of one shard at a time, so the read adds one batch to the result, never a copy
of every shard. The result is a `UserVectors`: user ids sorted ascending and their float32
L2-normalised vectors, the layout the rest of the graph code works in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from core.embeddings import LatestIds, latest_ids, latest_vectors_of
from core.forget import ForgetList
from core.layout import Layout
from store.graph.settings import GraphSettings

CHUNK_ROWS: int = GraphSettings.model_fields["chunk_rows"].default  # rows per block of the row-wise passes


@dataclass
class UserVectors:
    ids: np.ndarray  # (N,) int64, sorted ascending, unique
    vectors: np.ndarray  # (N, D) float32, L2-normalised rows

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def positions(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user id, -1 where unknown (any shape in, same shape out).

        Two paths, tested equal: a dense id -> row table when the ids are compact enough (range <=
        8 x N: at most 32 bytes per user; ~25x faster than binary search, which matters for the
        re-ranking of millions of candidates), else binary search over the sorted ids.
        """
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(user_ids.shape, -1, dtype=np.int64)
        table = self._table()
        if table is not None:
            lo = self.ids[0]
            inside = (user_ids >= lo) & (user_ids <= self.ids[-1])
            return np.where(inside, table[np.where(inside, user_ids - lo, 0)], -1).astype(np.int64)
        return self.positions_by_search(user_ids)

    def marked(self, user_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Whether each user id (any shape) is the id of one of ``rows`` (False for unknown ids).

        Many ids against many rows: by the dense id -> row table when there is one (two gathers), else
        ``np.isin`` against those rows' ids (which sorts both: ~1 s for 2M ids against 1M at 10M users,
        the table's path takes ~50 ms)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if not len(self.ids) or self._table() is None:
            return np.isin(user_ids, self.ids[rows])
        mask = np.zeros(len(self.ids) + 1, bool)  # the last slot answers for position -1 (unknown)
        mask[rows] = True
        return mask[self.positions(user_ids)]

    def positions_by_search(self, user_ids: np.ndarray) -> np.ndarray:
        """The reference path of `positions`: binary search over the sorted ids."""
        pos = np.minimum(np.searchsorted(self.ids, user_ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == user_ids, pos, -1)

    def _table(self) -> np.ndarray | None:
        cached = self.__dict__.get("_table_cache", False)
        if cached is not False:
            return cached
        span = int(self.ids[-1]) - int(self.ids[0]) + 1
        table = None
        if span <= 8 * len(self.ids) + 1024:
            table = np.full(span, -1, dtype=np.int32 if len(self.ids) < 2**31 else np.int64)
            table[self.ids - self.ids[0]] = np.arange(len(self.ids))
        self.__dict__["_table_cache"] = table
        return table

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray, chunk: int = CHUNK_ROWS) -> UserVectors:
        """Sort by id, drop duplicate ids (last wins), normalise rows (``vectors`` of any float dtype;
        converted to float32 ``chunk`` rows at a time, so the only full-size copy is the result)."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"need (N,) ids and (N, D) vectors, got {ids.shape} and {vectors.shape}")
        return cls._sorted_unique(ids, [vectors], vectors.shape[1], chunk)

    @classmethod
    def _sorted_unique(cls, ids: np.ndarray, parts: list[np.ndarray], dim: int, chunk: int) -> UserVectors:
        """`from_arrays` of ``ids`` and the row-wise concatenation of ``parts``, without concatenating."""
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        last = np.ones(len(ids), bool)
        last[:-1] = ids[1:] != ids[:-1]
        return cls(ids[last], normalised_rows(parts, order[last], dim, chunk))

    def load(self, chunk: int = CHUNK_ROWS) -> UserVectors:
        """These vectors (already read: `WindowVectors.load`'s interface)."""
        return self

    def without(self, user_ids: np.ndarray) -> UserVectors:
        """These vectors without ``user_ids`` (e.g. the forgotten users)."""
        keep = ~np.isin(self.ids, np.asarray(user_ids, dtype=np.int64))
        return self if keep.all() else UserVectors(self.ids[keep], self.vectors[keep])

    def merged(self, newer: UserVectors, chunk: int = CHUNK_ROWS) -> UserVectors:
        """These vectors with ``newer``'s replacing/adding users (newer wins); the two matrices are
        never concatenated (rows are gathered into the result ``chunk`` at a time)."""
        if len(self) and len(newer) and self.dim != newer.dim:
            raise ValueError(
                f"vector dim changed from {self.dim} to {newer.dim}: a new model needs a full build"
            )
        ids = np.concatenate([self.ids, newer.ids])
        parts = [self.vectors, newer.vectors] if len(self) else [newer.vectors]
        return UserVectors._sorted_unique(ids, parts, self.dim if len(self) else newer.dim, chunk)


def normalised_rows(
    parts: list[np.ndarray], rows: np.ndarray, dim: int, chunk: int = CHUNK_ROWS
) -> np.ndarray:
    """``normalise(np.concatenate(parts)[rows])`` (float32), built ``chunk`` rows at a time: scratch
    memory is one block, not a copy of every part; the result is bit-identical (row-wise arithmetic)."""
    out = np.empty((len(rows), dim), np.float32)
    starts = np.cumsum([0] + [len(p) for p in parts])
    for lo in range(0, len(rows), chunk):
        r = rows[lo : lo + chunk]
        block = np.empty((len(r), dim), np.float32)
        for part, start, stop in zip(parts, starts[:-1], starts[1:]):
            inside = (r >= start) & (r < stop)
            if inside.any():
                block[inside] = part[r[inside] - start]  # float16/float64 -> float32 like astype
        out[lo : lo + len(r)] = normalise(block)
    return out


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): inner product == cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class WindowVectors:
    """The users of a window of embedding snapshots, their vectors not read yet (`window_vectors`)."""

    latest: LatestIds
    ids: np.ndarray  # (N,) sorted user ids whose vectors `load` reads (the forgotten users left out)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.latest.dim

    def load(self, chunk: int = CHUNK_ROWS) -> UserVectors:
        """Every user's newest vector, normalised to float32, read ``chunk`` rows at a time into the
        result (bit-identical to `UserVectors.from_arrays` of the whole merged table)."""
        out = np.empty((len(self.ids), self.dim), np.float32)
        for rows, vectors in latest_vectors_of(self.latest, self.ids, chunk):
            out[rows] = normalise(vectors)  # float16 -> float32 as astype, then row-wise
        return UserVectors(self.ids, out)


def window_vectors(
    layout: Layout,
    model_version: str,
    as_of: datetime,
    after: datetime | None = None,
    forget: ForgetList | None = None,
    chunk: int = CHUNK_ROWS,
) -> WindowVectors:
    """The users of the model's snapshots in ``(after, as_of]`` without the forgotten ones (``forget``,
    default: the data root's forget list); reads ids only (and checks every file can be read).

    Raises FileNotFoundError when no published snapshot exists in the window.
    """
    latest = latest_ids(layout, model_version, after=after, until=as_of, batch_rows=chunk)
    forget = forget if forget is not None else ForgetList.load(layout.root)
    ids = latest.ids[~forget.mask(latest.ids)] if len(forget) else latest.ids
    return WindowVectors(latest, ids)


def latest_vectors(
    layout: Layout,
    model_version: str,
    as_of: datetime,
    after: datetime | None = None,
    forget: ForgetList | None = None,
    chunk: int = CHUNK_ROWS,
) -> UserVectors:
    """Every user's latest vector from the model's snapshots in ``(after, as_of]`` (newest snapshot wins),
    without the forgotten users (``forget``, default: the data root's forget list), read shard by shard
    in blocks of ``chunk`` rows.

    Raises FileNotFoundError when no published snapshot exists in the window.
    """
    return window_vectors(layout, model_version, as_of, after, forget, chunk).load(chunk)
