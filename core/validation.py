"""The event validator: valid rows, a quarantine table with a reason per row, and counts per reason.

The rules are written once, on Arrow, and used everywhere: directly on a table (the generator's
check, `soe validate`), and per Arrow batch inside Spark executors (``mapInArrow`` in pipelines/).
A file-level break of the contract (a missing required column) raises `ContractError`; every
row-level break sends just that row to quarantine, and the valid rows are still processed.

Reasons (the first rule a row breaks wins, in this order):

============================== ==================================================================
``bad_type:<col>``             the value cannot be read as the contract type (e.g. "abc" as user_id)
``null_user_id``               user_id is null
``negative_user_id``           user_id < 0
``null_ts``                    ts is null
``null_event_type``            event_type is null
``unknown_event_type``         event_type is not in the configured vocabulary
``null_item_id``               item_id is null
``absurd_value:<col>``         an id < 0 or > max_attribute_id, or ts before 2000-01-01
``ts_after_interval``          ts >= the interval end (as_of): an event from the future of the run
``ts_in_future``               ts > the wall-clock ``now`` given by the caller (landing checks)
``ts_before_lateness_window``  ts < interval start - max_lateness_hours (too late to place)
``duplicate``                  an exact copy of an earlier valid row (all contract columns equal)
============================== ==================================================================

Late events (start - max_lateness <= ts < start) are valid: the pipeline places them by ``ts``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.contracts import ATTRIBUTE_COLUMNS, EVENT, ContractError
from core.layout import utc

MIN_TS = datetime(2000, 1, 1)
QUARANTINE_SCHEMA = pa.schema(
    [pa.field(f.name, pa.string()) for f in EVENT.schema] + [pa.field("reason", pa.string(), nullable=False)],
    metadata={"soe.contract": "quarantine", "soe.contract_version": "1"},
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

    @classmethod
    def from_settings(cls, events, start=None, end=None, now=None) -> "ValidationRules":
        return cls(
            event_types=tuple(events.event_types),
            max_attribute_id=events.max_attribute_id,
            interval_start=utc(start) if start is not None else None,
            interval_end=utc(end) if end is not None else None,
            max_lateness_hours=events.max_lateness_hours,
            now=utc(now) if now is not None else None,
        )


@dataclass
class ValidationResult:
    valid: pa.Table  # conforms to the event contract
    quarantine: pa.Table  # QUARANTINE_SCHEMA: the rejected rows as text, plus `reason`
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def n_valid(self) -> int:
        return self.valid.num_rows

    @property
    def n_quarantined(self) -> int:
        return self.quarantine.num_rows

    def summary(self) -> dict[str, Any]:
        return {"valid": self.n_valid, "quarantined": self.n_quarantined, "reasons": dict(self.counts)}


def check_required_columns(schema: pa.Schema, source: str = "input") -> None:
    """Fail the whole file, clearly, when a required event column is missing."""
    missing = [c for c in EVENT.required if c not in schema.names]
    if missing:
        raise ContractError(
            f"{source}: missing required event column(s) {missing}. The event contract v{EVENT.version} "
            f"requires {list(EVENT.required)}; found {schema.names}. The whole file was rejected."
        )


def _to_python(value: Any, target: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_integer(target):
        if isinstance(value, bool):
            raise TypeError("bool is not an id")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not integral")
        return int(value)
    if pa.types.is_timestamp(target):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)  # epoch milliseconds
        if isinstance(value, datetime):
            return int(utc(value).timestamp() * 1000)
        return int(utc(str(value)).timestamp() * 1000)
    if pa.types.is_string(target):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"{type(value).__name__} is not text")
    raise TypeError(target)


def _coerce(arr: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast a column to the contract type; returns (typed array, mask of values that could not be read)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.type == target:
        return arr, np.zeros(len(arr), dtype=bool)
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(arr.type):
        return arr.cast(target), np.zeros(len(arr), dtype=bool)
    text_to_time = pa.types.is_timestamp(target) and not pa.types.is_integer(arr.type)
    if not text_to_time:
        try:  # whole-column cast: the fast path for compatible types (int32 -> int64, "12" -> 12)
            return arr.cast(target), np.zeros(len(arr), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    # Slow path, only for columns that arrive with a wrong type: value by value.
    values, bad = [], np.zeros(len(arr), dtype=bool)
    storage = pa.int64() if pa.types.is_timestamp(target) else target
    for i, v in enumerate(arr.to_pylist()):
        try:
            values.append(_to_python(v, target))
        except (TypeError, ValueError, OverflowError):
            values.append(None)
            bad[i] = True
    typed = pa.array(values, type=storage)
    return (typed.cast(target) if storage != target else typed), bad


def _as_text(arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_timestamp(arr.type):
        return pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


def row_reasons(table: pa.Table, rules: ValidationRules) -> tuple[pa.Table, np.ndarray]:
    """Apply every row-level rule. Returns (table cast to the event contract, reason per row or None).

    Rows with a reason hold nulls where their value could not be typed. Duplicates are not a
    row-level rule; see `duplicate_mask`.
    """
    check_required_columns(table.schema)
    n = table.num_rows
    reasons = np.full(n, None, dtype=object)

    def flag(mask: np.ndarray, reason: str) -> None:
        hit = mask & (reasons == None)  # noqa: E711 (elementwise on an object array)
        reasons[hit] = reason

    columns = {}
    for f in EVENT.schema:
        if f.name not in table.column_names:
            columns[f.name] = pa.nulls(n, f.type)
            continue
        typed, bad = _coerce(table[f.name], f.type)
        columns[f.name] = typed
        flag(bad, f"bad_type:{f.name}")

    def np_of(name: str, fill: int) -> np.ndarray:
        return columns[name].fill_null(fill).to_numpy(zero_copy_only=False)

    def nulls(name: str) -> np.ndarray:
        return columns[name].is_null().to_numpy(zero_copy_only=False)

    flag(nulls("user_id"), "null_user_id")
    flag(np_of("user_id", 0) < 0, "negative_user_id")
    flag(nulls("ts"), "null_ts")
    flag(nulls("event_type"), "null_event_type")
    known = pc.is_in(columns["event_type"], value_set=pa.array(list(rules.event_types), pa.string()))
    flag(~known.fill_null(True).to_numpy(zero_copy_only=False), "unknown_event_type")
    flag(nulls("item_id"), "null_item_id")
    for name in ("item_id", *ATTRIBUTE_COLUMNS):
        ids = np_of(name, 0)
        flag((ids < 0) | (ids > rules.max_attribute_id), f"absurd_value:{name}")
    ts_ms = columns["ts"].cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    ts_known = ~nulls("ts")
    flag(ts_known & (ts_ms < _ms(MIN_TS)), "absurd_value:ts")
    if rules.interval_end is not None:
        flag(ts_known & (ts_ms >= _ms(rules.interval_end)), "ts_after_interval")
    if rules.now is not None:
        flag(ts_known & (ts_ms > _ms(rules.now)), "ts_in_future")
    if rules.interval_start is not None:
        earliest = rules.interval_start - timedelta(hours=rules.max_lateness_hours)
        flag(ts_known & (ts_ms < _ms(earliest)), "ts_before_lateness_window")

    typed = pa.Table.from_arrays([columns[f.name] for f in EVENT.schema], schema=EVENT.schema)
    return typed, reasons


def duplicate_mask(table: pa.Table) -> np.ndarray:
    """True for every row that exactly repeats an earlier row (all columns equal, nulls equal)."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=bool)
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    keyed = table.append_column("__row", idx)
    first = keyed.group_by(table.column_names, use_threads=False).aggregate([("__row", "min")])
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[first["__row_min"].to_numpy()] = True
    return ~keep


def validate_events(table: pa.Table, rules: ValidationRules) -> ValidationResult:
    """Split ``table`` into valid rows (event contract), quarantined rows (with reasons) and counts."""
    typed, reasons = row_reasons(table, rules)
    ok = reasons == None  # noqa: E711
    ok_idx = np.flatnonzero(ok)
    dup = duplicate_mask(typed.take(ok_idx))
    reasons[ok_idx[dup]] = "duplicate"
    ok = reasons == None  # noqa: E711
    valid = typed.filter(pa.array(ok))
    bad = ~ok
    quarantine = quarantine_table(table.filter(pa.array(bad)), reasons[bad])
    return ValidationResult(valid=valid, quarantine=quarantine, counts=dict(Counter(reasons[bad].tolist())))


def quarantine_table(raw: pa.Table, reasons: np.ndarray | list[str]) -> pa.Table:
    """The rejected rows as they arrived (every contract column as text) with their reasons."""
    cols = []
    for f in QUARANTINE_SCHEMA:
        if f.name == "reason":
            cols.append(pa.array(list(reasons), pa.string()))
        elif f.name in raw.column_names:
            cols.append(_as_text(raw[f.name].combine_chunks()))
        else:
            cols.append(pa.nulls(raw.num_rows, pa.string()))
    return pa.Table.from_arrays(cols, schema=QUARANTINE_SCHEMA)


def _ms(t: datetime) -> int:
    return int(utc(t).timestamp() * 1000)
