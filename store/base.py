"""The store interface: what publish, the lookup client, the graph, forget and the pointer need.

A small abstract class in the spirit of Feast's online store. A backend keeps records of three kinds
per user, each one opaque value in the format of `store.format`:

* ``vectors`` and ``neighbours``: per model namespace (created by `VectorStore.ensure_model`);
* ``positives`` (recent positive items): model independent, ``model`` is None.

plus a small registry: the namespaces' metadata, their publish manifests and the current-model
pointer. The abstract methods are the whole contract a backend implements:

================================  =================================================================
records                           ``upsert(kind, model, ids, values, as_of)``: newest as_of wins;
                                  ``get(kind, model, ids)``; ``delete_users(ids)``
namespaces                        ``read_meta``, ``write_meta``, ``models``, ``drop_model``
manifests                         ``record_manifest``, ``manifests``
pointer                           ``pointer``, ``switch_pointer``, ``swap_pointer``
================================  =================================================================

The rule every backend keeps (tests/test_store_contract.py runs the same tests on each): a stored
value is replaced only by one whose as_of (bytes 4-11 of the value) is equal or newer; the same
bytes again count as ``unchanged``, an older as_of as ``stale``; within one call a user given twice
keeps its newest as_of (`prepare_upsert`). Everything else here (`ensure_model`, `get_vectors`,
`lookup_with`, `current` ...) is built on those methods. Backends live in `store.backends`, one
module each; `store.backends.open_store` is the one constructor the rest of the code calls. This
module never imports a backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Self, get_args

import numpy as np

from store.format import AS_OF_OFFSET, FORMAT_VERSION, HEADER_SIZE, NEIGHBOURS, decode_vectors, value_size
from store.format import KINDS as VECTOR_KINDS
from store.functions import Limits
from store.keys import check_name, model_name

Kind = Literal["vectors", "neighbours", "positives"]
KINDS: tuple[Kind, ...] = get_args(Kind)
POSITIVES = "positives"  # the name of the model-independent positives records (delete_users' counts)

Values = np.ndarray | Sequence[bytes]  # uint8 (n, value_size) rows of one size, or one bytes value per user


@dataclass
class UpsertCounts:
    """What a conditional upsert did, per user."""

    written: int = 0  # new or newer values stored
    unchanged: int = 0  # the same bytes were already stored (idempotent rerun)
    stale: int = 0  # refused: the stored value has a newer as_of
    duplicates: int = 0  # dropped in the batch: the same user twice (the newest as_of wins)

    def __iadd__(self, other: UpsertCounts) -> Self:
        self.written += other.written
        self.unchanged += other.unchanged
        self.stale += other.stale
        self.duplicates += other.duplicates
        return self

    def as_dict(self) -> dict[str, int]:
        return {
            "written": self.written,
            "unchanged": self.unchanged,
            "stale": self.stale,
            "duplicates": self.duplicates,
        }


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


@dataclass
class Batch:
    """An upsert's input after `prepare_upsert`: one row per distinct user, newest as_of kept."""

    ids: np.ndarray  # int64 (n,)
    values: np.ndarray | list[bytes]  # uint8 (n, size) or n bytes values, aligned with ids
    as_of: np.ndarray  # int64 ms (n,)
    duplicates: int  # rows dropped because the same user came again with a newer (or equal, later) as_of

    def value(self, i: int) -> bytes:
        v = self.values[i]
        return v.tobytes() if isinstance(v, np.ndarray) else bytes(v)


def now_text() -> str:
    """The wall clock as ISO 8601 UTC text (created_at, switched_at)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def as_ids(user_ids) -> np.ndarray:
    """User ids as int64 (n,), one id or many."""
    return np.atleast_1d(np.asarray(user_ids, dtype=np.int64))


def check_kind(kind: str, model: str | None) -> None:
    """vectors/neighbours need a model namespace (a valid model version); positives have none."""
    if kind not in KINDS:
        raise ValueError(f"record kind must be one of {KINDS}, got {kind!r}")
    if (kind == "positives") != (model is None):
        raise ValueError(
            "positives are model independent (model=None); vectors and neighbours need a model"
            f" (got kind={kind!r}, model={model!r})"
        )
    if model is not None:
        model_name(model)


def value_as_of(value: bytes) -> int:
    """The as_of (int64 ms, little-endian, bytes 4-11) of a stored value: what the upsert compares."""
    return int.from_bytes(value[AS_OF_OFFSET : AS_OF_OFFSET + 8], "little", signed=True)


def newest_per_user(user_ids: np.ndarray, as_of: np.ndarray) -> np.ndarray:
    """Positions to keep when a batch holds a user twice: the newest as_of (the later row on a tie)."""
    o = np.lexsort((np.arange(len(user_ids)), as_of, user_ids))
    last = np.r_[user_ids[o][1:] != user_ids[o][:-1], True] if len(o) else np.array([], bool)
    return np.sort(o[last])


def _refuse(kind: str, uid: int, why: str) -> ValueError:
    return ValueError(f"{kind} value of user {uid} {why}; nothing was written")


def check_values(kind: Kind, batch: Batch, meta: ModelMeta | None, limits: Limits) -> None:
    """Refuse (ValueError, before anything is written) a value its record kind may not hold.

    The rule the Redis functions also enforce (store.functions): format version 1; vectors of the
    namespace's dtype and dim (at most ``limits.max_dim``), neighbour lists and recent positives of
    at most ``limits.max_neighbours`` / ``max_positives`` entries; the exact length the header implies.
    """
    if kind == "vectors":
        assert meta is not None  # check_kind / meta_or_raise
        if meta.dim > limits.max_dim:
            raise ValueError(
                f"model namespace {meta.model!r} has dim {meta.dim}, over the store's limit "
                f"redis.max_dim = {limits.max_dim}"
            )
        head = (FORMAT_VERSION, VECTOR_KINDS[meta.dtype], meta.dim & 0xFF, meta.dim >> 8)
        size = value_size(meta.dtype, meta.dim)
        why = (
            f"is not a {meta.dtype} vector of dim {meta.dim} ({size} bytes, format version "
            f"{FORMAT_VERSION}) as model namespace {meta.model!r} holds"
        )
        if isinstance(batch.values, np.ndarray):
            rows = batch.values
            if len(rows) and rows.shape[1] != size:
                raise _refuse(kind, int(batch.ids[0]), why)
            bad = np.flatnonzero((rows[:, :4] != np.array(head, np.uint8)).any(axis=1))
            if len(bad):
                raise _refuse(kind, int(batch.ids[bad[0]]), why)
            return
        for i, v in enumerate(batch.values):
            if len(v) != size or tuple(v[:4]) != head:
                raise _refuse(kind, int(batch.ids[i]), why)
        return
    most = limits.max_neighbours if kind == "neighbours" else limits.max_positives
    setting = "redis.max_neighbours" if kind == "neighbours" else "redis.max_positives"
    if isinstance(batch.values, np.ndarray):  # rows of one size (store.format.encode_neighbour_table)
        rows = batch.values
        if not len(rows):
            return
        lead = rows[:, :4].astype(np.int64)  # version, kind, n (uint16 little-endian)
        entries = lead[:, 2] | lead[:, 3] << 8
        bad = (lead[:, 0] != FORMAT_VERSION) | (lead[:, 1] != NEIGHBOURS) | (entries > most)
        bad |= HEADER_SIZE + 12 * entries != rows.shape[1]
        if not bad.any():
            return
        first = int(np.flatnonzero(bad)[0])
        values: Sequence[bytes] = [rows[first].tobytes()]
        ids = batch.ids[first : first + 1]
    else:
        values, ids = batch.values, batch.ids
    for uid, v in zip(ids.tolist(), values):
        n = int.from_bytes(v[2:4], "little")
        if v[0] != FORMAT_VERSION or v[1] != NEIGHBOURS:
            raise _refuse(kind, uid, f"is not a list of format version {FORMAT_VERSION}")
        if n > most:
            raise _refuse(kind, uid, f"holds {n} entries, over {setting} = {most}")
        if len(v) != HEADER_SIZE + 12 * n:
            raise _refuse(kind, uid, f"is {len(v)} bytes, its header implies {HEADER_SIZE + 12 * n}")


def stored_model(value: object, where: str) -> str:
    """A model version read back from the store (the pointer, the set of models), checked before any
    key or path is built from it: an invalid one is a ValueError naming ``where``."""
    try:
        return check_name("model version", value)
    except ValueError as exc:
        raise ValueError(f"{where} holds an invalid model version: {exc}") from None


POINTER_FIELDS = ("current", "previous")


def checked_pointer(pointer: dict[str, str]) -> dict[str, str]:
    """The pointer's fields, with ``current`` and ``previous`` checked (`stored_model`)."""
    for name in POINTER_FIELDS:
        if name in pointer:
            stored_model(pointer[name], f"the store's current-model pointer (field {name!r})")
    return pointer


def prepare_upsert(user_ids, values: Values, as_of) -> Batch:
    """Check an upsert's input and keep each user's newest row (every backend does this first)."""
    ids = as_ids(user_ids)
    stamps = np.broadcast_to(np.asarray(as_of, dtype=np.int64), ids.shape)
    rows: np.ndarray | list[bytes]
    if isinstance(values, np.ndarray):
        rows = np.ascontiguousarray(values, dtype=np.uint8)
        if rows.ndim != 2:
            raise ValueError("encoded values must be uint8 (n, value_size): use store.format.encode_vectors")
        short = rows.shape[1] < HEADER_SIZE and len(rows) > 0
    else:
        rows = [bytes(v) for v in values]
        short = any(len(v) < HEADER_SIZE for v in rows)
    if len(rows) != len(ids):
        raise ValueError(f"{len(ids)} user ids but {len(rows)} values")
    if short:
        raise ValueError(f"a value is shorter than the {HEADER_SIZE}-byte header (see store.format)")
    keep = newest_per_user(ids, stamps)
    duplicates = len(ids) - len(keep)
    if duplicates:
        ids, stamps = ids[keep], stamps[keep]
        rows = rows[keep] if isinstance(rows, np.ndarray) else [rows[i] for i in keep.tolist()]
    return Batch(ids, rows, np.ascontiguousarray(stamps), duplicates)


class VectorStore(ABC):
    """Records of three kinds per user, per-model namespaces, manifests and a current-model pointer."""

    limits: Limits = Limits()  # the largest values accepted (a backend sets its configured limits)

    # -- records ----------------------------------------------------------------------------------
    @abstractmethod
    def upsert(
        self, kind: Kind, model: str | None, user_ids, values: Values, as_of, *, ttl_s: float | None = None
    ) -> UpsertCounts:
        """Conditional upsert: each user's value is stored unless the stored one has a newer as_of.

        ``values`` are store.format values (uint8 (n, size) rows or bytes per user); ``as_of`` int64 ms,
        one for all or one per user. vectors/neighbours need the model's namespace (LookupError
        otherwise). ``ttl_s``: the records may be dropped that long after this write (positives age
        out; Redis sets it per bucket hash, so a record lives at least ``ttl_s``).
        """

    @abstractmethod
    def get(
        self, kind: Kind, model: str | None, user_ids, *, meta: ModelMeta | None = None
    ) -> list[bytes | None]:
        """The stored values, aligned with ``user_ids`` (duplicates allowed), None where missing.

        A namespace that does not exist has no records. ``meta``: the namespace's metadata when the
        caller already holds it (the lookup client caches it), which saves a read.
        """

    @abstractmethod
    def delete_users(self, user_ids) -> dict[str, int]:
        """Remove the users' records of every kind and namespace; returns the removals per
        ``"v:<model>"``, ``"n:<model>"`` and ``"p:positives"``."""

    # -- model namespaces -------------------------------------------------------------------------
    @abstractmethod
    def read_meta(self, model: str) -> dict[str, str]:
        """The namespace's metadata fields (empty when it does not exist)."""

    @abstractmethod
    def write_meta(self, model: str, fields: dict[str, str], *, if_absent: bool = False) -> None:
        """Set metadata fields and list the namespace in `models`; ``if_absent``: only fields not
        set yet (concurrent creators agree on the first one's shape)."""

    @abstractmethod
    def models(self) -> list[str]:
        """Every model namespace created (and not dropped), sorted."""

    @abstractmethod
    def drop_model(self, model: str) -> int:
        """Delete a namespace with its records, metadata and manifests; how much was removed (0: nothing)."""

    # -- manifests --------------------------------------------------------------------------------
    @abstractmethod
    def record_manifest(self, model: str, name: str, manifest: dict) -> None: ...

    @abstractmethod
    def manifests(self, model: str) -> dict[str, dict]: ...

    # -- the current-model pointer ----------------------------------------------------------------
    @abstractmethod
    def pointer(self) -> dict[str, str]:
        """{"current": ..., "previous": ..., "switched_at": ...} (empty when never set); current and
        previous are checked model versions (`checked_pointer`: ValueError when the store holds junk)."""

    @abstractmethod
    def switch_pointer(self, new_current: str) -> dict[str, str]:
        """Atomically: previous <- current, current <- new_current (nothing when already current)."""

    @abstractmethod
    def swap_pointer(self) -> dict[str, str]:
        """Atomically swap current and previous (rollback); LookupError when there is no previous."""

    # -- derived ----------------------------------------------------------------------------------
    def checked_upsert(
        self, kind: Kind, model: str | None, user_ids, values: Values, as_of
    ) -> tuple[Batch, ModelMeta | None]:
        """What every backend's `upsert` does first: check the kind, the namespace (LookupError when
        missing), the input (`prepare_upsert`) and every value (`check_values`)."""
        check_kind(kind, model)
        meta = None if model is None else self.meta_or_raise(model)
        batch = prepare_upsert(user_ids, values, as_of)
        check_values(kind, batch, meta, self.limits)
        return batch, meta

    def current(self) -> str | None:
        """The current model (the lookup client caches it); a checked model version or None."""
        return self.pointer().get("current")

    def ping(self) -> bool:
        """Whether the backend answers (readiness); a backend with a server overrides it."""
        return True

    def write_order(self, model: str | None, user_ids) -> np.ndarray:
        """Positions of ``user_ids`` in the order a large write should be cut into upsert batches: one
        that keeps each batch's users together in the backend's layout. Any order is correct (this is
        about speed only); the base keeps the given one."""
        return np.arange(len(as_ids(user_ids)))

    def model_meta(self, model: str) -> ModelMeta | None:
        raw = dict(self.read_meta(model))
        if "dim" not in raw:
            return None
        dim, dtype, buckets = raw.pop("dim"), raw.pop("dtype"), raw.pop("buckets")
        return ModelMeta(model, int(dim), dtype, int(buckets), raw)

    def ensure_model(self, model: str, dim: int, dtype: str, buckets: int) -> ModelMeta:
        """Create the namespace's metadata, or return the existing one (raises if dim/dtype differ)."""
        check_name("model version", model)
        meta = self.model_meta(model)
        if meta is None:
            self.write_meta(
                model,
                {
                    "dim": str(dim),
                    "dtype": dtype,
                    "buckets": str(buckets),
                    "format": "1",
                    "created_at": now_text(),
                },
                if_absent=True,
            )
            meta = self.model_meta(model)
            if meta is None:
                raise LookupError(
                    f"model namespace {model!r} vanished while it was created (dropped concurrently?)"
                )
        if (meta.dim, meta.dtype) != (dim, dtype):
            raise ValueError(
                f"model namespace {model!r} holds {meta.dtype} vectors of dim {meta.dim}; "
                f"refusing to write {dtype} of dim {dim} (use a new model version)"
            )
        return meta

    def update_meta(self, model: str, **fields: object) -> None:
        """Set extra metadata fields of a namespace (e.g. last_as_of)."""
        self.write_meta(model, {k: str(v) for k, v in fields.items()})

    def meta_or_raise(self, model: str) -> ModelMeta:
        meta = self.model_meta(model)
        if meta is None:
            raise LookupError(
                f"model namespace {model!r} does not exist in the store (published models: {self.models()})"
            )
        return meta

    def upsert_vectors(self, model: str, user_ids, values: np.ndarray, as_of) -> UpsertCounts:
        """Conditional upsert of encoded vectors (uint8 (n, value_size), store.format.encode_vectors)."""
        return self.upsert("vectors", model, user_ids, values, as_of)

    def upsert_neighbours(self, model: str, user_ids, values: Sequence[bytes], as_of) -> UpsertCounts:
        """Conditional upsert of encoded neighbour lists (one value per user)."""
        return self.upsert("neighbours", model, user_ids, values, as_of)

    def lookup_with(self, meta: ModelMeta, user_ids) -> Lookup:
        """Decoded vectors of a namespace whose metadata the caller holds."""
        raw = self.get("vectors", meta.model, user_ids, meta=meta)
        vectors, found, as_of, _ = decode_vectors(raw, meta.dim)
        return Lookup(vectors, found, as_of, meta.model)

    def get_vectors(self, model: str, user_ids) -> Lookup:
        """Decoded vectors of ``model`` (none found when the namespace does not exist)."""
        ids = as_ids(user_ids)
        meta = self.model_meta(model)
        if meta is None:
            n = len(ids)
            return Lookup(np.zeros((n, 0), np.float32), np.zeros(n, bool), np.zeros(n, np.int64), model)
        return self.lookup_with(meta, ids)
