"""The lookup client for rankers: user ids in, float32 vectors out, in a millisecond.

    client = LookupClient(settings.redis)            # reader credentials from config/env
    vectors, found = client.get([42, 7, 1234])       # (3, d) float32, (3,) bool
    lists = client.neighbours([42])                  # [(neighbour ids, scores)] or [None]

The store is `store.backends.open_store(settings)` (Redis, or the in-memory backend). Each call
resolves the current-model pointer once (cached for ``redis.pointer_ttl_s``) and reads the whole
batch from that one model namespace, so a batch never mixes two models, even while the pointer
switches. A single id is one HGET; a batch is one HMGET per bucket, pipelined, which the
cluster client sends as one round trip per node. Missing users come back with found=False and a
zero vector: reported, not raised. The client only reads, so it runs with the reader ACL user. A
pointer that does not hold a valid model version is a ValueError naming the pointer, never a key.
"""

from __future__ import annotations

import time

import numpy as np

from store.backends import open_store
from store.base import Lookup, ModelMeta, VectorStore, as_ids
from store.format import decode_neighbours
from store.keys import check_name
from store.settings import RedisSettings


class LookupClient:
    def __init__(
        self,
        redis_settings: RedisSettings,
        *,
        model: str | None = None,
        pointer_ttl_s: float | None = None,
        store: VectorStore | None = None,
    ):
        self.store = store if store is not None else open_store(redis_settings)
        # read this model instead of following the pointer (the pointer's value is checked by the store)
        self.pinned = None if model is None else check_name("model version", model)
        self.ttl = redis_settings.pointer_ttl_s if pointer_ttl_s is None else pointer_ttl_s
        self._pointer: tuple[float | None, str | None] = (None, None)  # (fetched at, model)
        self._meta: dict[str, ModelMeta] = {}  # a namespace's dim/dtype/buckets never change

    def current_model(self) -> str | None:
        """The model readers use: the pinned one, else the pointer (refetched after the TTL)."""
        if self.pinned:
            return self.pinned
        fetched, model = self._pointer
        now = time.monotonic()
        if fetched is None or now - fetched >= self.ttl:
            model = self.store.current()
            self._pointer = (now, model)
        return model

    def _model_meta(self) -> ModelMeta:
        model = self.current_model()
        if model is None:
            raise LookupError(
                "no current model in the store: publish a model and run `soe models switch VERSION`"
            )
        meta = self._meta.get(model)
        if meta is None:
            meta = self.store.model_meta(model)
            if meta is None:
                raise LookupError(
                    f"the current model {model!r} has no namespace in the store (was it cleaned up?)"
                )
            self._meta[model] = meta
        return meta

    def lookup(self, user_ids) -> Lookup:
        """Vectors, found, as_of and the model of one batch (or one id)."""
        return self.store.lookup_with(self._model_meta(), as_ids(user_ids))

    def get(self, user_ids) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 (n, d), found bool (n,)) for one id or a batch."""
        res = self.lookup(user_ids)
        return res.vectors, res.found

    def neighbours(self, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Each user's (neighbour ids, scores), best first, or None when the graph has no list for them."""
        meta = self._model_meta()
        raw = self.store.get("neighbours", meta.model, as_ids(user_ids), meta=meta)
        return [None if v is None else decode_neighbours(v)[:2] for v in raw]
