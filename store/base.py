"""The store interface: what publish, the lookup client, the graph, forget and the pointer need.

A small abstract class in the spirit of Feast's online store: a backend keeps, per model namespace,
one vector and one neighbour list per user, plus a little metadata and the current-model pointer.
`store.redis_store.RedisVectorStore` is the backend (one redis-server or Redis Cluster). Values
are bytes in the format of store.format; a backend stores and compares them, it does not reinterpret
them, except for the as_of it reads to refuse older writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass
class UpsertCounts:
    """What a conditional upsert did, per user."""

    written: int = 0  # new or newer values stored
    unchanged: int = 0  # the same bytes were already stored (idempotent rerun)
    stale: int = 0  # refused: the stored value has a newer as_of
    duplicates: int = 0  # dropped in the batch: the same user twice (the newest as_of wins)

    def __iadd__(self, other: "UpsertCounts") -> "UpsertCounts":
        self.written += other.written
        self.unchanged += other.unchanged
        self.stale += other.stale
        self.duplicates += other.duplicates
        return self

    def as_dict(self) -> dict[str, int]:
        return {"written": self.written, "unchanged": self.unchanged, "stale": self.stale, "duplicates": self.duplicates}


@dataclass
class ModelMeta:
    """A model namespace's fixed shape; created by the first publish into it."""

    model: str  # the model version id
    dim: int  # vector dim
    dtype: str  # float16 | float32 | int8
    buckets: int  # hashes the namespace is spread over
    extra: dict[str, str] = field(default_factory=dict)  # created_at, last_as_of, vectors, ...


@dataclass
class Lookup:
    """The answer to a batched read, aligned with the requested user ids."""

    vectors: np.ndarray  # float32 (n, d); zeros where not found
    found: np.ndarray  # bool (n,)
    as_of: np.ndarray  # int64 ms (n,); 0 where not found
    model: str | None  # the model namespace read (one per batch, never a mix)


class VectorStore(ABC):
    """Per-model namespaces of user vectors and neighbour lists, with a current-model pointer."""

    # -- namespaces ---------------------------------------------------------------------------
    @abstractmethod
    def ensure_model(self, model: str, dim: int, dtype: str, buckets: int) -> ModelMeta:
        """Create the namespace's metadata, or return the existing one (raises if dim/dtype differ)."""

    @abstractmethod
    def model_meta(self, model: str) -> ModelMeta | None: ...

    @abstractmethod
    def update_meta(self, model: str, **fields) -> None:
        """Set extra metadata fields of a namespace (e.g. last_as_of)."""

    @abstractmethod
    def models(self) -> list[str]:
        """Every model namespace ever created (and not dropped)."""

    @abstractmethod
    def drop_model(self, model: str) -> int:
        """Delete a namespace entirely; returns the number of keys removed."""

    # -- vectors and neighbour lists ----------------------------------------------------------
    @abstractmethod
    def upsert_vectors(self, model: str, user_ids: np.ndarray, values: np.ndarray, as_of: np.ndarray) -> UpsertCounts:
        """Conditional upsert of encoded vectors (uint8 (n, value_size)): never over a newer as_of."""

    @abstractmethod
    def upsert_neighbours(self, model: str, user_ids: np.ndarray, values: list[bytes], as_of: np.ndarray) -> UpsertCounts:
        """Conditional upsert of encoded neighbour lists (one value per user)."""

    @abstractmethod
    def get_vectors(self, model: str, user_ids: np.ndarray) -> Lookup: ...

    @abstractmethod
    def lookup_with(self, meta: ModelMeta, user_ids: np.ndarray) -> Lookup:
        """`get_vectors` with the namespace's metadata already known (the lookup client caches it)."""

    @abstractmethod
    def raw_with(self, kind: str, meta: ModelMeta, user_ids: np.ndarray) -> list[bytes | None]:
        """`get_raw` with the namespace's metadata already known."""

    @abstractmethod
    def get_raw(self, kind: str, model: str, user_ids: np.ndarray) -> list[bytes | None]:
        """Stored values ("v" vectors or "n" neighbour lists), None where missing."""

    @abstractmethod
    def delete_users(self, user_ids: np.ndarray) -> dict[str, int]:
        """Remove the users from every namespace; returns removals per "<kind>:<model>"."""

    # -- pointer and manifests ----------------------------------------------------------------
    @abstractmethod
    def current(self) -> str | None:
        """The current model (one read; the lookup client caches it)."""

    @abstractmethod
    def pointer(self) -> dict[str, str]:
        """{"current": ..., "previous": ..., "switched_at": ...} (empty when never set)."""

    @abstractmethod
    def switch_pointer(self, new_current: str) -> dict[str, str]:
        """Atomically: previous <- current, current <- new_current."""

    @abstractmethod
    def swap_pointer(self) -> dict[str, str]:
        """Atomically swap current and previous (rollback)."""

    @abstractmethod
    def record_manifest(self, model: str, name: str, manifest: dict) -> None: ...

    @abstractmethod
    def manifests(self, model: str) -> dict[str, dict]: ...
