"""The store's backends, one module each, and `open_store`: the one way the rest of the code gets a store.

* ``redis.mode: single | cluster`` -> `store.backends.redis.RedisVectorStore` (redis-server / Redis Cluster)
* ``redis.mode: memory`` -> `store.backends.memory.MemoryVectorStore`, shared per process and namespace

Backends are imported only when chosen, so a memory store never imports redis-py.
"""

from __future__ import annotations

from store.base import VectorStore
from store.settings import RedisSettings


def open_store(settings: RedisSettings) -> VectorStore:
    """The store the settings name (what every component calls; never construct a backend directly)."""
    if settings.mode == "memory":
        from store.backends.memory import MemoryVectorStore
        from store.functions import Limits

        return MemoryVectorStore.shared(settings.namespace, Limits.of(settings))
    from store.backends.redis import RedisVectorStore

    return RedisVectorStore(settings)


__all__ = ["open_store"]
