"""Every user's latest vector: the embedding snapshots of one model merged, the newest ``as_of`` winning.

The encoder writes one snapshot per hourly refresh, ``embeddings/<model>/as_of=<T>/shard=<i>/*.parquet``,
holding only that hour's *active* users. A user's current vector is therefore the one in the newest
snapshot that contains the user. `latest_vectors` merges the snapshots in ``(after, as_of]`` (full
build: every snapshot up to ``as_of``; incremental build: only those newer than the previous graph).

Only published data is read: shard directories with a ``_SUCCESS`` marker, chosen by the encoder's own
`core.embeddings.shard_dirs` (its ``latest_embeddings`` has no upper as_of bound, which
a rebuild of a past hour needs, so the merge is done here).
The result is a `UserVectors`: user ids sorted ascending and their float32 L2-normalised vectors, the
layout the rest of the graph code works in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.layout import Layout, utc


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
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray) -> "UserVectors":
        """Sort by id, drop duplicate ids (last wins), normalise rows."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"need (N,) ids and (N, D) vectors, got {ids.shape} and {vectors.shape}")
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
        last = np.ones(len(ids), bool)
        last[:-1] = ids[1:] != ids[:-1]
        return cls(ids[last], normalise(vectors[last]))

    def merged(self, newer: "UserVectors") -> "UserVectors":
        """These vectors with ``newer``'s replacing/adding users (newer wins)."""
        if len(self) and len(newer) and self.dim != newer.dim:
            raise ValueError(f"vector dim changed from {self.dim} to {newer.dim}: a new model needs a full build")
        ids = np.concatenate([self.ids, newer.ids])
        vecs = np.concatenate([self.vectors, newer.vectors]) if len(self) else newer.vectors
        return UserVectors.from_arrays(ids, vecs)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): inner product == cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def vectors_from_table(table: pa.Table) -> np.ndarray:
    """The ``vector`` column (fixed_size_list<float16|float32>[D]) as a (N, D) float32 array."""
    col = table.column("vector").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise ValueError(f"embedding column 'vector' must be a fixed-size list, got {col.type}")
    dim = col.type.list_size
    if col.null_count:
        raise ValueError("embedding table holds null vectors")
    flat = col.values.to_numpy(zero_copy_only=False)[col.offset * dim:(col.offset + len(col)) * dim]
    return flat.reshape(len(col), dim).astype(np.float32)


def snapshot_files(layout: Layout, model_version: str, as_of: datetime) -> list[Path]:
    """Parquet files of one published embedding snapshot: the encoder's own rule of which shard
    directories count (`core.embeddings.shard_dirs`: published shards, and once the
    snapshot is marked complete only its ``num_shards`` first ones)."""
    from core.embeddings import shard_dirs

    return [f for d in shard_dirs(layout, model_version, as_of) for f in sorted(d.glob("*.parquet"))]


def snapshot_times(layout: Layout, model_version: str, after: datetime | None, as_of: datetime) -> list[datetime]:
    """as_of times of the model's published embedding snapshots in ``(after, as_of]``, oldest first."""
    parent = layout.embeddings(model_version, as_of).parent
    if not parent.is_dir():
        return []
    out = []
    for child in parent.iterdir():
        if not child.name.startswith("as_of="):
            continue
        t = utc(child.name[len("as_of="):])
        if t <= utc(as_of) and (after is None or t > utc(after)) and snapshot_files(layout, model_version, t):
            out.append(t)
    return sorted(out)


def latest_vectors(layout: Layout, model_version: str, as_of: datetime, after: datetime | None = None) -> UserVectors:
    """Merge the model's snapshots in ``(after, as_of]``; for each user the newest snapshot wins.

    Raises FileNotFoundError when no published snapshot exists in the window.
    """
    times = snapshot_times(layout, model_version, after, as_of)
    if not times:
        where = layout.embeddings(model_version, as_of).parent
        raise FileNotFoundError(
            f"no published embeddings for model {model_version!r} in ({after}, {as_of}] under {where}; "
            "run the encoder first (soe infer)"
        )
    ids, vecs = [], []
    for t in times:  # oldest first: UserVectors.from_arrays keeps the last duplicate = newest snapshot
        for f in snapshot_files(layout, model_version, t):
            table = pq.read_table(f, columns=["user_id", "vector"])
            ids.append(table.column("user_id").to_numpy())
            vecs.append(vectors_from_table(table))
    if not ids:
        raise FileNotFoundError(f"embedding snapshots of {model_version!r} hold no Parquet files")
    return UserVectors.from_arrays(np.concatenate(ids), np.concatenate(vecs))
