"""Neighbour lists and recent positives in Redis, written and read through the store's helpers.

Keys come from `store.keys.Keys` and values from `store.format` (docs/format.md) only; this module
just batches them:

* neighbour lists: ``Keys.neighbours(model, bucket)`` hash, field = user id, value =
  `store.format.encode_neighbours` (ids best first + float32 scores, header as_of/model).
* recent positives (model independent): ``Keys.positives(bucket)`` when the store provides it, else
  ``<ns>:p:{<bucket>}`` in the same hash-tagged bucket scheme. The value reuses the neighbour-list
  encoding with model id "positives": ids = item ids (newest first) and scores = the event's age in
  hours before the header's as_of (float32 is exact for that), so one decoder reads both.

Writes are grouped by bucket (one HSET per bucket) and sent in pipelines of ``batch`` users; in a
Redis Cluster the hash tag keeps each HSET in one slot. Readers use one HMGET per bucket.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Iterable

import numpy as np

from store.format import as_of_ms, decode_neighbours, encode_neighbours
from store.keys import Keys, bucket_of

POSITIVES_MODEL = "positives"  # model id in the header of positives values


def connect(redis_settings):
    """A redis-py client (single node or cluster) for the settings (store.redis_store.connect when present)."""
    try:
        from store.redis_store import connect as store_connect
    except ImportError:  # the store's connect has not landed: the same arguments, built here
        store_connect = None
    if store_connect is not None:
        return store_connect(redis_settings)
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    common = dict(username=redis_settings.username, password=redis_settings.secret(),
                  socket_timeout=redis_settings.socket_timeout_s, ssl=redis_settings.tls)
    if redis_settings.mode == "cluster":
        nodes = [ClusterNode(h, p) for h, p in redis_settings.nodes()]
        return RedisCluster(startup_nodes=nodes, **common)
    host, port = redis_settings.nodes()[0]
    return redis.Redis(host=host, port=port, **common)


def namespace_buckets(client, redis_settings, model: str) -> int:
    """The bucket count of the model namespace (its meta hash wins over the config)."""
    raw = client.hget(Keys(redis_settings.namespace).meta(model), "buckets")
    return int(raw) if raw else redis_settings.buckets


def positives_key(keys: Keys, bucket: int) -> str:
    builder = getattr(keys, "positives", None)
    return builder(bucket) if builder is not None else f"{keys.ns}:p:{{{int(bucket)}}}"


def _write_hashes(client, key_of_bucket, buckets: int, user_ids: np.ndarray, values: Iterable[bytes],
                  batch: int, ttl_s: int | None = None) -> int:
    groups: dict[int, dict[str, bytes]] = defaultdict(dict)
    for b, uid, value in zip(bucket_of(user_ids, buckets).tolist(), np.asarray(user_ids).tolist(), values):
        groups[b][str(uid)] = value
    pipe = client.pipeline(transaction=False)
    pending = 0
    for b, mapping in groups.items():
        key = key_of_bucket(b)
        pipe.hset(key, mapping=mapping)
        if ttl_s:  # per-bucket TTL (Redis 7.0 has no per-field expiry); readers also filter by age
            pipe.expire(key, ttl_s)
        pending += len(mapping)
        if pending >= batch:
            pipe.execute()
            pipe, pending = client.pipeline(transaction=False), 0
    if pending:
        pipe.execute()
    return len(user_ids)


def _read_hashes(client, key_of_bucket, buckets: int, user_ids: np.ndarray) -> list[bytes | None]:
    user_ids = np.asarray(user_ids, dtype=np.int64)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, b in enumerate(bucket_of(user_ids, buckets).tolist()):
        groups[b].append(i)
    pipe = client.pipeline(transaction=False)
    order = list(groups.items())
    for b, rows in order:
        pipe.hmget(key_of_bucket(b), [str(int(user_ids[i])) for i in rows])
    out: list[bytes | None] = [None] * len(user_ids)
    for (b, rows), values in zip(order, pipe.execute()):
        for i, v in zip(rows, values):
            out[i] = v
    return out


def write_neighbour_lists(redis_settings, model: str, user_ids: np.ndarray, nbr_ids: np.ndarray,
                          scores: np.ndarray, as_of: datetime, batch: int = 20_000) -> int:
    """Write (n, k) neighbour arrays (padding -1 dropped) as the users' Redis neighbour lists."""
    client = connect(redis_settings)
    keys = Keys(redis_settings.namespace)
    buckets = namespace_buckets(client, redis_settings, model)
    values = (encode_neighbours(i[i >= 0], s[i >= 0], as_of, model) for i, s in zip(nbr_ids, scores))
    return _write_hashes(client, lambda b: keys.neighbours(model, b), buckets, user_ids, values, batch)


def read_neighbour_lists(client, redis_settings, model: str, user_ids) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Each user's (neighbour ids, scores), or None when the user has no list."""
    keys = Keys(redis_settings.namespace)
    buckets = namespace_buckets(client, redis_settings, model)
    raw = _read_hashes(client, lambda b: keys.neighbours(model, b), buckets, user_ids)
    return [None if v is None else decode_neighbours(v)[:2] for v in raw]


def write_positives(redis_settings, user_ids: np.ndarray, items: list[np.ndarray], ages_h: list[np.ndarray],
                    as_of: datetime, ttl_s: int | None, batch: int = 20_000) -> int:
    """Write each user's recent positive items (newest first) with their ages in hours."""
    client = connect(redis_settings)
    keys = Keys(redis_settings.namespace)
    values = (encode_neighbours(i, a, as_of, POSITIVES_MODEL) for i, a in zip(items, ages_h))
    return _write_hashes(client, lambda b: positives_key(keys, b), redis_settings.buckets, user_ids, values,
                         batch, ttl_s)


def read_positives(client, redis_settings, user_ids, now: datetime, window_hours: float) -> list[np.ndarray]:
    """Each user's positive item ids still inside ``window_hours`` before ``now`` (empty when none)."""
    keys = Keys(redis_settings.namespace)
    raw = _read_hashes(client, lambda b: positives_key(keys, b), redis_settings.buckets, user_ids)
    now_ms = as_of_ms(now)
    out = []
    for v in raw:
        if v is None:
            out.append(np.zeros(0, np.int64))
            continue
        items, ages, header = decode_neighbours(v)
        age_now = ages + (now_ms - header.as_of) / 3_600_000.0
        out.append(items[age_now < window_hours])
    return out
