"""The Redis backend of the vector store: one redis-server (`redis.Redis`) or Redis Cluster (`RedisCluster`).

Layout (store.keys, docs/format.md): per model namespace, users are spread over small hashes
("buckets") that stay listpack-encoded. Writes go through a server-side Lua script, `UPSERT_LUA`:
one call takes up to ~1000 users spread over several buckets and writes each value unless the stored
one has a newer as_of (bytes 5-12 of every value). In a cluster the buckets of
one call share a hash tag (one slot); a pipeline holds many calls, and redis-py's cluster pipeline
groups them by node, so a batch costs one round trip per node.

Reads group the requested users by bucket, one HMGET per bucket, packed into one buffer per node
(store.wire; redis-py's pipeline is the reference path); a single user is one HGET. The pointer switch and rollback are one-key Lua scripts (atomic). Nothing here logs secrets.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Callable, Iterator
from datetime import datetime, timezone

import numpy as np

from store.base import Lookup, ModelMeta, UpsertCounts, VectorStore
from store.format import FormatError, decode_vectors
from store.keys import SLOT_TAGS, Keys, bucket_of, bucket_of_one, check_name
from store.scripts import SWAP_LUA, SWITCH_LUA, UPSERT_LUA
from store.settings import RedisSettings
from store.wire import Redirected, cluster_routes, hmget_by_node

log = logging.getLogger("soe.store")

MAX_PER_CALL = 1000  # users per Lua call (Lua's unpack() limit is ~8000 arguments)
PIPELINE_CHUNK = 16  # Lua calls per pipeline round trip (~16k users); two round trips are in flight

def connect(s: RedisSettings):
    """A redis-py client for the settings: `redis.Redis` (single) or `redis.cluster.RedisCluster`."""
    import redis

    kw = dict(username=s.username, password=s.secret(), socket_timeout=s.socket_timeout_s,
              socket_connect_timeout=s.socket_timeout_s, max_connections=s.max_connections)
    if s.tls:
        kw |= dict(ssl=True, ssl_ca_certs=s.tls_ca_cert, ssl_certfile=s.tls_cert, ssl_keyfile=s.tls_key)
    if s.mode == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in s.nodes()], **kw)
    return redis.Redis(host=s.host, port=s.port, **kw)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _pairs(flat) -> dict[str, str]:
    if isinstance(flat, dict):
        return {_s(k): _s(v) for k, v in flat.items()}
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _as_ids(user_ids) -> np.ndarray:
    return np.atleast_1d(np.asarray(user_ids, dtype=np.int64))


def bucket_groups(user_ids: np.ndarray, buckets: int, max_size: int = MAX_PER_CALL):
    """Yield (bucket, positions) of the users, grouped by bucket, at most ``max_size`` positions each."""
    b = bucket_of(user_ids, buckets)
    order = np.argsort(b, kind="stable")
    sb = b[order]
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]]) if len(sb) else np.array([], np.int64)
    ends = np.r_[starts[1:], len(sb)]
    for s, e in zip(starts.tolist(), ends.tolist()):
        for c in range(s, e, max_size):
            yield int(sb[s]), order[c:min(e, c + max_size)]


def upsert_calls(user_ids: np.ndarray, buckets: int, by_tag: bool, max_users: int = MAX_PER_CALL):
    """Plan the server-side upsert calls: yield (buckets, users per bucket, positions) per call.

    A call holds up to ``max_users`` users over several buckets. With ``by_tag`` (cluster) every
    call stays within one hash tag, so all its keys are in one slot; on a single node any buckets
    may share a call.
    """
    b = bucket_of(user_ids, buckets)
    tag = b % SLOT_TAGS
    order = np.lexsort((b, tag)) if by_tag else np.argsort(b, kind="stable")
    sb, st = b[order], tag[order]
    if not len(sb):
        return
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]]).tolist()
    ends = starts[1:] + [len(sb)]
    keys, counts, lo, size = [], [], starts[0], 0
    for s, e in zip(starts, ends):
        for c in range(s, e, max_users):  # a bucket larger than one call is split over calls
            c_end = min(e, c + max_users)
            if keys and (size + c_end - c > max_users or (by_tag and st[c] != st[lo])):
                yield keys, counts, order[lo:c]
                keys, counts, lo, size = [], [], c, 0
            keys.append(int(sb[c]))
            counts.append(c_end - c)
            size += c_end - c
    yield keys, counts, order[lo:]


def newest_per_user(user_ids: np.ndarray, as_of: np.ndarray) -> np.ndarray:
    """Positions to keep when a batch holds a user twice: the newest as_of (the later row on a tie)."""
    o = np.lexsort((np.arange(len(user_ids)), as_of, user_ids))
    last = np.r_[user_ids[o][1:] != user_ids[o][:-1], True] if len(o) else np.array([], bool)
    return np.sort(o[last])


class RedisVectorStore(VectorStore):
    """`VectorStore` on one redis-server or a Redis Cluster (see the module docstring)."""

    def __init__(self, settings: RedisSettings, client=None):
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.r = client if client is not None else connect(settings)
        self.cluster = settings.mode == "cluster"
        self.fast_reads = True  # batched reads via store.wire (False: redis-py's pipeline, the reference)
        self._sha: dict[str, str] = {}  # script source -> sha, loaded lazily (readers never load)

    def __repr__(self) -> str:  # no password here, ever
        return f"RedisVectorStore(mode={self.settings.mode}, nodes={self.settings.nodes()}, ns={self.keys.ns})"

    # -- scripts ------------------------------------------------------------------------------
    def _script(self, src: str) -> str:
        if src not in self._sha:
            self._sha[src] = _s(self.r.script_load(src))  # cluster: loaded on every primary
        return self._sha[src]

    def _run_calls(self, src: str, calls: list[tuple[list[str], tuple]]) -> list:
        """EVALSHA the script once per (keys, args), pipelined (see `_run_chunks`)."""
        return self._run_chunks(src, lambda: (calls[i:i + PIPELINE_CHUNK] for i in range(0, len(calls), PIPELINE_CHUNK)))

    def _run_chunks(self, src: str, make_chunks: Callable[[], Iterator[list]]) -> list:
        """EVALSHA every call of every chunk; reload the script and rerun once after NOSCRIPT.

        Each chunk (``PIPELINE_CHUNK`` calls) is one pipeline round trip; two are in flight on two
        connections while the caller's generator builds the next, so the server always has work
        queued and the client holds the Python objects of only ~3 chunks at a time.
        """
        import redis

        for attempt in range(2):
            sha = self._script(src)
            try:
                replies: list = []
                with ThreadPoolExecutor(max_workers=2) as pool:
                    inflight: deque = deque()
                    for chunk in make_chunks():
                        inflight.append(pool.submit(self._execute, sha, chunk))
                        if len(inflight) > 2:
                            replies.extend(inflight.popleft().result())
                    while inflight:
                        replies.extend(inflight.popleft().result())
                return replies
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self._sha.pop(src, None)  # a node restarted or was flushed: load again (the upsert is idempotent)
        raise AssertionError("unreachable")

    def _execute(self, sha: str, calls: list[tuple[list[str], tuple]]) -> list:
        pipe = self.r.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        return pipe.execute()

    # -- namespaces ---------------------------------------------------------------------------
    def ensure_model(self, model: str, dim: int, dtype: str, buckets: int) -> ModelMeta:
        check_name("model version", model)
        meta = self.model_meta(model)
        if meta is None:
            key = self.keys.meta(model)
            fields = {"dim": dim, "dtype": dtype, "buckets": buckets, "format": 1, "created_at": _now()}
            for name, value in fields.items():
                self.r.hsetnx(key, name, value)  # concurrent creators agree on the first one's shape
            self.r.sadd(self.keys.models(), model)
            meta = self.model_meta(model)
        if (meta.dim, meta.dtype) != (dim, dtype):
            raise ValueError(f"model namespace {model!r} holds {meta.dtype} vectors of dim {meta.dim}; "
                             f"refusing to write {dtype} of dim {dim} (use a new model version)")
        return meta

    def model_meta(self, model: str) -> ModelMeta | None:
        raw = _pairs(self.r.hgetall(self.keys.meta(model)))
        if not raw or "dim" not in raw:
            return None
        core = {k: raw.pop(k) for k in ("dim", "dtype", "buckets")}
        return ModelMeta(model, int(core["dim"]), core["dtype"], int(core["buckets"]), raw)

    def update_meta(self, model: str, **fields) -> None:
        self.r.hset(self.keys.meta(model), mapping={k: str(v) for k, v in fields.items()})

    def models(self) -> list[str]:
        return sorted(_s(m) for m in self.r.smembers(self.keys.models()))

    def drop_model(self, model: str) -> int:
        meta = self.model_meta(model)
        removed = 0
        if meta is not None:
            keys = [k for b in range(meta.buckets) for k in (self.keys.vectors(model, b), self.keys.neighbours(model, b))]
            for i in range(0, len(keys), 4096):
                pipe = self.r.pipeline(transaction=False)
                for k in keys[i:i + 4096]:
                    pipe.unlink(k)
                removed += sum(int(x) for x in pipe.execute())
        removed += int(self.r.unlink(self.keys.meta(model))) + int(self.r.unlink(self.keys.manifests(model)))
        self.r.srem(self.keys.models(), model)
        return removed

    def _meta_or_raise(self, model: str) -> ModelMeta:
        meta = self.model_meta(model)
        if meta is None:
            raise LookupError(f"model namespace {model!r} does not exist in Redis (published models: {self.models()})")
        return meta

    # -- writes -------------------------------------------------------------------------------
    def _upsert(self, key_fn, model: str, user_ids, values, as_of, fixed_len: int | None) -> UpsertCounts:
        ids = _as_ids(user_ids)
        as_of = np.broadcast_to(np.asarray(as_of, dtype=np.int64), ids.shape)
        if len(values) != len(ids):
            raise ValueError(f"{len(ids)} user ids but {len(values)} values")
        counts = UpsertCounts()
        keep = newest_per_user(ids, as_of)
        counts.duplicates = len(ids) - len(keep)
        if counts.duplicates:
            ids = ids[keep]
            values = values[keep] if isinstance(values, np.ndarray) else [values[i] for i in keep]
        meta = self._meta_or_raise(model)
        plan = list(upsert_calls(ids, meta.buckets, by_tag=self.cluster))
        if not plan:
            return counts
        order = np.concatenate([pos for _, _, pos in plan])  # users in call order, key by key
        sorted_ids = ids[order]
        rows = values[order] if fixed_len is not None else None  # (n, value_size) in call order
        bounds = np.cumsum([0] + [len(pos) for _, _, pos in plan]).tolist()

        def make_chunks():  # Python objects are built one chunk at a time
            for c0 in range(0, len(plan), PIPELINE_CHUNK):
                part = plan[c0:c0 + PIPELINE_CHUNK]
                a, b = bounds[c0], bounds[c0 + len(part)]
                id_text = list(map(str, sorted_ids[a:b].tolist()))
                if rows is not None:
                    buf = rows[a:b].tobytes()
                    vals = [buf[i:i + fixed_len] for i in range(0, len(buf), fixed_len)]
                else:
                    vals = [values[i] for i in order[a:b].tolist()]
                calls, off = [], 0
                for keys_buckets, counts_k, pos in part:
                    m = len(pos)
                    pairs = [None] * (2 * m)  # HSET's argument list: id, value, id, value ...
                    pairs[0::2], pairs[1::2] = id_text[off:off + m], vals[off:off + m]
                    calls.append(([key_fn(model, k) for k in keys_buckets], (" ".join(map(str, counts_k)), *pairs)))
                    off += m
                yield calls

        for w, same, stale in self._run_chunks(UPSERT_LUA, make_chunks):
            counts.written += int(w)
            counts.unchanged += int(same)
            counts.stale += int(stale)
        return counts

    def upsert_vectors(self, model, user_ids, values, as_of) -> UpsertCounts:
        values = np.ascontiguousarray(values, dtype=np.uint8)
        if values.ndim != 2:
            raise ValueError("encoded vectors must be uint8 (n, value_size): use store.format.encode_vectors")
        return self._upsert(self.keys.vectors, model, user_ids, values, as_of, values.shape[1])

    def upsert_neighbours(self, model, user_ids, values, as_of) -> UpsertCounts:
        return self._upsert(self.keys.neighbours, model, user_ids, list(values), as_of, None)

    # -- reads --------------------------------------------------------------------------------
    def get_raw(self, kind: str, model: str, user_ids) -> list[bytes | None]:
        ids = _as_ids(user_ids)
        meta = self.model_meta(model)
        if meta is None:
            return [None] * len(ids)
        return self.raw_with(kind, meta, ids)

    def raw_with(self, kind: str, meta: ModelMeta, user_ids) -> list[bytes | None]:
        key_fn = {"v": self.keys.vectors, "n": self.keys.neighbours}[kind]
        return self.get_raw_with(key_fn, meta.model, meta.buckets, _as_ids(user_ids))

    def get_raw_with(self, key_fn, model: str, buckets: int, ids: np.ndarray) -> list[bytes | None]:
        """Values of ``ids`` (int64 (n,)) in ``buckets`` hashes, one HMGET per bucket, pipelined."""
        import redis

        if len(ids) == 1:  # the ranker's single lookup: one key, no numpy grouping
            uid = int(ids[0])
            key, fields = key_fn(model, bucket_of_one(uid, buckets)), [str(uid)]
            if self.fast_reads:
                try:
                    route = cluster_routes(self.r, [key]) if self.cluster else [(self.r, [0])]
                    return hmget_by_node(route, [(key, fields)])[0]
                except (Redirected, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass  # the reference path below retries, follows redirects
            return [self.r.hget(key, fields[0])]
        b = bucket_of(ids, buckets)
        order = np.argsort(b, kind="stable")  # users grouped by bucket
        uniq, starts = np.unique(b[order], return_index=True)
        bounds = starts.tolist() + [len(ids)]
        fields = list(map(str, ids[order].tolist()))
        commands = [(key_fn(model, k), fields[bounds[j]:bounds[j + 1]]) for j, k in enumerate(uniq.tolist())]
        replies = None
        if self.fast_reads:  # one packed buffer per node, all nodes at once (store.wire)
            try:
                routes = cluster_routes(self.r, [k for k, _ in commands]) if self.cluster else [(self.r, list(range(len(commands))))]
                replies = hmget_by_node(routes, commands)
            except (Redirected, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                # resharding, failover or a dropped connection: redis-py's pipeline retries, refreshes the slot map
                log.info("fast read failed (%s); retrying via the redis-py pipeline", type(exc).__name__)
        if replies is None:  # reference path; the cluster pipeline routes by slot and follows MOVED/ASK
            pipe = self.r.pipeline(transaction=False)
            for key, fields in commands:
                pipe.execute_command("HMGET", key, *fields)
            replies = pipe.execute()
        out: list[bytes | None] = [None] * len(ids)
        for p, v in zip(order.tolist(), chain.from_iterable(replies)):
            out[p] = v
        return out

    def get_vectors(self, model: str, user_ids) -> Lookup:
        ids = _as_ids(user_ids)
        meta = self.model_meta(model)
        if meta is None:
            return Lookup(np.zeros((len(ids), 0), np.float32), np.zeros(len(ids), bool), np.zeros(len(ids), np.int64), model)
        return self.lookup_with(meta, ids)

    def lookup_with(self, meta: ModelMeta, ids: np.ndarray) -> Lookup:
        raw = self.get_raw_with(self.keys.vectors, meta.model, meta.buckets, ids)
        vectors, found, as_of, _ = decode_vectors(raw, meta.dim)
        return Lookup(vectors, found, as_of, meta.model)

    # -- forget -------------------------------------------------------------------------------
    def delete_users(self, user_ids) -> dict[str, int]:
        ids = _as_ids(user_ids)
        targets = [("p", "positives", self.settings.buckets, lambda _m, b: self.keys.positives(b))]
        for model in self.models():
            meta = self.model_meta(model)
            if meta is not None:
                targets += [("v", model, meta.buckets, self.keys.vectors), ("n", model, meta.buckets, self.keys.neighbours)]
        out: dict[str, int] = {}
        for kind, model, buckets, key_fn in targets:
            pipe = self.r.pipeline(transaction=False)
            for bucket, pos in bucket_groups(ids, buckets):
                pipe.hdel(key_fn(model, bucket), *[str(i) for i in ids[pos].tolist()])
            out[f"{kind}:{model}"] = sum(int(x) for x in pipe.execute()) if len(ids) else 0
        return out

    # -- pointer and manifests ----------------------------------------------------------------
    def pointer(self) -> dict[str, str]:
        return _pairs(self.r.hgetall(self.keys.pointer()))

    def current(self) -> str | None:
        cur = self.r.hget(self.keys.pointer(), "current")
        return _s(cur) if cur is not None else None

    def switch_pointer(self, new_current: str) -> dict[str, str]:
        (res,) = self._run_calls(SWITCH_LUA, [([self.keys.pointer()], (new_current, _now()))])
        return _pairs(res)

    def swap_pointer(self) -> dict[str, str]:
        import redis

        try:
            (res,) = self._run_calls(SWAP_LUA, [([self.keys.pointer()], (_now(),))])
        except redis.exceptions.ResponseError as exc:
            raise LookupError(str(exc).removeprefix("ERR ").removeprefix("soe: ")) from None
        return _pairs(res)

    def record_manifest(self, model: str, name: str, manifest: dict) -> None:
        self.r.hset(self.keys.manifests(model), name, json.dumps(manifest, sort_keys=True, default=str))

    def manifests(self, model: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in _pairs(self.r.hgetall(self.keys.manifests(model))).items()}


def open_store(settings: RedisSettings) -> RedisVectorStore:
    """The store for a RedisSettings section (what the other components call)."""
    return RedisVectorStore(settings)


__all__ = ["RedisVectorStore", "connect", "open_store", "UPSERT_LUA", "FormatError"]
