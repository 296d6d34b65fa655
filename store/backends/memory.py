"""The in-memory backend (``redis.mode: memory``): the store's rules in one Python process.

Same values (store.format bytes, stored as given), same checks (`VectorStore.checked_upsert`: the
value rules and limits the Redis functions enforce), same newest-as_of-wins upsert (per user: no
value -> written; same bytes -> unchanged; stored as_of newer -> stale; else written), same
namespaces, manifests (JSON round trip) and pointer semantics as the Redis backend;
tests/test_store_contract.py runs one set of tests on both. There are no buckets: the metadata
keeps the configured count so it reads the same, but records are one dict per (kind, model).

Every `open_store` of one process with the same namespace returns the same instance (`shared`), so
publish, the lookup client and the service see one store, as they would see one Redis; its value
limits are those of its first opening (as a Redis server keeps the limits its library was loaded
with). It is for
tests, offline runs and examples; nothing is persisted. All methods hold one lock.
"""

from __future__ import annotations

import json
import threading
import time
from typing import ClassVar

import numpy as np

from store.base import (
    POSITIVES,
    Kind,
    ModelMeta,
    UpsertCounts,
    Values,
    VectorStore,
    as_ids,
    check_kind,
    checked_pointer,
    now_text,
    stored_model,
    value_as_of,
)
from store.functions import Limits
from store.keys import check_name

Slot = tuple[str, str | None]  # (kind, model)


def _valid(name: str | None) -> bool:
    try:
        check_name("model version", name)
    except ValueError:
        return False
    return True


class MemoryVectorStore(VectorStore):
    """`VectorStore` in process memory (see the module docstring)."""

    _shared: ClassVar[dict[str, MemoryVectorStore]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, namespace: str = "soe", limits: Limits = Limits()):
        self.namespace = check_name("store namespace", namespace)
        self.limits = limits
        self._lock = threading.RLock()
        self._records: dict[Slot, dict[int, bytes]] = {}
        self._expires: dict[Slot, dict[int, float]] = {}  # monotonic deadline of records written with a ttl
        self._meta: dict[str, dict[str, str]] = {}
        self._models: set[str] = set()
        self._manifests: dict[str, dict[str, str]] = {}
        self._pointer: dict[str, str] = {}

    @classmethod
    def shared(cls, namespace: str = "soe", limits: Limits = Limits()) -> MemoryVectorStore:
        """The process-wide store of ``namespace`` (created on first use, with ``limits``)."""
        with cls._shared_lock:
            if namespace not in cls._shared:
                cls._shared[namespace] = cls(namespace, limits)
            return cls._shared[namespace]

    @classmethod
    def discard(cls, namespace: str) -> None:
        """Forget the shared store of ``namespace`` (tests isolate themselves with it)."""
        with cls._shared_lock:
            cls._shared.pop(namespace, None)

    def __repr__(self) -> str:
        return f"MemoryVectorStore(ns={self.namespace})"

    # -- records ----------------------------------------------------------------------------------
    def _live(self, slot: Slot) -> dict[int, bytes]:
        """The records of a slot, with expired ones removed."""
        records = self._records.setdefault(slot, {})
        deadlines = self._expires.get(slot)
        if deadlines:
            now = time.monotonic()
            for uid in [u for u, t in deadlines.items() if t <= now]:
                records.pop(uid, None)
                del deadlines[uid]
        return records

    def upsert(
        self, kind: Kind, model: str | None, user_ids, values: Values, as_of, *, ttl_s: float | None = None
    ) -> UpsertCounts:
        batch, _ = self.checked_upsert(kind, model, user_ids, values, as_of)
        counts = UpsertCounts(duplicates=batch.duplicates)
        with self._lock:
            if model is not None:
                self.meta_or_raise(model)  # not dropped since the check
            slot = (kind, model)
            records = self._live(slot)
            for i, uid in enumerate(batch.ids.tolist()):
                new = batch.value(i)
                old = records.get(uid)
                if old == new:
                    counts.unchanged += 1
                elif old is not None and value_as_of(old) > value_as_of(new):
                    counts.stale += 1
                else:
                    records[uid] = new
                    counts.written += 1
            if ttl_s is not None:
                deadline = time.monotonic() + ttl_s
                self._expires.setdefault(slot, {}).update(dict.fromkeys(batch.ids.tolist(), deadline))
        return counts

    def get(
        self, kind: Kind, model: str | None, user_ids, *, meta: ModelMeta | None = None
    ) -> list[bytes | None]:
        check_kind(kind, model)
        ids = as_ids(user_ids)
        with self._lock:
            if model is not None and model not in self._models:
                return [None] * len(ids)
            records = self._live((kind, model))
            return [records.get(uid) for uid in ids.tolist()]

    def delete_users(self, user_ids) -> dict[str, int]:
        ids = np.unique(as_ids(user_ids)).tolist()
        with self._lock:
            slots: list[tuple[str, Slot]] = [(f"p:{POSITIVES}", ("positives", None))]
            for model in sorted(self._models):
                if "dim" in self._meta.get(model, {}):
                    slots += [(f"v:{model}", ("vectors", model)), (f"n:{model}", ("neighbours", model))]
            out: dict[str, int] = {}
            for name, slot in slots:
                records = self._live(slot)
                deadlines = self._expires.get(slot, {})
                out[name] = sum(records.pop(uid, None) is not None for uid in ids)
                for uid in ids:
                    deadlines.pop(uid, None)
            return out

    # -- model namespaces -------------------------------------------------------------------------
    def read_meta(self, model: str) -> dict[str, str]:
        with self._lock:
            return dict(self._meta.get(model, {}))

    def write_meta(self, model: str, fields: dict[str, str], *, if_absent: bool = False) -> None:
        with self._lock:
            meta = self._meta.setdefault(model, {})
            for name, value in fields.items():
                if not (if_absent and name in meta):
                    meta[name] = str(value)
            self._models.add(model)

    def models(self) -> list[str]:
        with self._lock:
            return sorted(stored_model(m, "the store's set of models") for m in self._models)

    def drop_model(self, model: str) -> int:
        with self._lock:
            removed = 0
            for kind in ("vectors", "neighbours"):
                removed += len(self._live((kind, model)))
                self._records.pop((kind, model), None)
                self._expires.pop((kind, model), None)
            removed += int(self._meta.pop(model, None) is not None)
            removed += int(self._manifests.pop(model, None) is not None)
            self._models.discard(model)
            return removed

    # -- manifests --------------------------------------------------------------------------------
    def record_manifest(self, model: str, name: str, manifest: dict) -> None:
        text = json.dumps(manifest, sort_keys=True, default=str)  # what Redis stores: the same round trip
        with self._lock:
            self._manifests.setdefault(model, {})[name] = text

    def manifests(self, model: str) -> dict[str, dict]:
        with self._lock:
            return {k: json.loads(v) for k, v in self._manifests.get(model, {}).items()}

    # -- the current-model pointer ----------------------------------------------------------------
    def pointer(self) -> dict[str, str]:
        with self._lock:
            return checked_pointer(dict(self._pointer))

    def switch_pointer(self, new_current: str) -> dict[str, str]:
        check_name("model version", new_current)
        with self._lock:
            cur = self._pointer.get("current")
            if cur != new_current:  # as the soe_switch function: an invalid name never becomes previous
                if cur is not None and _valid(cur):
                    self._pointer["previous"] = cur
                self._pointer.update(current=new_current, switched_at=now_text())
            if "previous" in self._pointer and not _valid(self._pointer["previous"]):
                del self._pointer["previous"]
            return checked_pointer(dict(self._pointer))

    def swap_pointer(self) -> dict[str, str]:
        with self._lock:
            cur, prev = self._pointer.get("current"), self._pointer.get("previous")
            if cur is None or prev is None:
                raise LookupError("no previous model to roll back to")
            self._pointer.update(current=prev, previous=cur, switched_at=now_text())
            return checked_pointer(dict(self._pointer))
