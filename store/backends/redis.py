"""The Redis backend: one redis-server (`redis.Redis`) or Redis Cluster (`RedisCluster`).

Layout (store.keys, docs/format.md): per model namespace, users are spread over small hashes
("buckets") that stay listpack-encoded; positives use ``redis.buckets`` buckets of their own. Writes
of every kind go through one function of the Redis Functions library ``soe`` (store.functions),
``FCALL soe_upsert``: one call takes up to ~1000 users spread over several buckets, checks every
value, and writes each one unless the stored one has a newer as_of (bytes 5-12 of every value). In
a cluster the buckets of one call share a hash tag (one slot); a pipeline holds many calls, and
redis-py's cluster pipeline groups them by node, so a batch costs one round trip per node. The
library is loaded by an admin (`soe redis functions load`); the store checks once that every node
holds its version and loads it itself only where its user may (a development server's default user).

Reads group the requested users by bucket, one HMGET per bucket; a single user is one HGET.
``redis.read_path`` chooses how they are sent, once, at construction: ``packed`` (the default) packs
them into one RESP buffer per node (store.wire) and falls back to the redis-py pipeline when a
cluster node answers MOVED/ASK or a connection drops; ``pipeline`` always uses redis-py's pipeline
(the reference path). Both return the same bytes (tests/test_store_read_paths.py). The pointer
switch and rollback are one-key functions (atomic). In a cluster, commands and every pipeline
retry through a master's failover for ``redis.failover_retry_s`` (`ride_failover`;
tests/test_rehearsal_redis.py kills masters of a cluster with replicas). Model versions read back
from the store (the pointer, the set of models) are checked before a key is built from them.
Nothing here logs secrets.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any

import numpy as np

from store import functions
from store.base import (
    POSITIVES,
    Batch,
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
)
from store.functions import SWAP, SWITCH, UPSERT, Limits
from store.keys import SLOT_TAGS, Keys, bucket_of, bucket_of_one, check_name
from store.settings import ReadPath, RedisSettings
from store.wire import Redirected, cluster_routes, hmget_by_node

log = logging.getLogger("soe.store")

MAX_PER_CALL = 1000  # users per function call (Lua's unpack() limit is ~8000 arguments)
PIPELINE_CHUNK = 16  # function calls per pipeline round trip (~16k users); two round trips are in flight

KeyFn = Callable[[int], str]  # bucket -> key
Call = tuple[list[str], tuple]  # (keys, args) of one FCALL


class FcallKeys:
    """redis-py's cluster client finds FCALL's keys by asking a server (``COMMAND GETKEYS`` with every
    argument, values included: a round trip per call); they are simply the ``numkeys`` arguments after
    the function name. Wraps the client's command parser; every other command goes to it unchanged."""

    def __init__(self, parser: Any):
        self._parser = parser

    def get_keys(self, redis_conn: Any, *args: Any) -> Any:
        if len(args) >= 3 and str(args[0]).upper() in ("FCALL", "FCALL_RO"):
            return list(args[3 : 3 + int(args[2])]) or None
        return self._parser.get_keys(redis_conn, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def ride_failover(fn: Callable[[], Any], seconds: float, what: str = "command") -> Any:
    """``fn()``, retried with backoff for up to ``seconds`` while the cluster answers with a connection
    error, a timeout, CLUSTERDOWN or an uncovered slot: a master's failover (its replica is promoted
    after cluster-node-timeout plus an election, ~1-3 s for a 1 s timeout). redis-py's cluster client
    refreshes its slot map after each such error but retries at once, so its own retries are spent
    within milliseconds, long before the replica takes over. Every command the store sends is safe to
    repeat: reads, and writes that are idempotent (the conditional upsert, HSET of the same fields)."""
    from redis.cluster import RedisCluster

    deadline = time.monotonic() + seconds
    pause = 0.05
    while True:
        try:
            return fn()
        except RedisCluster.ERRORS_ALLOW_RETRY as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            log.warning("cluster %s failed (%s); retrying for a failover", what, type(exc).__name__)
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)


@functools.cache
def _failover_cluster_class() -> type:
    from redis.cluster import RedisCluster

    class FailoverCluster(RedisCluster):
        """RedisCluster whose single commands ride through a failover (`ride_failover`)."""

        failover_s = 15.0

        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            run = super().execute_command
            return ride_failover(lambda: run(*args, **kwargs), self.failover_s, _s(args[0]) if args else "")

    return FailoverCluster


def connect(s: RedisSettings) -> Any:
    """A redis-py client for the settings: `redis.Redis` (single) or `redis.cluster.RedisCluster`."""
    import redis

    if s.mode == "memory":
        raise ValueError("redis.mode is 'memory': there is no Redis server to connect to")
    kw: dict[str, Any] = {
        "username": s.username,
        "password": s.secret(),
        "max_connections": s.max_connections,
        "socket_timeout": s.socket_timeout_s,
        "socket_connect_timeout": s.socket_timeout_s,
    }
    if s.tls:
        kw |= {
            "ssl": True,
            "ssl_ca_certs": s.tls_ca_cert,
            "ssl_certfile": s.tls_cert,
            "ssl_keyfile": s.tls_key,
        }
    if s.mode == "cluster":
        from redis.cluster import ClusterNode

        client = _failover_cluster_class()(startup_nodes=[ClusterNode(h, p) for h, p in s.nodes()], **kw)
        client.failover_s = s.failover_retry_s
        client.commands_parser = FcallKeys(client.commands_parser)  # pipelines share it
        return client
    return redis.Redis(host=s.host, port=s.port, **kw)


def _s(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _pairs(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return {_s(k): _s(v) for k, v in flat.items()}
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def bucket_groups(
    user_ids: np.ndarray, buckets: int, max_size: int = MAX_PER_CALL
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (bucket, positions) of the users, grouped by bucket, at most ``max_size`` positions each."""
    b = bucket_of(user_ids, buckets)
    order = np.argsort(b, kind="stable")
    sb = b[order]
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]]) if len(sb) else np.array([], np.int64)
    ends = np.r_[starts[1:], len(sb)]
    for s, e in zip(starts.tolist(), ends.tolist()):
        for c in range(s, e, max_size):
            yield int(sb[s]), order[c : min(e, c + max_size)]


def upsert_calls(
    user_ids: np.ndarray, buckets: int, by_tag: bool, max_users: int = MAX_PER_CALL
) -> Iterator[tuple[list[int], list[int], np.ndarray]]:
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
    keys: list[int] = []
    counts: list[int] = []
    lo, size = starts[0], 0
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


class RedisVectorStore(VectorStore):
    """`VectorStore` on one redis-server or a Redis Cluster (see the module docstring)."""

    def __init__(self, settings: RedisSettings, client: Any = None):
        self.settings = settings
        self.keys = Keys(settings.namespace)
        # redis.Redis or RedisCluster (redis-py's annotations mix sync and async return types)
        self.r: Any = client if client is not None else connect(settings)
        self.cluster = settings.mode == "cluster"
        self._read_path: ReadPath = settings.read_path
        self.limits = Limits.of(settings)
        self._functions_checked = False  # every node holds the library's version (checked on first write)
        self._functions_lock = threading.Lock()

    def __repr__(self) -> str:  # no password here, ever
        s = self.settings
        return f"RedisVectorStore(mode={s.mode}, nodes={s.nodes()}, ns={self.keys.ns})"

    @property
    def read_path(self) -> ReadPath:
        """How batched reads are sent: ``redis.read_path``, fixed for the store's life."""
        return self._read_path

    def ping(self) -> bool:
        return bool(self.r.ping())

    def write_order(self, model: str | None, user_ids) -> np.ndarray:
        """By bucket, so that each batch holds whole buckets: one HMGET and one HSET per bucket. Cut in
        id order, every batch touches most buckets for a user or two each (10M users in 156k buckets:
        the 9M lists of an hour took 159 s that way, 87-92 s in this order)."""
        meta = None if model is None else self.model_meta(model)
        buckets = meta.buckets if meta is not None else self.settings.buckets
        return np.argsort(bucket_of(as_ids(user_ids), buckets), kind="stable")

    def _key_fn(self, kind: Kind, model: str | None) -> KeyFn:
        if kind == "positives":
            return self.keys.positives
        assert model is not None  # check_kind
        builder = self.keys.vectors if kind == "vectors" else self.keys.neighbours
        return lambda b: builder(model, b)

    # -- the function library -----------------------------------------------------------------
    def load_functions(self) -> list[str]:
        """FUNCTION LOAD REPLACE the ``soe`` library with this store's limits on every node (admin only)."""
        nodes = functions.load(self.r, self.limits)
        self._functions_checked = True
        return nodes

    load_scripts = load_functions  # the name of the EVALSHA era (bench/store.py)

    def ensure_functions(self, *, recheck: bool = False) -> None:
        """Check once that every node holds the library's version; load it where missing, if this user
        may (else PermissionError: an admin runs `soe redis functions load`)."""
        with self._functions_lock:
            if recheck or not self._functions_checked:
                functions.ensure(self.r, self.limits)
                self._functions_checked = True

    def _run_calls(self, function: str, calls: list[Call]) -> list:
        """FCALL the function once per (keys, args), pipelined (see `_run_chunks`)."""
        chunks = [calls[i : i + PIPELINE_CHUNK] for i in range(0, len(calls), PIPELINE_CHUNK)]
        return self._run_chunks(function, lambda: iter(chunks))

    def _run_chunks(self, function: str, make_chunks: Callable[[], Iterator[list[Call]]]) -> list:
        """FCALL every call of every chunk; after "Function not found" (a node restarted without its
        functions, or a new master), check the nodes again and rerun once (the upsert is idempotent).

        Each chunk (``PIPELINE_CHUNK`` calls) is one pipeline round trip; two are in flight on two
        connections while the caller's generator builds the next, so the server always has work
        queued and the client holds the Python objects of only ~3 chunks at a time.
        """
        import redis

        self.ensure_functions()
        for attempt in range(2):
            try:
                replies: list = []
                with ThreadPoolExecutor(max_workers=2) as pool:
                    inflight: deque = deque()
                    for chunk in make_chunks():
                        inflight.append(pool.submit(self._execute, function, chunk))
                        if len(inflight) > 2:
                            replies.extend(inflight.popleft().result())
                    while inflight:
                        replies.extend(inflight.popleft().result())
                return replies
            except redis.exceptions.ResponseError as exc:
                if attempt or not functions.function_missing(exc):
                    raise
                self.ensure_functions(recheck=True)
        raise AssertionError("unreachable")

    def _execute(self, function: str, calls: list[Call]) -> list:
        return self._pipeline(
            (("FCALL", function, len(keys), *keys, *args) for keys, args in calls), f"FCALL {function}"
        )

    def _pipeline(self, commands: Iterable[tuple], what: str) -> list:
        """The replies of ``commands`` (raw command tuples), sent as one non-transactional pipeline; in a
        cluster retried through a master's failover for ``redis.failover_retry_s`` (`ride_failover`).
        Every command the store pipelines is safe to repeat: the idempotent functions, HMGET, PEXPIRE,
        HDEL and UNLINK (a repeated HDEL/UNLINK may report fewer removals, never remove more)."""
        commands = list(commands)

        def send() -> list:
            pipe = self.r.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()

        return ride_failover(send, self.settings.failover_retry_s, what) if self.cluster else send()

    # -- records: writes ----------------------------------------------------------------------
    def upsert(
        self, kind: Kind, model: str | None, user_ids, values: Values, as_of, *, ttl_s: float | None = None
    ) -> UpsertCounts:
        batch, meta = self.checked_upsert(kind, model, user_ids, values, as_of)
        counts = UpsertCounts(duplicates=batch.duplicates)
        buckets = self.settings.buckets if meta is None else meta.buckets
        plan = list(upsert_calls(batch.ids, buckets, by_tag=self.cluster))
        if not plan:
            return counts
        key_fn = self._key_fn(kind, model)
        for w, same, stale in self._run_chunks(UPSERT, lambda: self._upsert_chunks(plan, batch, key_fn)):
            counts.written += int(w)
            counts.unchanged += int(same)
            counts.stale += int(stale)
        if ttl_s is not None:
            self._expire(sorted({k for keys, _, _ in plan for k in keys}), key_fn, ttl_s)
        return counts

    @staticmethod
    def _upsert_chunks(
        plan: list[tuple[list[int], list[int], np.ndarray]], batch: Batch, key_fn: KeyFn
    ) -> Iterator[list[Call]]:
        """The FCALL calls of ``plan``, ``PIPELINE_CHUNK`` at a time (Python objects built per chunk)."""
        order = np.concatenate([pos for _, _, pos in plan])  # users in call order, key by key
        sorted_ids = batch.ids[order]
        # (n, size) rows in call order, or None for bytes values
        rows = batch.values[order] if isinstance(batch.values, np.ndarray) else None
        bounds = np.cumsum([0] + [len(pos) for _, _, pos in plan]).tolist()
        for c0 in range(0, len(plan), PIPELINE_CHUNK):
            part = plan[c0 : c0 + PIPELINE_CHUNK]
            a, b = bounds[c0], bounds[c0 + len(part)]
            id_text = list(map(str, sorted_ids[a:b].tolist()))
            vals: list[bytes]
            if rows is not None:
                size = rows.shape[1]
                buf = rows[a:b].tobytes()
                vals = [buf[i : i + size] for i in range(0, len(buf), size)]
            else:
                vals = [batch.value(i) for i in order[a:b].tolist()]
            calls: list[Call] = []
            off = 0
            for keys_buckets, counts_k, pos in part:
                m = len(pos)
                pairs: list[str | bytes] = [b""] * (2 * m)  # HSET's argument list: id, value, id, value ...
                pairs[0::2], pairs[1::2] = id_text[off : off + m], vals[off : off + m]
                calls.append(([key_fn(k) for k in keys_buckets], (" ".join(map(str, counts_k)), *pairs)))
                off += m
            yield calls

    def _expire(self, buckets: list[int], key_fn: KeyFn, ttl_s: float) -> None:
        """PEXPIRE every touched bucket (Redis 7.0 has no per-field expiry)."""
        ms = max(1, round(ttl_s * 1000))
        for i in range(0, len(buckets), 4096):
            self._pipeline((("PEXPIRE", key_fn(b), ms) for b in buckets[i : i + 4096]), "PEXPIRE pipeline")

    # -- records: reads -----------------------------------------------------------------------
    def get(
        self, kind: Kind, model: str | None, user_ids, *, meta: ModelMeta | None = None
    ) -> list[bytes | None]:
        check_kind(kind, model)
        ids = as_ids(user_ids)
        if model is None:
            buckets = self.settings.buckets
        else:
            meta = meta if meta is not None and meta.model == model else self.model_meta(model)
            if meta is None:
                return [None] * len(ids)
            buckets = meta.buckets
        return self.read_buckets(self._key_fn(kind, model), buckets, ids)

    def read_buckets(self, key_fn: KeyFn, buckets: int, ids: np.ndarray) -> list[bytes | None]:
        """Values of ``ids`` (int64 (n,)) in ``buckets`` hashes: one HMGET per bucket, sent by `read_path`."""
        import redis

        fallback = (Redirected, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        if len(ids) == 1:  # the ranker's single lookup: one key, no numpy grouping
            uid = int(ids[0])
            key, field = key_fn(bucket_of_one(uid, buckets)), str(uid)
            if self._read_path == "packed":
                try:
                    route = cluster_routes(self.r, [key]) if self.cluster else [(self.r, [0])]
                    return hmget_by_node(route, [(key, [field])])[0]
                except fallback:
                    pass  # the reference path below retries, follows redirects
            return [self.r.hget(key, field)]
        b = bucket_of(ids, buckets)
        order = np.argsort(b, kind="stable")  # users grouped by bucket
        uniq, starts = np.unique(b[order], return_index=True)
        bounds = starts.tolist() + [len(ids)]
        fields = list(map(str, ids[order].tolist()))
        commands = [(key_fn(k), fields[bounds[j] : bounds[j + 1]]) for j, k in enumerate(uniq.tolist())]
        replies = None
        if self._read_path == "packed":  # one packed buffer per node, all nodes at once (store.wire)
            try:
                routes = (
                    cluster_routes(self.r, [k for k, _ in commands])
                    if self.cluster
                    else [(self.r, list(range(len(commands))))]
                )
                replies = hmget_by_node(routes, commands)
            except fallback as exc:
                # resharding, failover or a dropped connection: redis-py's pipeline retries and
                # refreshes the slot map
                log.info("packed read failed (%s); retrying via the redis-py pipeline", type(exc).__name__)
        if replies is None:  # reference path; the cluster pipeline routes by slot and follows MOVED/ASK
            replies = self._pipeline((("HMGET", key, *flds) for key, flds in commands), "HMGET pipeline")
        out: list[bytes | None] = [None] * len(ids)
        for p, v in zip(order.tolist(), chain.from_iterable(replies)):
            out[p] = v
        return out

    # -- records: forget ----------------------------------------------------------------------
    def delete_users(self, user_ids) -> dict[str, int]:
        ids = as_ids(user_ids)
        targets: list[tuple[str, KeyFn, int]] = [
            (f"p:{POSITIVES}", self.keys.positives, self.settings.buckets)
        ]
        for model in self.models():
            meta = self.model_meta(model)
            if meta is not None:
                targets += [
                    (f"v:{model}", self._key_fn("vectors", model), meta.buckets),
                    (f"n:{model}", self._key_fn("neighbours", model), meta.buckets),
                ]
        out: dict[str, int] = {}
        for name, key_fn, buckets in targets:
            if not len(ids):
                out[name] = 0
                continue
            deletes = (
                ("HDEL", key_fn(bucket), *[str(i) for i in ids[pos].tolist()])
                for bucket, pos in bucket_groups(ids, buckets)
            )
            out[name] = sum(int(x) for x in self._pipeline(deletes, "HDEL pipeline"))
        return out

    # -- model namespaces ---------------------------------------------------------------------
    def read_meta(self, model: str) -> dict[str, str]:
        return _pairs(self.r.hgetall(self.keys.meta(model)))

    def write_meta(self, model: str, fields: dict[str, str], *, if_absent: bool = False) -> None:
        key = self.keys.meta(model)
        if if_absent:
            for name, value in fields.items():
                self.r.hsetnx(key, name, value)  # concurrent creators agree on the first one's shape
        elif fields:
            self.r.hset(key, mapping=dict(fields))
        self.r.sadd(self.keys.models(), model)

    def models(self) -> list[str]:
        where = f"the store's set of models ({self.keys.models()})"
        return sorted(stored_model(_s(m), where) for m in self.r.smembers(self.keys.models()))

    def drop_model(self, model: str) -> int:
        meta = self.model_meta(model)
        removed = 0
        if meta is not None:
            keys = [
                k
                for b in range(meta.buckets)
                for k in (self.keys.vectors(model, b), self.keys.neighbours(model, b))
            ]
            for i in range(0, len(keys), 4096):
                unlinks = (("UNLINK", k) for k in keys[i : i + 4096])
                removed += sum(int(x) for x in self._pipeline(unlinks, "UNLINK pipeline"))
        removed += int(self.r.unlink(self.keys.meta(model))) + int(self.r.unlink(self.keys.manifests(model)))
        self.r.srem(self.keys.models(), model)
        return removed

    # -- manifests ----------------------------------------------------------------------------
    def record_manifest(self, model: str, name: str, manifest: dict) -> None:
        self.r.hset(self.keys.manifests(model), name, json.dumps(manifest, sort_keys=True, default=str))

    def manifests(self, model: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in _pairs(self.r.hgetall(self.keys.manifests(model))).items()}

    # -- the current-model pointer ------------------------------------------------------------
    def pointer(self) -> dict[str, str]:
        return checked_pointer(_pairs(self.r.hgetall(self.keys.pointer())))

    def current(self) -> str | None:
        cur = self.r.hget(self.keys.pointer(), "current")  # one field: the lookup client's refresh
        if cur is None:
            return None
        return stored_model(_s(cur), f"the store's current-model pointer ({self.keys.pointer()} current)")

    def switch_pointer(self, new_current: str) -> dict[str, str]:
        check_name("model version", new_current)
        (res,) = self._run_calls(SWITCH, [([self.keys.pointer()], (new_current, now_text()))])
        return checked_pointer(_pairs(res))

    def swap_pointer(self) -> dict[str, str]:
        import redis

        try:
            (res,) = self._run_calls(SWAP, [([self.keys.pointer()], (now_text(),))])
        except redis.exceptions.ResponseError as exc:
            if not str(exc).endswith("no previous model to roll back to"):
                raise
            raise LookupError("no previous model to roll back to") from None
        return checked_pointer(_pairs(res))


__all__ = ["RedisVectorStore", "bucket_groups", "connect", "ride_failover", "upsert_calls"]
