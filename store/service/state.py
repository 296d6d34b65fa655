"""What the query service reads, behind small interfaces so each part can be swapped and tested.

* the **model**: ``serve.model_version``, else the Redis current-model pointer, else the model of
  the newest graph on disk. A request resolves it **once** and reads that model's records, and its
  response carries that model as its label (`vectors` and `neighbours` return the model they read),
  so a pointer switch during a request can never label one model's vectors with the other's name.
  A pointer that holds no valid model version is "not ready" (503), never a key or a path;
* **vectors**: the store's `LookupClient` pinned to that model (``serve.vector_source=redis``; the
  store is `store.backends.open_store(redis)`, so ``redis.mode: memory`` serves an in-process store), or
  the graph snapshot (``graph``; for offline use without Redis);
* **neighbours** and **candidates**: Redis neighbour lists and recent positives
  (store.graph.candidates sources) when vectors come from Redis, else the snapshot's lists;
* **lookalike**: the newest published graph snapshot of the model, loaded into memory and re-checked
  every ``serve.graph_reload_s`` seconds (a newer one is swapped in whole; requests in flight keep the
  old one).
* **forget**: the forget list (`core.forget`) is re-read with the graph; a forgotten user is dropped
  from the loaded graph (no vector, no list, in no list), so it is never a lookalike seed (reported
  missing), never in an audience, and never a neighbour; the graph reloads when the list grows.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import numpy as np

from core.forget import ForgetList
from core.layout import Layout
from store.backends import open_store
from store.base import VectorStore
from store.client import LookupClient
from store.graph.candidates import ArrayNeighbours, NeighbourSource, StoreNeighbours, StorePositives
from store.graph.settings import GraphSettings
from store.graph.snapshot import GraphSnapshot, latest_any_model, latest_snapshot
from store.service.settings import ServeSettings
from store.settings import RedisSettings


class NotReady(RuntimeError):
    """The service cannot answer yet (no graph published, Redis unreachable): HTTP 503."""


class LoadedGraph:
    """A graph snapshot held in memory: vectors, neighbour arrays and (lazily) the FAISS index, without
    the forgotten users (the index may still return one: its id has no row here, so it is dropped)."""

    def __init__(self, snap: GraphSnapshot, forget: ForgetList | None = None):
        self.snap = snap
        self.forget = forget if forget is not None else ForgetList()
        self.uv = snap.vectors
        self.nbr_ids, self.nbr_scores = snap.neighbours()
        if len(self.forget):
            keep, listed = ~self.forget.mask(self.uv.ids), self.forget.mask(self.nbr_ids)
            self.uv = self.uv.without(self.uv.ids[~keep])
            self.nbr_ids = np.where(listed, -1, self.nbr_ids)[keep]
            self.nbr_scores = np.where(listed, -np.inf, self.nbr_scores)[keep].astype(np.float32)
        self._index: Any = None
        self._lock = threading.Lock()

    def index(self) -> Any:
        with self._lock:
            if self._index is None:
                self._index = self.snap.searcher()
            return self._index

    def neighbour_source(self) -> NeighbourSource:
        return ArrayNeighbours(self.uv.ids, self.nbr_ids, self.nbr_scores)


class ServiceState:
    """The service's sections, its store and the loaded graph (see the module docstring)."""

    def __init__(self, serve: ServeSettings, graph: GraphSettings, redis: RedisSettings, layout: Layout):
        self.serve, self.graph_cfg, self.redis, self.layout = serve, graph, redis, layout
        self._graph: LoadedGraph | None = None
        self._checked = -1e9
        self._lock = threading.Lock()
        self._store: VectorStore | None = None
        self._pointer: tuple[float, str | None] = (-1e9, None)
        self._per_model_lock = threading.Lock()
        self._clients: dict[str, LookupClient] = {}  # per model: a lookup client pinned to it
        self._sources: dict[str, NeighbourSource] = {}  # per model: its neighbour lists in the store
        self._positives: StorePositives | None = None

    def store(self) -> VectorStore:
        """The store (`open_store(redis)`), opened on first use."""
        if self._store is None:
            self._store = open_store(self.redis)
        return self._store

    # -- model and graph ----------------------------------------------------------------------
    def model(self) -> str:
        """The model to serve now (a request calls this once and uses the answer throughout)."""
        if self.serve.model_version:
            return self.serve.model_version
        now = time.monotonic()
        fetched, model = self._pointer
        if model is None or now - fetched >= self.redis.pointer_ttl_s:
            try:
                model = self.store().current() if self.serve.vector_source == "redis" else None
            except ValueError as exc:  # the pointer holds junk: nothing is built from it
                raise NotReady(str(exc)) from None
            if model is None:
                snap = latest_any_model(self.layout)
                if snap is None:
                    raise NotReady(
                        "no model to serve: set serve.model_version, switch the Redis pointer, "
                        "or build a graph"
                    )
                model = snap.model_version
            self._pointer = (now, model)
        return model

    def graph(self) -> LoadedGraph:
        """The newest graph of the served model (reloaded when a newer one is published)."""
        now = time.monotonic()
        with self._lock:
            if self._graph is None or now - self._checked >= self.serve.graph_reload_s:
                self._checked = now
                snap = latest_snapshot(self.layout, self.model())
                forget = ForgetList.load(self.layout.root)
                if snap is not None and (
                    self._graph is None
                    or snap.path != self._graph.snap.path
                    or forget.digest != self._graph.forget.digest
                ):
                    self._graph = LoadedGraph(snap, forget)
            if self._graph is None:
                raise NotReady(f"no published graph for model {self.model()!r}: run `soe graph` first")
            return self._graph

    # -- vectors / neighbours / positives -----------------------------------------------------
    def _per_model(self, cache: dict, model: str, make: Any) -> Any:
        """``cache[model]``, made on first use; a few models at most (the pointer moves between two)."""
        with self._per_model_lock:
            item = cache.get(model)
            if item is None:
                if len(cache) >= 8:
                    cache.clear()
                item = cache[model] = make()
            return item

    def vectors(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """(vectors (n, d) float32, found (n,) bool, model): the model is resolved once, and the
        vectors are that model's."""
        if self.serve.vector_source == "graph":
            g = self.graph()
            pos = g.uv.positions(user_ids)
            vecs = np.where((pos >= 0)[:, None], g.uv.vectors[np.maximum(pos, 0)], 0.0).astype(np.float32)
            return vecs, pos >= 0, g.snap.model_version
        model = self.model()
        client = self._per_model(
            self._clients, model, lambda: LookupClient(self.redis, model=model, store=self.store())
        )
        try:
            vecs, found = client.get(user_ids)
        except LookupError:  # the model namespace is not in the store: nobody is found
            return np.zeros((len(user_ids), 0), np.float32), np.zeros(len(user_ids), bool), model
        return vecs, found, model

    def neighbours(self) -> tuple[NeighbourSource, str]:
        """The served model's neighbour lists and that model (resolved once, as for `vectors`)."""
        if self.serve.vector_source == "graph":
            g = self.graph()
            return g.neighbour_source(), g.snap.model_version
        model = self.model()
        return self._per_model(
            self._sources, model, lambda: StoreNeighbours(self.redis, model, store=self.store())
        ), model

    def positives(self) -> StorePositives:
        """Recent positives, aged at the served graph's as_of (data time, not the wall clock)."""
        now: datetime | None
        try:
            now = self.graph().snap.as_of
        except NotReady:
            now = None  # no graph: ages as of each value's own publication
        if self._positives is None or self._positives.now != now:
            self._positives = StorePositives(
                self.redis, self.graph_cfg.positives_window_hours, now=now, store=self.store()
            )
        return self._positives

    def store_ok(self) -> bool:
        """Whether the store answers (/ready)."""
        try:
            return self.store().ping()
        except Exception:  # any failure to answer means "not ready", reported by /ready
            return False
