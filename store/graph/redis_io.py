"""Neighbour lists and recent positives in the store, through the `store.base.VectorStore` interface.

* neighbour lists: records of kind ``neighbours`` in the model's namespace, conditionally upserted
  (a list is only replaced by one with a newer-or-equal as_of); values are
  `store.format.encode_neighbours`. Read back with `store.client.LookupClient(model=...).neighbours`.
  The graph creates the namespace (same dim/dtype/buckets publish would use) when the vectors have
  not been published yet.
* recent positives (model independent): records of kind ``positives``, upserted with the same rule
  (the newest hour's value replaces the user's previous one; a late rerun of an older hour does not),
  with a TTL of the window. The value reuses the neighbour-list encoding with model "positives":
  ids = item ids (newest first), scores = each event's age in hours at the header's as_of (float32 is
  exact for that), so one decoder reads both. Readers also drop entries older than the window.

The store is ``open_store(redis_settings)`` unless one is given.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from core.layout import HOUR_MS, epoch_ms, utc
from store.backends import open_store
from store.base import UpsertCounts, VectorStore, as_ids
from store.format import decode_neighbours, encode_neighbour_table, encode_neighbours
from store.settings import RedisSettings

if TYPE_CHECKING:
    from store.client import LookupClient

POSITIVES_MODEL = "positives"  # model id in the header of positives values


def write_neighbour_lists(
    redis_settings: RedisSettings,
    model: str,
    dim: int,
    user_ids: np.ndarray,
    nbr_ids: np.ndarray,
    scores: np.ndarray,
    as_of: datetime,
    *,
    store: VectorStore | None = None,
) -> dict[str, int]:
    """Upsert (n, k) neighbour arrays (padding -1 dropped) as the users' neighbour lists; returns counts."""
    as_of = utc(as_of)
    store = store if store is not None else open_store(redis_settings)
    if store.model_meta(model) is None:  # the vectors were not published (yet): create the namespace
        store.ensure_model(model, dim, redis_settings.dtype, redis_settings.buckets)
    counts = UpsertCounts()
    stamp = epoch_ms(as_of)
    for lo in range(0, len(user_ids), redis_settings.publish_batch):
        sl = slice(lo, lo + redis_settings.publish_batch)
        ids = user_ids[sl]
        for at, rows in encode_neighbour_table(nbr_ids[sl], scores[sl], as_of, model):  # one per length
            counts += store.upsert("neighbours", model, ids[at], rows, stamp)
    return counts.as_dict()


def read_neighbour_lists(
    redis_settings: RedisSettings, model: str, user_ids, client: LookupClient | None = None
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Each user's (neighbour ids, scores) of ``model``, or None when the user has no list."""
    from store.client import LookupClient

    client = client or LookupClient(redis_settings, model=model)
    try:
        return client.neighbours(user_ids)
    except LookupError:  # the model namespace does not exist: nobody has a list
        return [None] * len(as_ids(user_ids))


def write_positives(
    redis_settings: RedisSettings,
    user_ids: np.ndarray,
    items: list[np.ndarray],
    ages_h: list[np.ndarray],
    as_of: datetime,
    ttl_s: float | None,
    batch: int = 20_000,
    *,
    store: VectorStore | None = None,
) -> dict[str, int]:
    """Upsert each user's recent positive items (newest first) with their ages in hours; returns counts."""
    as_of = utc(as_of)
    store = store if store is not None else open_store(redis_settings)
    ids = as_ids(user_ids)
    counts = UpsertCounts()
    for lo in range(0, len(ids), batch):
        values = [
            encode_neighbours(items[p], ages_h[p], as_of, POSITIVES_MODEL)
            for p in range(lo, min(lo + batch, len(ids)))
        ]
        counts += store.upsert("positives", None, ids[lo : lo + batch], values, epoch_ms(as_of), ttl_s=ttl_s)
    return counts.as_dict()


def read_positives(
    redis_settings: RedisSettings,
    user_ids,
    window_hours: float,
    now: datetime | None = None,
    store: VectorStore | None = None,
) -> list[np.ndarray]:
    """Each user's positive item ids younger than ``window_hours`` at ``now`` (default: the value's as_of)."""
    store = store if store is not None else open_store(redis_settings)
    out = []
    for v in store.get("positives", None, as_ids(user_ids)):
        if v is None:
            out.append(np.zeros(0, np.int64))
            continue
        items, ages, header = decode_neighbours(v)
        if now is not None:
            ages = ages + (epoch_ms(utc(now)) - header.as_of) / float(HOUR_MS)
        out.append(items[ages < window_hours])
    return out
