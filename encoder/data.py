"""Training/evaluation inputs, all reduced to SEQUENCE-like rows (one row per user, oldest -> newest).

Sources: event tables (event contract: the synthetic log, MovieLens-100K, the pipeline's event log),
SASRec text files (``user item item ...``, no time and no event types), and the pipeline's training
sets / sequence snapshots (already sequences). Everything is vectorised with numpy/pyarrow.

``leave_last_out(sequences, positives)`` builds the standard split in-process: for each user the
last *positive* event is the test target, the one before is the validation target; the inputs are
every event (positive or context) strictly before the target, and training only sees events before
the validation target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.contracts import ATTRIBUTE_COLUMNS, TS
from core.layout import epoch_ms
from core.sequence_state import read_state

LIST_COLUMNS = ("ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)


def events_to_sequences(events: pa.Table, as_of=None) -> pa.Table:
    """Event rows -> one row per user with list columns ordered by (ts, original order). No truncation."""
    user = events["user_id"].to_numpy()
    ts = pc.fill_null(events["ts"].cast(TS).cast(pa.int64()), 0).to_numpy()
    order = np.lexsort((np.arange(len(user)), ts, user))  # by user, then ts, stable
    ev = events.take(pa.array(order))
    user_sorted = user[order]
    starts = (
        np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]]) if len(user) else np.array([], int)
    )
    offsets = pa.array(np.r_[starts, len(user)].astype(np.int32))
    cols = {"user_id": pa.array(user_sorted[starts], pa.int64())}
    last_ts = ts[order][np.r_[starts[1:], len(user)] - 1] if len(user) else np.array([], np.int64)
    as_of_ms = last_ts + 1 if as_of is None else np.full(len(starts), epoch_ms(as_of), dtype=np.int64)
    cols["as_of"] = pa.array(as_of_ms, pa.int64()).cast(TS)
    cols["n_events"] = pa.array(np.diff(np.r_[starts, len(user)]).astype(np.int32))
    for name in LIST_COLUMNS:
        if name in ev.column_names:
            cols[name] = pa.ListArray.from_arrays(offsets, ev[name].combine_chunks())
    return pa.table(cols)


def read_sasrec(path: str | Path) -> pa.Table:
    """A SASRec text file (``user_id item_id item_id ...`` per line, in time order) -> sequences.

    No timestamps and no event types exist: every event is a positive ``click`` with ``ts`` = its
    index in seconds, so the model must run with use_time/use_action off (train does that).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SASRec file {path} does not exist")
    users, items, lengths = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{path}:{n}: expected integers 'user_id item_id item_id ...', got {line[:80]!r}"
            ) from None
        if len(ids) < 2:
            continue
        users.append(ids[0])
        items.extend(ids[1:])
        lengths.append(len(ids) - 1)
    if not users:
        raise ValueError(f"{path}: no user line with at least one item")
    uid = np.repeat(np.asarray(users, dtype=np.int64), lengths)
    pos = np.arange(len(uid)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    events = pa.table(
        {
            "user_id": pa.array(uid),
            "ts": pa.array(pos * 1000, pa.int64()).cast(TS),
            "event_type": pa.array(["click"] * len(uid)),
            "item_id": pa.array(np.asarray(items, dtype=np.int64)),
        }
    )
    return events_to_sequences(events).replace_schema_metadata({"soe.features": "item_only"})


def has_real_time(sequences: pa.Table) -> bool:
    """False for SASRec text files (``soe.features=item_only``): their ``ts`` is only the event's index."""
    return (sequences.schema.metadata or {}).get(b"soe.features") != b"item_only"


def read_sequences(path: str | Path) -> pa.Table:
    """A Parquet file or directory of sequence rows (e.g. a pipeline trainset or a layered state snapshot)."""
    return read_state(path)


def as_sequences(source: pa.Table | str | Path) -> pa.Table:
    """Events (event contract), sequence rows (list columns) or a Parquet path of them -> sequence rows."""
    if isinstance(source, (str, Path)):
        source = read_sequences(source)
    if not isinstance(source, pa.Table):
        raise TypeError(
            f"training input must be a pyarrow Table or a Parquet path, got {type(source).__name__}"
        )
    if "item_id" not in source.column_names:
        raise ValueError("training input has no item_id column (need events or sequence rows)")
    return source if pa.types.is_list(source.schema.field("item_id").type) else events_to_sequences(source)


def is_positive(event_type: pa.Array, positive_types) -> np.ndarray:
    return pc.is_in(
        pc.fill_null(event_type, ""), value_set=pa.array(list(positive_types), pa.string())
    ).to_numpy(zero_copy_only=False)


def events_before(sequences: pa.Table, t_ms, inclusive: bool = False) -> np.ndarray:
    """(rows,) events of each row before ``t_ms`` (one time for all rows, or one per row; ``inclusive``:
    at it too). Rows are in time order, so this is the length of each row's prefix known then."""
    ts = pc.fill_null(sequences["ts"].combine_chunks().flatten().cast(pa.int64()), 0).to_numpy()
    lengths = pc.list_value_length(sequences["ts"]).to_numpy().astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    t = np.broadcast_to(np.asarray(t_ms, dtype=np.int64), (len(lengths),))[row]  # (events,) each row's time
    return np.bincount(row[ts <= t if inclusive else ts < t], minlength=len(lengths))


def truncate(sequences: pa.Table, keep: np.ndarray) -> pa.Table:
    """Keep the first ``keep[i]`` events of row i (its prefix); rows with keep 0 are dropped."""
    keep = np.asarray(keep, dtype=np.int64)
    rows = np.flatnonzero(keep > 0)
    return window(sequences.take(pa.array(rows)), np.zeros(len(rows), np.int64), keep[rows])


@dataclass
class Split:
    """Leave-last-out: train prefixes, and (inputs, target) for validation and test."""

    train: pa.Table  # sequences strictly before each user's validation target
    valid: pa.Table  # inputs of validation users (prefix before their 2nd-last positive)
    valid_target: np.ndarray  # (Uv,) int64 target item per validation row
    test: pa.Table  # inputs of test users (prefix before their last positive)
    test_target: np.ndarray  # (Ut,) int64 target item per test row
    test_target_ts: np.ndarray | None = None  # (Ut,) int64 ms time of each test target (None: no ts column)


def leave_last_out(sequences: pa.Table, positive_types, min_positives: int = 3) -> Split:
    """Per user: test target = last positive, validation target = the one before (see module doc)."""
    et = sequences["event_type"].combine_chunks()
    off = et.offsets.to_numpy().astype(np.int64)
    off = off - off[0]
    n = np.diff(off)
    pos = is_positive(et.flatten(), positive_types)
    row = np.repeat(np.arange(sequences.num_rows), n)
    idx_in_row = np.arange(len(row)) - np.repeat(off[:-1], n)
    n_pos = np.bincount(row[pos], minlength=sequences.num_rows)
    pos_rows, pos_idx = row[pos], idx_in_row[pos]
    last = np.full(sequences.num_rows, -1)
    second = np.full(sequences.num_rows, -1)
    last[pos_rows] = pos_idx  # later assignments win: index of the last positive
    not_last = pos_idx != last[pos_rows]
    second[pos_rows[not_last]] = pos_idx[not_last]  # index of the 2nd-last positive
    ok = n_pos >= min_positives
    item_flat = pc.fill_null(sequences["item_id"].combine_chunks().flatten(), -1).to_numpy()

    def inputs_and_target(which: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        use = ok & (which > 0)  # a target needs at least one event before it
        at = off[:-1][use] + which[use]  # flat position of each target
        return truncate(sequences, np.where(use, which, 0)), item_flat[at], at

    valid, valid_target, _ = inputs_and_target(second)
    test, test_target, test_at = inputs_and_target(last)
    test_ts = None
    if "ts" in sequences.column_names:
        test_ts = pc.fill_null(sequences["ts"].combine_chunks().flatten().cast(pa.int64()), 0).to_numpy()[
            test_at
        ]
    keep_train = np.where(ok, second, n)  # users without enough positives: everything trains
    return Split(truncate(sequences, keep_train), valid, valid_target, test, test_target, test_ts)


@dataclass
class Catalogue:
    """Every item seen in a set of sequences: sorted raw ids and their (latest) attribute ids, -1 = none."""

    ids: np.ndarray  # (I,) int64 sorted raw item ids
    attributes: dict[str, np.ndarray]  # name -> (I,) int64 attribute id, -1 where unknown

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, item_ids: np.ndarray) -> np.ndarray:
        """Raw ids -> catalogue positions, -1 for ids not in the catalogue."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, item_ids), 0, max(len(self.ids) - 1, 0))
        return np.where((len(self.ids) > 0) & (self.ids[pos] == item_ids), pos, -1)


def history_items(sequences: pa.Table, catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, catalogue positions) of every row's history items (for exclusion from rankings)."""
    items = sequences["item_id"].combine_chunks()
    flat = catalogue.index(pc.fill_null(items.flatten(), -1).to_numpy())
    lengths = pc.list_value_length(items).to_numpy().astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    keep = flat >= 0
    counts = np.bincount(row[keep], minlength=len(lengths))
    return np.r_[0, np.cumsum(counts)], flat[keep]


def _flat(sequences: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flattened list column as int64 values (-1 for null) and validity."""
    flat = sequences[name].combine_chunks().flatten()
    return pc.fill_null(flat, -1).to_numpy().astype(np.int64), flat.is_valid().to_numpy(zero_copy_only=False)


def item_catalogue(sequences: pa.Table, attributes=ATTRIBUTE_COLUMNS) -> Catalogue:
    items, ok = _flat(sequences, "item_id")
    items = items[ok]
    # the last occurrence of each item carries its latest attributes
    rev_ids, rev_first = np.unique(items[::-1], return_index=True)
    last = len(items) - 1 - rev_first
    attrs = {}
    for name in attributes:
        if name in sequences.column_names:
            vals, _ = _flat(sequences, name)
            attrs[name] = vals[ok][last]
    return Catalogue(rev_ids, attrs)


def positive_counts(sequences: pa.Table, positive_types) -> tuple[np.ndarray, np.ndarray]:
    """(sorted item ids, counts) of positive events: the in-batch sampling frequency behind logQ."""
    items, ok = _flat(sequences, "item_id")
    pos = is_positive(sequences["event_type"].combine_chunks().flatten(), positive_types) & ok
    return np.unique(items[pos], return_counts=True)


def chunk_rows(sequences: pa.Table, max_len: int) -> pa.Table:
    """Cut every row into consecutive pieces of at most ``max_len`` events (newest piece aligned to the end).

    Training sees all of a long history this way (each piece is its own training row, with its own
    as_of just after its newest event), and batches carry little padding.
    """
    lengths = pc.list_value_length(sequences["item_id"]).to_numpy().astype(np.int64)
    n_pieces = np.maximum((lengths + max_len - 1) // max_len, 1)
    row = np.repeat(np.arange(len(lengths)), n_pieces)
    k = np.arange(len(row)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)  # piece index, 0 = newest
    end = lengths[row] - k * max_len
    start = np.maximum(end - max_len, 0)
    return window(sequences.take(pa.array(row)), start, end)


def window(sequences: pa.Table, start: np.ndarray, end: np.ndarray) -> pa.Table:
    """Row i keeps events [start[i], end[i]); as_of becomes just after the newest kept event."""
    start, end = np.asarray(start, np.int64), np.asarray(end, np.int64)
    k = end - start
    cols = {}
    for name in sequences.column_names:
        col = sequences[name].combine_chunks()
        if name in LIST_COLUMNS:
            off = col.offsets.to_numpy().astype(np.int64)
            idx = np.repeat(off[:-1] + start, k) + (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k))
            col = pa.ListArray.from_arrays(
                pa.array(np.r_[0, np.cumsum(k)].astype(np.int32)), col.values.take(pa.array(idx))
            )
        cols[name] = col
    out = pa.table(cols)
    if "as_of" in out.column_names and "ts" in out.column_names and out.num_rows and k.min() > 0:
        flat_ts = pc.fill_null(out["ts"].combine_chunks().flatten().cast(pa.int64()), 0).to_numpy()
        out = out.set_column(
            out.column_names.index("as_of"),
            "as_of",
            pa.array(flat_ts[np.cumsum(k) - 1] + 1, pa.int64()).cast(TS),
        )
    if "n_events" in out.column_names:
        out = out.set_column(out.column_names.index("n_events"), "n_events", pa.array(k.astype(np.int32)))
    return out
