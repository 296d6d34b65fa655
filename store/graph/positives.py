"""Recent positives per user (clicks, conversions), kept cheap to read when candidates are asked for.

Source: the hour's active-user sequences, ``active/as_of=<T>/shard=*.parquet`` (sequence contract).
A sequence holds the user's last N events, so for an active user it is the whole truth about the
recent window: `recent_positives` keeps the events whose type is in
``events.positive_event_types`` and whose ts lies in ``[as_of - window, as_of)``, newest
first, one entry per distinct item, at most ``graph.positives_per_user``.

`publish_recent_positives` writes them to the store (store.graph.redis_io: one small ``positives``
record per user, read with one HMGET per bucket in Redis), replacing the user's previous value unless
that one is newer; users not active this hour keep theirs, and readers drop entries that have aged out
of the window. Forgotten users (`core.forget`) are skipped, even in active shards written before the
forget (a reconcile may republish an older hour).
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import is_complete
from core.contracts import SEQUENCE
from core.forget import ForgetList
from core.layout import HOUR, HOUR_MS, Layout, utc
from core.settings import EventSettings
from store.backends import open_store
from store.base import UpsertCounts, VectorStore
from store.graph.settings import GraphSettings
from store.settings import RedisSettings


def recent_positives(
    table: pa.Table, positive_types: list[str], as_of: datetime, window_hours: float, per_user: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(user_ids (n,), items per user newest first, ages in hours per user) from sequence rows."""
    SEQUENCE.check_version(table.schema)
    user_ids = table.column("user_id").to_numpy()
    ev = table.column("event_type").combine_chunks()
    parent = pc.list_parent_indices(ev).to_numpy()
    types = pc.list_flatten(ev)
    items = pc.list_flatten(table.column("item_id").combine_chunks()).to_numpy()
    ts = pc.list_flatten(table.column("ts").combine_chunks()).cast(pa.int64()).to_numpy()
    as_of_ms = int(utc(as_of).timestamp() * 1000)
    cutoff = as_of_ms - int(window_hours * HOUR_MS)
    keep = pc.is_in(types, pa.array(positive_types)).to_numpy(zero_copy_only=False)
    keep &= (ts >= cutoff) & (ts < as_of_ms)
    parent, items, ts = parent[keep], items[keep], ts[keep]
    order = np.lexsort((-ts, parent))  # per user, newest first
    parent, items, ts = parent[order], items[order], ts[order]
    seen = np.zeros(len(items), bool)  # first (newest) occurrence of each (user, item)
    if len(items):
        o2 = np.lexsort((np.arange(len(items)), items, parent))
        first = np.ones(len(o2), bool)
        first[1:] = (parent[o2][1:] != parent[o2][:-1]) | (items[o2][1:] != items[o2][:-1])
        seen[o2[first]] = True
    parent, items, ts = parent[seen], items[seen], ts[seen]
    starts = np.searchsorted(parent, parent, side="left")
    top = (np.arange(len(parent)) - starts) < per_user
    parent, items, ts = parent[top], items[top], ts[top]
    bounds = np.searchsorted(parent, np.arange(len(user_ids) + 1))
    ages = ((as_of_ms - ts) / float(HOUR_MS)).astype(np.float32)
    spans = list(pairwise(bounds.tolist()))
    return user_ids, [items[a:b] for a, b in spans], [ages[a:b] for a, b in spans]


def active_shards(active_dir: Path) -> list[Path]:
    if not active_dir.is_dir():
        raise FileNotFoundError(
            f"no active-user sequences at {active_dir}: run the pipeline for this hour first"
        )
    if not is_complete(active_dir):
        raise FileNotFoundError(f"{active_dir} is not published (no _SUCCESS): the pipeline has not finished")
    return sorted(active_dir.glob("shard=*.parquet"))


def publish_recent_positives(
    cfg: GraphSettings,
    events: EventSettings,
    redis: RedisSettings,
    layout: Layout,
    as_of: datetime | str,
    *,
    window_hours: float | None = None,
    store: VectorStore | None = None,
) -> dict:
    """Write every active user's recent positive items at ``as_of`` to the store; returns counts.

    The upsert keeps the newest as_of per user, so rerunning an older hour never replaces newer positives.
    """
    from store.graph.redis_io import write_positives

    as_of = utc(as_of)
    window = cfg.positives_window_hours if window_hours is None else window_hours
    store = store if store is not None else open_store(redis)
    users = with_positives = 0
    counts = UpsertCounts()
    forget = ForgetList.load(layout.root)
    for shard in active_shards(layout.active(as_of)):
        table = pq.read_table(shard, columns=list(SEQUENCE.required))
        if len(forget):
            table = table.filter(pa.array(~forget.mask(table.column("user_id").to_numpy())))
        ids, items, ages = recent_positives(
            table, events.positive_event_types, as_of, window, cfg.positives_per_user
        )
        c = write_positives(redis, ids, items, ages, as_of, ttl_s=window * HOUR.total_seconds(), store=store)
        counts += UpsertCounts(**c)
        users += len(ids)
        with_positives += sum(1 for i in items if len(i))
    return {
        "as_of": as_of.isoformat(),
        "users": users,
        "users_with_positives": with_positives,
        "window_hours": window,
        **counts.as_dict(),
    }
