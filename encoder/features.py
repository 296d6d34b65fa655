"""Featurisation: SEQUENCE-contract rows (raw ids, oldest -> newest) -> a `SequenceBatch` of tensors.

Everything is vectorised over the flattened Arrow lists (numpy, no per-event Python loop), so
inference can featurise millions of users per worker.

* **Truncation / padding**: keep the newest ``cfg.max_len`` events and pad on the *left*, so the
  newest event is at position ``T-1`` (see `encoder.model`).
* **Hashing (no vocabulary)**: every raw int64 id goes through ``cfg.n_hashes`` independent
  splitmix64 hash functions (salted by table name and ``cfg.hash_seed``) into buckets
  ``1 .. buckets-1`` of that table; bucket 0 means padding / missing value (null attribute). The
  model sums the rows of all hash functions ("hash embedding"): two ids collide completely only if
  they collide under every function, probability ~1/buckets^H. With 2^18 item buckets and H=2 that
  is ~2^-36 per pair, so a catalogue of 10^8+ ids needs no vocabulary and new ids simply work.
* **Action type**: index into ``cfg.actions`` + 1; 0 = padding, ``len+1`` = an unknown type.
* **Time gap (ATRank)**: bucket = 1 + floor(log2(1 + gap seconds)), gap = as_of - ts (clipped at 0,
  capped at the last bucket). Time comes from ``as_of``, never the wall clock.
* **Gap to the event before** (TiSASRec-style interval, the session structure): the same log2 buckets
  of ts_i - ts_(i-1), read from the row's whole list (so the oldest kept event still sees the event
  before it); ``n_time_buckets`` = no event before it in the row. It does not depend on ``as_of``,
  and is computed only where the model uses it (``cfg.uses_event_gap``; else all "none").
* **Idle time**: the bucket of the newest event's gap to ``as_of`` (`SequenceBatch.idle_bucket`): how
  long the user has been idle when the vector is computed (the model uses it with ``cfg.uses_idle``).
* **Context**: hour of day and weekday (Monday = 0) of ``as_of``, one per user, fed beside the
  sequence.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields, replace
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from core.contracts import TS
from core.hashing import GOLDEN, as_uint64, mix64
from core.layout import DAY_MS, HOUR_MS, epoch_ms
from encoder.config import ModelConfig


@dataclass
class SequenceBatch:
    user_id: torch.Tensor  # (B,) int64 raw user ids
    as_of: torch.Tensor  # (B,) int64 ms UTC: the time the vectors are for
    lengths: torch.Tensor  # (B,) int64 real events kept (<= T)
    attrs: torch.Tensor  # (B, T, A, H) int64 hashed bucket of each table (item first), 0 = pad/missing
    action: torch.Tensor  # (B, T) int64 action-type index, 0 = pad
    time_bucket: torch.Tensor  # (B, T) int64 log2 time-gap bucket, 0 = pad
    gap_bucket: torch.Tensor  # (B, T) int64 log2 bucket of the gap to the event before, 0 = pad, n = none
    ts: torch.Tensor  # (B, T) int64 ms event time, 0 = pad (training targets use it)
    item_id: torch.Tensor  # (B, T) int64 raw item id, -1 = pad (targets, history exclusion)
    hour: torch.Tensor  # (B,) int64 hour of day of as_of
    weekday: torch.Tensor  # (B,) int64 weekday of as_of, Monday = 0

    @property
    def idle_bucket(self) -> torch.Tensor:
        """(B,) log2 bucket of as_of - the newest event: how long the user has been idle when the vector
        is computed (0 for a row without events)."""
        return self.time_bucket[:, -1]

    @property
    def valid(self) -> torch.Tensor:
        """(B, T) bool: True at real events (left padding)."""
        T = self.action.shape[1]
        return torch.arange(T, device=self.action.device)[None, :] >= (T - self.lengths)[:, None]

    def __len__(self) -> int:
        return self.user_id.shape[0]

    def _map(self, fn) -> SequenceBatch:
        return SequenceBatch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> SequenceBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SequenceBatch:
        return self._map(lambda t: t.pin_memory())

    def select(self, idx) -> SequenceBatch:
        """Rows ``idx``, with the left padding trimmed to the longest selected row."""
        out = self._map(lambda t: t[idx])
        T = max(int(out.lengths.max()) if len(out) else 1, 1)
        per_pos = ("attrs", "action", "time_bucket", "gap_bucket", "ts", "item_id")
        return replace(out, **{name: getattr(out, name)[:, -T:] for name in per_pos})


def hour_of_day(ms):
    """Hour of day (0-23, UTC) of epoch-ms times, numpy array or tensor alike."""
    return (ms // HOUR_MS) % 24


def weekday_of(ms):
    """Weekday (Monday = 0, UTC) of epoch-ms times, numpy array or tensor alike (1970-01-01: a Thursday)."""
    return (ms // DAY_MS + 3) % 7


def _salt(table: str, seed: int) -> np.uint64:
    return np.uint64((zlib.crc32(table.encode()) << 32 | (seed & 0xFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF)


def hash_ids(ids: np.ndarray, present: np.ndarray | None, table: str, cfg: ModelConfig) -> np.ndarray:
    """(N,) int64 raw ids -> (N, H) int64 buckets in [1, buckets-1]; 0 where ``present`` is False."""
    x = as_uint64(ids)
    salt, buckets = _salt(table, cfg.hash_seed), np.uint64(cfg.buckets(table) - 1)
    with np.errstate(over="ignore"):
        cols = [mix64(x + salt + np.uint64(GOLDEN) * np.uint64(h + 1)) % buckets for h in range(cfg.n_hashes)]
    out = np.stack(cols, axis=1).astype(np.int64) + 1  # (N, H)
    if present is not None:
        out[~np.asarray(present, dtype=bool)] = 0
    return out


def time_buckets(gap_ms, n_buckets: int):
    """ATRank log2 buckets of a time gap in ms: 1 + floor(log2(1 + seconds)), capped at n_buckets-1.
    A numpy array or a tensor alike (training draws idle times as tensors on the device)."""
    if isinstance(gap_ms, torch.Tensor):
        secs = gap_ms.long().clamp(min=0) // 1000 + 1  # >= 1
        _, exp = torch.frexp(secs.double())  # secs = m * 2^exp, m in [0.5, 1) -> floor(log2) = exp-1
        return exp.long().clamp(max=n_buckets - 1)  # = 1 + floor(log2(secs)), capped
    secs = np.maximum(np.asarray(gap_ms, dtype=np.int64), 0) // 1000 + 1
    _, exp = np.frexp(secs.astype(np.float64))
    return np.minimum(exp.astype(np.int64), n_buckets - 1)


def hash_items(
    item_ids: np.ndarray, cfg: ModelConfig, attributes: dict[str, np.ndarray] | None = None
) -> torch.Tensor:
    """Candidate items -> (N, A, H) bucket indexes for `UserEncoder.item_vectors`; missing attributes = 0."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    cols = [hash_ids(item_ids, None, "item_id", cfg)]
    for name in cfg.attributes:
        values = None if attributes is None else attributes.get(name)
        if values is None:
            cols.append(np.zeros((len(item_ids), cfg.n_hashes), dtype=np.int64))
        else:
            v = np.asarray(values)
            present = v >= 0 if v.dtype.kind == "i" else ~np.isnan(v)
            cols.append(hash_ids(np.where(present, v, 0).astype(np.int64), present, name, cfg))
    return torch.from_numpy(np.stack(cols, axis=1))  # (N, A, H)


def _list_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.offsets.to_numpy().astype(np.int64), arr.values


def _to_ms(values) -> np.ndarray:
    """Timestamps (any unit or zone) as int64 epoch milliseconds, null as 0."""
    return np.array(pc.fill_null(values.cast(TS), 0).cast(pa.int64()).to_numpy(), dtype=np.int64)


def _as_of_ms(table: pa.Table, as_of) -> np.ndarray:
    n = table.num_rows
    if as_of is None:
        if "as_of" not in table.column_names:
            raise ValueError("featurize: the table has no as_of column; pass as_of=")
        return _to_ms(table["as_of"].combine_chunks())
    if isinstance(as_of, (datetime, str)):
        return np.full(n, epoch_ms(as_of), dtype=np.int64)
    return np.broadcast_to(np.asarray(as_of, dtype=np.int64), (n,)).copy()


def featurize(table: pa.Table, cfg: ModelConfig, as_of=None, pad_to: int | None = None) -> SequenceBatch:
    """SEQUENCE-contract rows -> SequenceBatch (newest ``max_len`` events, left-padded).

    ``as_of`` (datetime, ms int or per-row ms array) overrides the table's ``as_of`` column; the
    time-gap buckets and context are computed from it. ``pad_to`` fixes T (default: longest row).
    Missing attribute columns and null attribute values hash to bucket 0 (contribute nothing).
    """
    B = table.num_rows
    as_of_ms = _as_of_ms(table, as_of)  # (B,)
    offsets, item_values = _list_parts(table["item_id"])
    n = np.diff(offsets)  # (B,) events per row
    L = np.minimum(n, cfg.max_len)  # kept events
    T = int(pad_to if pad_to is not None else max(int(L.max()) if B else 1, 1))
    if L.max(initial=0) > T:
        raise ValueError(f"pad_to={T} is shorter than a kept sequence ({int(L.max())} events)")
    row = np.repeat(np.arange(B), L)  # (N,) row of each kept event
    j = np.arange(L.sum()) - np.repeat(np.cumsum(L) - L, L)  # (N,) index among the row's kept events
    src = offsets[:-1][row] + (n - L)[row] + j  # (N,) position in the flat list values
    dst = T - L[row] + j  # (N,) column after left padding

    def gather(column_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Flat kept values of a list column (aligned to ``src``) and their validity."""
        off, values = _list_parts(table[column_name])
        if not np.array_equal(np.diff(off), n):
            raise ValueError(f"featurize: list column {column_name!r} has other lengths than item_id")
        taken = values.take(pa.array(off[:-1][row] + (n - L)[row] + j))
        return taken, taken.is_valid().to_numpy(zero_copy_only=False)

    def scatter(flat: np.ndarray, fill, dtype=np.int64, extra: tuple = ()) -> np.ndarray:
        out = np.full((B, T, *extra), fill, dtype=dtype)
        out[row, dst] = flat
        return out

    items = item_values.take(pa.array(src))
    item_raw = pc.fill_null(items, 0).to_numpy()
    cols = [hash_ids(item_raw, items.is_valid().to_numpy(zero_copy_only=False), "item_id", cfg)]
    for name in cfg.attributes:
        if name in table.column_names:
            vals, ok = gather(name)
            cols.append(hash_ids(pc.fill_null(vals, 0).to_numpy(), ok, name, cfg))
        else:
            cols.append(np.zeros((len(src), cfg.n_hashes), dtype=np.int64))
    attrs = scatter(np.stack(cols, axis=1), 0, extra=(len(cols), cfg.n_hashes))  # (B, T, A, H)

    if "event_type" in table.column_names:
        etype, _ = gather("event_type")
        idx = pc.index_in(etype, value_set=pa.array(list(cfg.actions), pa.string()))
        action_flat = pc.fill_null(pc.add(idx, 1), len(cfg.actions) + 1).to_numpy().astype(np.int64)
    else:
        action_flat = np.full(len(src), len(cfg.actions) + 1, dtype=np.int64)
    gap_flat = np.full(len(src), cfg.n_time_buckets, dtype=np.int64)  # no event before, no clock, or unused
    if "ts" in table.column_names:
        ts_vals, _ = gather("ts")
        ts_flat = _to_ms(ts_vals)
        if cfg.uses_event_gap:  # else the model has no gap table
            ts_off, ts_all = _list_parts(table["ts"])
            has_prev = (n - L)[row] + j > 0  # (N,) the row's list holds an event before this one
            at = ts_off[:-1][row] + (n - L)[row] + j  # (N,) place of each kept event in the flat ts values
            prev = _to_ms(ts_all.take(pa.array(np.where(has_prev, at - 1, at))))
            gap_flat[has_prev] = time_buckets(ts_flat - prev, cfg.n_time_buckets)[has_prev]
    else:
        ts_flat = as_of_ms[row]
    tb_flat = time_buckets(as_of_ms[row] - ts_flat, cfg.n_time_buckets)

    return SequenceBatch(
        user_id=torch.from_numpy(np.array(table["user_id"].to_numpy(), dtype=np.int64)),
        as_of=torch.from_numpy(as_of_ms),
        lengths=torch.from_numpy(L.astype(np.int64)),
        attrs=torch.from_numpy(attrs),
        action=torch.from_numpy(scatter(action_flat, 0)),
        time_bucket=torch.from_numpy(scatter(tb_flat, 0)),
        gap_bucket=torch.from_numpy(scatter(gap_flat, 0)),
        ts=torch.from_numpy(scatter(ts_flat, 0)),
        item_id=torch.from_numpy(scatter(item_raw, -1)),
        hour=torch.from_numpy(hour_of_day(as_of_ms)),
        weekday=torch.from_numpy(weekday_of(as_of_ms)),
    )
