"""A plain-Python reference of the sequence pipeline, for the Spark tests to match exactly.

Written from the specification (docs/pipelines.md), not from the Spark code: every arrival hour is
validated with the foundation validator under that hour's rules; an event whose sequence key
(user, ts, type, item, attributes) was already accepted (earlier in the interval or present in the
user's sequence) is a duplicate; each user keeps the newest N events ordered by the event tuple.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from core.atomic import is_complete
from core.contracts import ATTRIBUTE_COLUMNS
from core.datasets.events import read_partition
from core.layout import Layout, hours
from core.sequence_state import read_state
from core.validation import ValidationRules, validate_events

FIELDS = ("ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)


def sort_key(event: tuple) -> tuple:
    """Ascending, nulls first, field by field (the order of the event tuple)."""
    return tuple((0, 0) if v is None else (1, v) for v in event)


def table_events(table: pa.Table) -> list[tuple[int, tuple]]:
    """(user_id, event tuple with ts in epoch ms) per row of a typed event table."""
    cols = {c: table[c].to_pylist() for c in ("user_id", *FIELDS)}
    cols["ts"] = table["ts"].cast(pa.int64()).to_pylist()
    return [(cols["user_id"][i], tuple(cols[c][i] for c in FIELDS)) for i in range(table.num_rows)]


class Reference:
    """The state of every user (sorted, last N) and the result of each hourly run."""

    def __init__(self, events_settings, max_len: int):
        self.events_settings = events_settings
        self.max_len = max_len
        self.state: dict[int, list[tuple]] = {}

    def run(self, layout: Layout, start: datetime, end: datetime) -> dict:
        """Merge the arrival hours [start, end); returns active sequences and quarantine counts."""
        reasons: Counter = Counter()
        seen: set[tuple] = set()
        fresh: dict[int, list[tuple]] = {}
        repeats = 0  # duplicates of events accepted in an earlier run (still in the user's sequence)
        for hour in hours(start, end):
            part = layout.event_partition(hour)
            if not is_complete(part):
                continue
            raw = read_partition(part)
            if raw.num_rows == 0:
                continue
            rules = ValidationRules.from_settings(self.events_settings, hour, hour + timedelta(hours=1))
            result = validate_events(raw, rules)
            reasons.update(result.counts)
            for user, event in table_events(result.valid):
                key = (user, event)
                if key in seen or event in set(self.state.get(user, ())):
                    reasons["duplicate"] += 1
                    repeats += key not in seen
                    continue
                seen.add(key)
                fresh.setdefault(user, []).append(event)
        for user, new in fresh.items():
            merged = sorted(self.state.get(user, []) + new, key=sort_key)
            self.state[user] = merged[-self.max_len :]
        return {
            "active": {u: list(self.state[u]) for u in fresh},
            "reasons": dict(reasons),
            "valid_events": sum(len(v) for v in fresh.values()),
            "repeats_of_state": repeats,
        }


def read_sequences(path: Path) -> dict[int, list[tuple]]:
    """user_id -> event tuples of a published sequence file, directory or layered state snapshot."""
    table = read_state(path)
    out = {}
    ts = [
        [None if t is None else t for t in row] for row in table["ts"].cast(pa.list_(pa.int64())).to_pylist()
    ]
    lists = {c: table[c].to_pylist() for c in FIELDS if c != "ts"}
    for i, user in enumerate(table["user_id"].to_pylist()):
        row = [ts[i]] + [lists[c][i] for c in FIELDS if c != "ts"]
        out[user] = list(zip(*row))
    assert len(out) == table.num_rows, "one row per user"
    return out


def test_reference_orders_nulls_first_and_keeps_the_newest_n():
    events = [
        (5, "view", 1, None, 2, 3),
        (5, "view", 1, 7, 2, 3),
        (1, "click", 9, 1, 1, 1),
        (9, "a", 1, 1, 1, 1),
    ]
    ordered = sorted(events, key=sort_key)
    assert ordered[0] == (1, "click", 9, 1, 1, 1)
    assert ordered[1] == (5, "view", 1, None, 2, 3)  # a null attribute sorts before any value
    assert ordered[-1] == (9, "a", 1, 1, 1, 1)
