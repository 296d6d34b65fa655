"""The event validator: valid rows, a quarantine table with a reason per record, and counts per reason.

The rules are written once, on Arrow, and used everywhere: on the event files of an hour
(`validate_files`, what ``soe validate`` runs), on an in-memory table (`validate_events`: the
generator's check, tests), and per batch inside the Spark executors (``mapInArrow`` in pipelines/,
through `row_reasons`). Files are read by the one reader, `core.event_files`, which quarantines a
file that cannot be used as one record and conforms the others to the event contract; then every
row-level break sends just that row to quarantine, and the other rows are still processed.

Whole-file reasons (one record per file, with ``source_file``, ``detail`` and its ``rows``): see
`core.event_files` (``unreadable_file``, ``missing_column:<c>``, ``duplicate_column:<c>``,
``bad_physical_type:<c>:<type>``, ``unsupported_contract``).

Row reasons (the first rule a row breaks wins, in this order):

============================== ==================================================================
``forgotten``                  user_id is on the forget list (`core.forget`): the user asked to be
                               forgotten. Checked first (only an unreadable user_id comes before
                               it), and the quarantine keeps **no** value of the row: every event
                               column is null, only the reason, the file and the count remain
``bad_type:<col>``             a required value cannot be read as the contract type ("abc" or a
                               uint64 above 2^63-1 as user_id, "yesterday" as ts, bytes that are
                               not UTF-8 as event_type); an unreadable *optional* value is nulled
                               instead and the event is kept
``null_user_id``               user_id is null
``negative_user_id``           user_id < 0
``absurd_value:user_id``       user_id outside [events.min_user_id, events.max_user_id] (0 and
                               2^63-1, the usual "no user" sentinels, by default)
``null_ts``                    ts is null
``null_event_type``            event_type is null
``unknown_event_type``         event_type is not in the configured vocabulary
``null_item_id``               item_id is null
``absurd_value:<col>``         an id < 0 or > max_attribute_id, or ts before 2000-01-01
``ts_after_interval``          ts >= the interval end (as_of): an event from the future of the run
``ts_in_future``               ts > the wall-clock ``now`` given by the caller (landing checks)
``ts_before_lateness_window``  ts < interval start - max_lateness_hours (too late to place)
``duplicate``                  repeats the **sequence key** (`SEQ_KEY`: user, ts, event type, item,
                               attributes) of an event accepted earlier in the run (see
                               `duplicate_mask` for which copy is kept)
============================== ==================================================================

Late events (start - max_lateness <= ts < start) are valid: the pipeline places them by ``ts``.
Counts are **rows**: a row record counts 1, a file record counts the rows its footer declares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.contracts import ATTRIBUTE_COLUMNS, CONTEXT_COLUMNS, EVENT, ContractError
from core.event_files import (
    DEFAULT_BATCH_ROWS,
    EventBatch,
    FileProblem,
    conform_events,
    no_reason,
    read_event_file,
)
from core.layout import HOUR_MS, utc

MIN_TS = datetime(2000, 1, 1)
FORGOTTEN = "forgotten"  # the reason of a forgotten user's event; its quarantine record keeps no value
SEQ_KEY = ("user_id", "ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)  # what a sequence keeps of an event
QUARANTINE_SCHEMA = pa.schema(
    [pa.field(f.name, pa.string()) for f in EVENT.schema]
    + [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source_file", pa.string()),  # the event file; null for a duplicate (a property of the run)
        pa.field("rows", pa.int64(), nullable=False),  # input rows this record stands for (1 for a row)
        pa.field("detail", pa.string()),  # a whole-file record: what is wrong with the file
    ],
    metadata={"soe.contract": "quarantine", "soe.contract_version": "2"},
)


@dataclass(frozen=True)
class ValidationRules:
    """What the validator checks against; built from settings.events plus the run's interval."""

    event_types: tuple[str, ...]
    max_attribute_id: int = 2**62
    interval_start: datetime | None = None  # None: no lower bound except the absurd-ts check
    interval_end: datetime | None = None  # None: no upper bound (then `now`, if given)
    max_lateness_hours: int = 72
    now: datetime | None = None  # wall clock, only for landing checks; never in the pipeline
    min_user_id: int = 1
    max_user_id: int = 2**63 - 2
    # the forget list (`core.forget.ForgetList.ids`, sorted): these users' events are quarantined
    forgotten: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, events, start=None, end=None, now=None, forgotten=None) -> ValidationRules:
        return cls(
            event_types=tuple(events.event_types),
            max_attribute_id=events.max_attribute_id,
            interval_start=utc(start) if start is not None else None,
            interval_end=utc(end) if end is not None else None,
            max_lateness_hours=events.max_lateness_hours,
            now=utc(now) if now is not None else None,
            min_user_id=events.min_user_id,
            max_user_id=events.max_user_id,
            forgotten=None if forgotten is None or not len(forgotten) else np.asarray(forgotten, np.int64),
        )

    def for_hour(self, start: datetime) -> ValidationRules:
        """The same rules for the arrival hour [start, start + 1h)."""
        return replace(self, interval_start=utc(start), interval_end=utc(start) + timedelta(hours=1))


@dataclass
class ValidationResult:
    valid: pa.Table  # conforms to the event contract
    quarantine: pa.Table  # QUARANTINE_SCHEMA: rejected rows as text plus `reason`, and whole-file records
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rows
    files: list[FileProblem] = field(default_factory=list)  # the files (or row groups) quarantined whole

    @property
    def n_valid(self) -> int:
        return self.valid.num_rows

    @property
    def n_quarantined(self) -> int:
        """Input rows sent to quarantine (a whole file counts its rows)."""
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "valid": self.n_valid,
            "quarantined": self.n_quarantined,
            "reasons": dict(self.counts),
            "quarantined_files": [file_json(p) for p in self.files],
        }


def file_json(problem: FileProblem) -> dict[str, Any]:
    return {"file": problem.path, "reason": problem.reason, "rows": problem.rows, "detail": problem.detail}


# -- row rules ------------------------------------------------------------------------------------


def row_reasons(batch: EventBatch | pa.Table, rules: ValidationRules) -> tuple[pa.Table, np.ndarray]:
    """Apply every row-level rule. Returns (rows typed to the event contract, reason per row or None).

    ``batch``: rows read by `core.event_files` (or an in-memory table, conformed the same way; a table
    that cannot be conformed as a whole raises `ContractError`). Rows with a reason hold nulls where
    their value could not be typed. Duplicates are not a row-level rule; see `duplicate_mask`.
    """
    if isinstance(batch, pa.Table):
        conformed = conform_events(batch)
        if isinstance(conformed, FileProblem):
            raise ContractError(conformed.message())
        batch = conformed
    typed = batch.typed
    reasons = batch.bad.copy()

    def flag(mask: np.ndarray, reason: str) -> None:
        hit = mask & no_reason(reasons)
        reasons[hit] = reason

    def np_of(name: str, fill: int) -> np.ndarray:
        return typed[name].fill_null(fill).to_numpy()

    def nulls(name: str) -> np.ndarray:
        return typed[name].is_null().to_numpy()

    users = np_of("user_id", rules.min_user_id)
    if rules.forgotten is not None and len(rules.forgotten):  # wins over every reason but an unreadable id
        reasons[np.isin(users, rules.forgotten) & ~nulls("user_id")] = FORGOTTEN  # an unreadable id is null
    flag(nulls("user_id"), "null_user_id")
    flag(users < 0, "negative_user_id")
    flag((users < rules.min_user_id) | (users > rules.max_user_id), "absurd_value:user_id")
    flag(nulls("ts"), "null_ts")
    flag(nulls("event_type"), "null_event_type")
    known = pc.is_in(typed["event_type"], value_set=pa.array(list(rules.event_types), pa.string()))
    flag(~known.fill_null(True).to_numpy(), "unknown_event_type")
    flag(nulls("item_id"), "null_item_id")
    for name in ("item_id", *ATTRIBUTE_COLUMNS):
        ids = np_of(name, 0)
        flag((ids < 0) | (ids > rules.max_attribute_id), f"absurd_value:{name}")
    ts_ms = typed["ts"].cast(pa.int64()).fill_null(0).to_numpy()
    ts_known = ~nulls("ts")
    flag(ts_known & (ts_ms < _ms(MIN_TS)), "absurd_value:ts")
    if rules.interval_end is not None:
        flag(ts_known & (ts_ms >= _ms(rules.interval_end)), "ts_after_interval")
    if rules.now is not None:
        flag(ts_known & (ts_ms > _ms(rules.now)), "ts_in_future")
    if rules.interval_start is not None:
        earliest = rules.interval_start - timedelta(hours=rules.max_lateness_hours)
        flag(ts_known & (ts_ms < _ms(earliest)), "ts_before_lateness_window")
    return typed, reasons


# -- duplicates -----------------------------------------------------------------------------------


def duplicate_mask(typed: pa.Table) -> np.ndarray:
    """True for every row whose sequence key (`SEQ_KEY`, nulls equal) repeats another row's.

    The copy kept is the first in the order (``arrival_hour`` if the table has it, then the context
    columns ascending, nulls first, then row order): the Spark step keeps the same copy
    (`pipelines.events.dedup_keep_first`), so both name the same rows as duplicates.
    """
    n = typed.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = [c for c in ("arrival_hour", *CONTEXT_COLUMNS) if c in typed.column_names]
    pos = np.arange(n, dtype=np.int64)
    if order:
        cols, keys = [], []
        for i, c in enumerate(order):  # nulls first: sort on "has a value" (False < True), then on the value
            cols += [pc.is_valid(typed[c]), typed[c]]
            keys += [(f"v{i}", "ascending"), (f"c{i}", "ascending")]
        names = [n for i in range(len(order)) for n in (f"v{i}", f"c{i}")]
        idx = pc.sort_indices(
            pa.Table.from_arrays([*cols, pa.array(pos)], names=[*names, "pos"]),
            sort_keys=[*keys, ("pos", "ascending")],
        )
        rank = np.empty(n, dtype=np.int64)
        rank[idx.to_numpy()] = pos
    else:
        rank = pos
    keyed = typed.select(list(SEQ_KEY)).append_column("__rank", pa.array(rank))
    first = keyed.group_by(list(SEQ_KEY), use_threads=False).aggregate([("__rank", "min")])
    keep = np.zeros(n, dtype=bool)
    keep[np.argsort(rank)[first["__rank_min"].to_numpy()]] = True
    return ~keep


def _key_columns(typed: pa.Table) -> pa.Table:
    """The sequence key with no nulls (valid attributes are >= 0, so -1 stands for null): joinable."""
    cols = [typed["user_id"], typed["ts"].cast(pa.int64()), typed["event_type"], typed["item_id"]]
    cols += [typed[c].fill_null(-1) for c in ATTRIBUTE_COLUMNS]
    return pa.Table.from_arrays(cols, names=list(SEQ_KEY))


class SeenEvents:
    """The sequence keys accepted in earlier arrival hours of a run, for duplicates across hours.

    An event accepted in an earlier hour has ``ts`` before the current hour's start, so only late
    rows are looked up, and only against keys with the same ts-hour. A valid row is at most
    ``max_lateness_hours`` older than its arrival hour, so older keys are dropped as hours advance.
    """

    def __init__(self, max_lateness_hours: int):
        self.keep_hours = max_lateness_hours + 1
        self.buckets: dict[int, list[pa.Table]] = {}

    def repeats(self, typed: pa.Table, hour_start: datetime) -> np.ndarray:
        out = np.zeros(typed.num_rows, dtype=bool)
        if not self.buckets or typed.num_rows == 0:
            return out
        ts = typed["ts"].cast(pa.int64()).to_numpy()
        late = ts < _ms(hour_start)
        ts_hour = ts // HOUR_MS
        keys = _key_columns(typed)
        for th in np.unique(ts_hour[late]):
            seen = self.buckets.get(int(th))
            if not seen:
                continue
            idx = np.flatnonzero(late & (ts_hour == th))
            probe = keys.take(pa.array(idx)).append_column("__i", pa.array(idx))
            hit = probe.join(
                pa.concat_tables(seen), keys=list(SEQ_KEY), join_type="left semi", use_threads=False
            )
            out[hit["__i"].to_numpy()] = True
        return out

    def add(self, typed: pa.Table, hour_start: datetime) -> None:
        hour = _ms(hour_start) // HOUR_MS
        for th in [t for t in self.buckets if t < hour - self.keep_hours]:
            del self.buckets[th]
        if typed.num_rows == 0:
            return
        keys = _key_columns(typed)
        ts_hour = keys["ts"].to_numpy() // HOUR_MS
        for th in np.unique(ts_hour):
            self.buckets.setdefault(int(th), []).append(keys.filter(pa.array(ts_hour == th)))


# -- results --------------------------------------------------------------------------------------


def validate_events(table: pa.Table, rules: ValidationRules, source: str = "input") -> ValidationResult:
    """Split an in-memory ``table`` into valid rows, quarantine and counts (as if it were one file)."""
    conformed = conform_events(table, source)
    return _result([conformed], rules, hour_start=None, seen=None)


def validate_files(
    files: Iterable[Path | str],
    rules: ValidationRules,
    *,
    seen: SeenEvents | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ValidationResult:
    """Validate the event files of one arrival hour (``rules`` carry its interval), each read on its own.

    ``seen``: the keys accepted in the run's earlier hours (updated with this hour's), so a
    re-delivery one hour later is a duplicate exactly as in a Spark run over the same hours.
    """
    parts = [item for f in files for item in read_event_file(f, batch_rows=batch_rows)]
    return _result(parts, rules, hour_start=rules.interval_start, seen=seen)


def _result(
    parts: list[EventBatch | FileProblem],
    rules: ValidationRules,
    hour_start: datetime | None,
    seen: SeenEvents | None,
) -> ValidationResult:
    problems = [p for p in parts if isinstance(p, FileProblem)]
    valid_parts, rejected = [], [file_records(problems)]
    for batch in (p for p in parts if isinstance(p, EventBatch)):
        typed, reasons = row_reasons(batch, rules)
        ok = no_reason(reasons)
        valid_parts.append(typed.filter(pa.array(ok)))
        if (~ok).any():
            raw = batch.raw.filter(pa.array(~ok))
            rejected.append(quarantine_table(raw, reasons[~ok], source=batch.source))
    valid = pa.concat_tables(valid_parts) if valid_parts else EVENT.schema.empty_table()
    dup = duplicate_mask(valid)
    if seen is not None and hour_start is not None:
        dup |= seen.repeats(valid, hour_start)
    if dup.any():
        rejected.append(quarantine_table(valid.filter(pa.array(dup)), ["duplicate"] * int(dup.sum())))
        valid = valid.filter(pa.array(~dup))
    if seen is not None and hour_start is not None:
        seen.add(valid, hour_start)
    quarantine = pa.concat_tables(rejected)
    return ValidationResult(
        valid=valid, quarantine=quarantine, counts=count_reasons(quarantine), files=problems
    )


def count_reasons(quarantine: pa.Table) -> dict[str, int]:
    """reason -> input rows, from a quarantine table (a file record counts its rows)."""
    counts: Counter = Counter()
    rows = quarantine["rows"].to_pylist() if "rows" in quarantine.column_names else [1] * quarantine.num_rows
    for reason, n in zip(quarantine["reason"].to_pylist(), rows):
        counts[reason] += int(n)
    return dict(counts)


def quarantine_table(raw: pa.Table, reasons: np.ndarray | list[str], source: str | None = None) -> pa.Table:
    """The rejected rows as they arrived (every contract column as text) with their reasons.

    A ``forgotten`` row keeps no value: its contract columns are null (only reason, file and count)."""
    n = raw.num_rows
    gone = pa.array(np.asarray([r == FORGOTTEN for r in reasons], dtype=bool))
    cols = []
    for f in QUARANTINE_SCHEMA:
        if f.name == "reason":
            cols.append(pa.array(list(reasons), pa.string()))
        elif f.name == "source_file":
            cols.append(pa.array([source] * n, pa.string()))
        elif f.name == "rows":
            cols.append(pa.array(np.ones(n, dtype=np.int64)))
        elif f.name == "detail":
            cols.append(pa.nulls(n, pa.string()))
        elif f.name in raw.column_names:
            text = as_text(raw[f.name].combine_chunks())
            forgotten_rows = pc.any(gone).as_py()
            cols.append(pc.if_else(gone, pa.scalar(None, pa.string()), text) if forgotten_rows else text)
        else:
            cols.append(pa.nulls(n, pa.string()))
    return pa.Table.from_arrays(cols, schema=QUARANTINE_SCHEMA)


def file_records(problems: list[FileProblem]) -> pa.Table:
    """One quarantine record per file (or row group) quarantined whole: no event values, the file's rows."""
    n = len(problems)
    cols = []
    for f in QUARANTINE_SCHEMA:
        if f.name == "reason":
            cols.append(pa.array([p.reason for p in problems], pa.string()))
        elif f.name == "source_file":
            cols.append(pa.array([p.path for p in problems], pa.string()))
        elif f.name == "rows":
            cols.append(pa.array([p.rows for p in problems], pa.int64()))
        elif f.name == "detail":
            cols.append(pa.array([p.detail for p in problems], pa.string()))
        else:
            cols.append(pa.nulls(n, pa.string()))
    return pa.Table.from_arrays(cols, schema=QUARANTINE_SCHEMA)


def as_text(arr: pa.Array) -> pa.Array:
    """A column as text, whatever its type (bytes that are not UTF-8 are kept as ``\\xNN`` escapes)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_timestamp(arr.type):
        return pc.strftime(arr.cast(pa.timestamp(arr.type.unit, tz="UTC")), format="%Y-%m-%dT%H:%M:%S")
    if (
        pa.types.is_string(arr.type)
        or pa.types.is_large_string(arr.type)
        or pa.types.is_binary(arr.type)
        or pa.types.is_large_binary(arr.type)
        or pa.types.is_string_view(arr.type)
    ):
        try:
            out = arr.cast(pa.string())
            out.validate(full=True)
            return out
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = arr.cast(pa.large_binary()).to_pylist()
            return pa.array(
                [None if v is None else v.decode("utf-8", "backslashreplace") for v in values], pa.string()
            )
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


def _ms(t: datetime) -> int:
    return int(utc(t).timestamp() * 1000)
