"""Random SEQUENCE-contract tables (and snapshots laid out as the pipeline publishes them), with a
realistic, heavy-tailed length distribution (tests, benchmarks).

Activity in feeds and ads is heavy-tailed: most users have a handful of events, a few have
hundreds. `heavy_tailed_lengths` draws log-normal event counts (median ``median``, log-sd ``sigma``)
clipped to ``[1, max_len]``; with the defaults (median 8, sigma 1.5, N = 200) the mean is about 20
events, 90% of users have fewer than 55 and about 1.6% hit the cap of N.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import publish_dir
from core.contracts import ATTRIBUTE_COLUMNS, SEQUENCE, TS
from core.layout import Layout, epoch_ms, utc
from core.sequence_state import BASE, DELTA, LAYOUT, Layer, layer_name

EVENT_TYPES = ("impression", "click", "conversion", "view", "search")


def heavy_tailed_lengths(
    n_users: int, max_len: int = 200, *, median: float = 8.0, sigma: float = 1.5, seed: int = 0
) -> np.ndarray:
    """(n_users,) int32 event counts: log-normal, clipped to [1, max_len]."""
    rng = np.random.default_rng(seed)
    raw = np.exp(rng.normal(np.log(median), sigma, size=n_users))
    return np.clip(np.ceil(raw), 1, max_len).astype(np.int32)


def _lists(offsets: np.ndarray, values: np.ndarray, item_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, item_type))


def random_sequences(
    lengths: np.ndarray, as_of: datetime, *, seed: int = 0, n_items: int = 1_000_000, first_user: int = 1
) -> pa.Table:
    """A SEQUENCE-contract table: user i has ``lengths[i]`` events in the 30 days before ``as_of``."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    n, total = len(lengths), int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    end_ms = epoch_ms(as_of)
    ts = end_ms - rng.integers(1, 30 * 86_400_000, size=total)  # (E,)
    ts = ts[np.lexsort((ts, np.repeat(np.arange(n), lengths)))]  # oldest -> newest within each user
    columns = {
        "user_id": pa.array(np.arange(first_user, first_user + n, dtype=np.int64)),
        "as_of": pa.array(np.full(n, end_ms, dtype="datetime64[ms]"), TS),
        "n_events": pa.array(lengths.astype(np.int32)),
        "ts": _lists(offsets, ts.astype("datetime64[ms]"), TS),
        "event_type": _lists(
            offsets, np.array(EVENT_TYPES)[rng.integers(0, len(EVENT_TYPES), total)], pa.string()
        ),
        "item_id": _lists(offsets, rng.zipf(1.3, total) % n_items, pa.int64()),
    }
    for i, name in enumerate(ATTRIBUTE_COLUMNS):
        columns[name] = _lists(offsets, rng.integers(0, 10 ** (3 + i), total), pa.int64())
    return pa.Table.from_pydict(columns).cast(SEQUENCE.schema)


AS_OF = utc(datetime(2026, 1, 1, 12))  # a fixed hour-aligned as_of, so generated data is reproducible


def write_active_snapshot(layout: Layout, as_of: datetime, table: pa.Table, num_shards: int) -> list[int]:
    """Publish ``table`` as the pipeline does: ``active/as_of=T/shard=i.parquet`` + manifest; return sizes."""
    bounds = np.linspace(0, table.num_rows, num_shards + 1).astype(int)
    with publish_dir(layout.active(as_of), {"num_shards": num_shards}) as tmp:
        for i in range(num_shards):
            part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
            pq.write_table(part, tmp / layout.active_shard(as_of, i).name)
    return list(np.diff(bounds))


def write_state_snapshot(
    layout: Layout, as_of: datetime, table: pa.Table, num_files: int, deltas: Sequence[pa.Table] = ()
) -> None:
    """Publish a layered state snapshot as the pipeline does (`core.sequence_state`): ``table`` as the
    base layer in ``num_files`` part files, then each of ``deltas`` as one hourly delta layer (a user
    in a delta supersedes its older rows). The base is written ``len(deltas)`` hours before ``as_of``."""
    base_t = utc(as_of) - timedelta(hours=len(deltas))
    layers, manifest = [], {}
    with publish_dir(layout.state(as_of), manifest) as tmp:
        bounds = np.linspace(0, table.num_rows, num_files + 1).astype(int)
        (tmp / layer_name(base_t)).mkdir()
        for i in range(num_files):
            pq.write_table(
                table.slice(bounds[i], bounds[i + 1] - bounds[i]),
                tmp / layer_name(base_t) / f"part-{i:05d}.parquet",
            )
        layers.append(Layer(layer_name(base_t), BASE, base_t, table.num_rows))
        for k, delta in enumerate(deltas, start=1):
            t = base_t + timedelta(hours=k)
            (tmp / layer_name(t)).mkdir()
            pq.write_table(delta, tmp / layer_name(t) / "shard=00000.parquet")
            layers.append(Layer(layer_name(t), DELTA, t, delta.num_rows))
        users = pa.concat_tables(
            [table.select(["user_id"]), *[d.select(["user_id"]) for d in deltas]],
            promote_options="permissive",
        )
        manifest.update(
            as_of=utc(as_of).isoformat(),
            layout=LAYOUT,
            layers=[layer.to_json() for layer in layers],
            state_users=len(set(users["user_id"].to_pylist())),
        )
