"""Neighbour lists and recent positives in Redis, through the store's keys, formats and backend.

* neighbour lists: `store.redis_store.RedisVectorStore.upsert_neighbours` (the store's conditional
  upsert: a list is only replaced by one with a newer-or-equal as_of) into the model namespace's
  ``Keys.neighbours(model, bucket)`` hashes; values are `store.format.encode_neighbours`. Read back
  with `store.client.LookupClient(model=...).neighbours`. The graph creates the namespace (same
  dim/dtype/buckets publish would use) when the vectors have not been published yet.
* recent positives (model independent): ``Keys.positives(bucket)`` when the store provides it, else
  ``<ns>:p:{<bucket>}`` in the same hash-tagged bucket scheme (``redis.buckets`` buckets). The value
  reuses the neighbour-list encoding with model "positives": ids = item ids (newest first), scores =
  each event's age in hours at the header's as_of (float32 is exact for that), so one decoder reads
  both. Plain HSET per bucket (the newest hour's value simply replaces the user's previous one) and a
  bucket TTL of the window; readers also drop entries older than the window.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from core.layout import HOUR_MS, utc
from store.format import as_of_ms, decode_neighbours, encode_neighbours
from store.keys import Keys

POSITIVES_MODEL = "positives"  # model id in the header of positives values


def _store(redis_settings):
    from store.redis_store import RedisVectorStore

    return RedisVectorStore(redis_settings)


def write_neighbour_lists(redis_settings, model: str, dim: int, user_ids: np.ndarray, nbr_ids: np.ndarray,
                          scores: np.ndarray, as_of: datetime) -> dict:
    """Upsert (n, k) neighbour arrays (padding -1 dropped) as the users' neighbour lists; returns counts."""
    as_of = utc(as_of)
    store = _store(redis_settings)
    if store.model_meta(model) is None:
        store.ensure_model(model, dim, redis_settings.dtype, redis_settings.buckets)
    counts = None
    for lo in range(0, len(user_ids), redis_settings.publish_batch):
        sl = slice(lo, lo + redis_settings.publish_batch)
        values = [encode_neighbours(i[i >= 0], s[i >= 0], as_of, model) for i, s in zip(nbr_ids[sl], scores[sl])]
        c = store.upsert_neighbours(model, user_ids[sl], values, as_of_ms(as_of))
        counts = c if counts is None else counts.__iadd__(c)
    return counts.as_dict() if counts is not None else {"written": 0}


def read_neighbour_lists(redis_settings, model: str, user_ids, client=None) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Each user's (neighbour ids, scores) of ``model``, or None when the user has no list."""
    from store.client import LookupClient

    client = client or LookupClient(redis_settings, model=model)
    try:
        return client.neighbours(user_ids)
    except LookupError:  # the model namespace does not exist: nobody has a list
        return [None] * len(np.atleast_1d(user_ids))


def positives_key_fn(namespace: str):
    keys = Keys(namespace)
    builder = getattr(keys, "positives", None)
    if builder is not None:
        return lambda _model, bucket: builder(bucket)
    return lambda _model, bucket: f"{keys.ns}:p:{{{int(bucket)}}}"


def write_positives(redis_settings, user_ids: np.ndarray, items: list[np.ndarray], ages_h: list[np.ndarray],
                    as_of: datetime, ttl_s: int | None, batch: int = 20_000) -> int:
    """Write each user's recent positive items (newest first) with their ages in hours."""
    from store.redis_store import bucket_groups

    as_of = utc(as_of)
    store = _store(redis_settings)
    key_fn = positives_key_fn(redis_settings.namespace)
    ids = np.asarray(user_ids, np.int64)
    pipe, pending = store.r.pipeline(transaction=False), 0
    for bucket, pos in bucket_groups(ids, redis_settings.buckets, max_size=batch):
        key = key_fn(None, bucket)
        pipe.hset(key, mapping={str(int(ids[p])): encode_neighbours(items[p], ages_h[p], as_of, POSITIVES_MODEL)
                                for p in pos.tolist()})
        if ttl_s:  # per-bucket TTL (Redis 7.0 has no per-field expiry)
            pipe.expire(key, ttl_s)
        pending += len(pos)
        if pending >= batch:
            pipe.execute()
            pipe, pending = store.r.pipeline(transaction=False), 0
    if pending:
        pipe.execute()
    return len(ids)


def read_positives(redis_settings, user_ids, window_hours: float, now: datetime | None = None,
                   store=None) -> list[np.ndarray]:
    """Each user's positive item ids younger than ``window_hours`` at ``now`` (default: at the value's as_of)."""
    store = store or _store(redis_settings)
    ids = np.atleast_1d(np.asarray(user_ids, np.int64))
    raw = store.get_raw_with(positives_key_fn(redis_settings.namespace), None, redis_settings.buckets, ids)
    out = []
    for v in raw:
        if v is None:
            out.append(np.zeros(0, np.int64))
            continue
        items, ages, header = decode_neighbours(v)
        if now is not None:
            ages = ages + (as_of_ms(utc(now)) - header.as_of) / float(HOUR_MS)
        out.append(items[ages < window_hours])
    return out
