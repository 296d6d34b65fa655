"""The one reader of event files: `soe validate` and the Spark step's executors both read through it.

Every Parquet file of an event partition is opened **on its own** with pyarrow and conformed to the
event contract (`core.contracts.EVENT`) before any rule runs, so one odd file never decides how the
others are read, and a file that cannot be used costs only itself:

* **Whole-file quarantine** (`FileProblem`): the file cannot be opened or decoded
  (``unreadable_file``: zero bytes, truncated, not Parquet, a corrupt page), a required column is
  missing (``missing_column:<c>``) or appears twice (``duplicate_column:<c>``), a required column
  has a type no row of which could be an event value (``bad_physical_type:<c>:<type>``, e.g. a
  ``bool`` user_id or a ``date32`` ts), or the file says it holds another contract or a newer
  version of this one (``unsupported_contract``). The quarantine gets one record naming the file,
  the reason, the problem, and the file's row count from its footer (0 when even the footer cannot
  be read); the hour goes on with its other files. A corrupt row group of an otherwise readable
  file is quarantined the same way, with its own rows.
* **Safe casts**, applied silently: ``timestamp`` of any unit and any zone (or none: naive
  timestamps are UTC) -> ``timestamp[ms, UTC]`` (sub-millisecond digits are dropped); integer ts ->
  epoch milliseconds; ``int8/16/32`` and ``uint8/16/32`` ids -> ``int64``; ``large_string``,
  ``string_view`` and dictionary-encoded text -> ``string``; an all-null column -> nulls.
* **Checked casts**, value by value: ``uint64`` ids (above 2^63-1 cannot be an int64), float ids
  (must be integral), text ids (must be a canonical decimal: ``"7"``, never ``"007"``, ``"+7"`` or
  ``"7.0"``), text ts (ISO 8601; no zone means UTC), text that is not valid UTF-8. A value of a
  required column that fails is a row-level ``bad_type:<col>`` (the row goes to quarantine, its
  neighbours do not); a value of an optional column (the attribute ids, ``device``, ``country``)
  that fails is set to null and the event is kept. An optional column of an impossible type is
  nulled as a whole.

Opening a file that does not exist or may not be read (``FileNotFoundError``, ``PermissionError``) is
not a property of the data: it is raised, not quarantined (fix the mount or the permissions and re-run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.contracts import ATTRIBUTE_COLUMNS, CONTEXT_COLUMNS, EVENT, TS, ContractError

ID_COLUMNS = ("user_id", "item_id", *ATTRIBUTE_COLUMNS)  # int64 ids
TEXT_COLUMNS = ("event_type", *CONTEXT_COLUMNS)  # strings
OPTIONAL = frozenset(f.name for f in EVENT.schema if f.name not in EVENT.required)
INT64_MAX = 2**63 - 1
_CANONICAL_INT = r"^-?(0|[1-9][0-9]{0,18})$"  # an int64 as its own str(): no "+", no zero or space padding
DEFAULT_BATCH_ROWS = 65_536
ADVICE = "fix or re-deliver the file, then re-run this hour and the hours after it"
# Errors that say nothing about the file's content: raised, never turned into a quarantine record.
NOT_DATA_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, PermissionError, MemoryError)


@dataclass(frozen=True)
class FileProblem:
    """A file (or one of its row groups) that is quarantined whole."""

    path: str
    reason: str  # unreadable_file | missing_column:<c> | bad_physical_type:<c>:<t> | ...
    detail: str  # what is wrong, in words
    rows: int  # input rows lost with it, from the footer (0: the footer itself cannot be read)

    def message(self) -> str:
        """One line for people: the file, the reason, the problem and what to do."""
        return f"{self.path}: quarantined whole ({self.reason}: {self.detail}; {self.rows} rows); {ADVICE}"


@dataclass
class EventBatch:
    """Rows of one file conformed to the event contract."""

    typed: pa.Table  # EVENT.schema; null where a value could not be read
    bad: np.ndarray  # per row: None, or "bad_type:<col>" for the first required column that could not be read
    raw: pa.Table  # the same rows as they arrived (the quarantine keeps them as text)
    source: str  # the file (or "input" for an in-memory table)


# -- planning: what to do with each contract column of a file, decided once from its schema --------

KEEP, CAST, TS_CAST, TS_CHECKED, ID_CHECKED, TEXT_CHECKED, NULLS = (
    "keep",
    "cast",
    "ts_cast",
    "ts_checked",
    "id_checked",
    "text_checked",
    "nulls",
)


def _type_name(t: pa.DataType) -> str:
    return str(t).replace(" ", "")


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
    )


def _plan_column(name: str, t: pa.DataType) -> str | None:
    """How to bring a column of type ``t`` to the contract type; None: no value of this type can be one."""
    if pa.types.is_dictionary(t):
        t = t.value_type  # decoded per batch, then planned like its values
    if pa.types.is_null(t):
        return CAST
    target = EVENT.schema.field(name).type
    if name in TEXT_COLUMNS:  # text is checked even when typed right: Parquet readers do not check UTF-8
        return TEXT_CHECKED if _is_text(t) else None
    if t == target:
        return KEEP
    if name in ID_COLUMNS:
        if pa.types.is_integer(t):
            return ID_CHECKED if t == pa.uint64() else CAST
        if pa.types.is_floating(t) or _is_text(t):
            return ID_CHECKED
        return None
    if name == "ts":
        if pa.types.is_timestamp(t):
            return TS_CAST
        if pa.types.is_integer(t) or _is_text(t):
            return TS_CHECKED  # epoch milliseconds; text as ISO 8601
        return None
    return None


@dataclass(frozen=True)
class _Plan:
    steps: dict[str, str]  # contract column -> step (absent: not in the file -> nulls)
    read: list[str]  # the file's columns to read


def plan_schema(
    schema: pa.Schema, source: str, rows: int, columns: Sequence[str] | None = None
) -> _Plan | FileProblem:
    """Decide per contract column how to conform it, or why the whole file cannot be used."""
    try:
        EVENT.check_version(schema)
    except ContractError as exc:
        return FileProblem(source, "unsupported_contract", str(exc), rows)
    wanted = [
        f.name for f in EVENT.schema if columns is None or f.name in columns or f.name in EVENT.required
    ]
    steps: dict[str, str] = {}
    for name in wanted:
        found = schema.get_all_field_indices(name)
        required = name not in OPTIONAL
        if not found:
            if required:
                return FileProblem(
                    source,
                    f"missing_column:{name}",
                    f"the event contract v{EVENT.version} requires {list(EVENT.required)}; "
                    f"the file has {schema.names}",
                    rows,
                )
            continue
        if len(found) > 1:
            if required:
                return FileProblem(
                    source, f"duplicate_column:{name}", f"{len(found)} columns are named {name!r}", rows
                )
            steps[name] = NULLS
            continue
        t = schema.field(found[0]).type
        step = _plan_column(name, t)
        if step is None:
            if required:
                return FileProblem(
                    source,
                    f"bad_physical_type:{name}:{_type_name(t)}",
                    f"{name} must be {EVENT.schema.field(name).type}, the file has {t}",
                    rows,
                )
            step = NULLS
        steps[name] = step
    return _Plan(steps, [n for n, s in steps.items() if s != NULLS])


# -- conforming a batch ---------------------------------------------------------------------------


def no_reason(reasons: np.ndarray) -> np.ndarray:
    """Elementwise ``is None`` of a reason array (numpy object array): the rows still valid."""
    return np.asarray(reasons == None, dtype=bool)  # noqa: E711 (elementwise, not an identity test)


def _none(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


def _mask(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def utf8(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Text of any string/binary type as ``string``; values that are not valid UTF-8 become null (mask)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return arr.cast(pa.string()), _none(len(arr))
    try:
        out = arr.cast(pa.string()) if arr.type != pa.string() else arr
        out.validate(full=True)  # a string column of a Parquet file is not checked on read
        return out, _none(len(arr))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values: list[str | None] = []
    bad = _none(len(arr))
    for i, v in enumerate(arr.cast(pa.large_binary()).to_pylist()):
        if v is None:
            values.append(None)
            continue
        try:
            values.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            bad[i] = True
    return pa.array(values, pa.string()), bad


def _checked_ids(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """int64 ids from uint64, float or text values; the values that are not an int64 id are masked."""
    t = arr.type
    if pa.types.is_unsigned_integer(t):
        over = pc.greater(arr, pa.scalar(INT64_MAX, t))
        bad = _mask(over)
        return pc.if_else(over, pa.scalar(None, t), arr).cast(pa.int64()), bad
    if pa.types.is_floating(t):
        arr = arr.cast(pa.float64())
        in_range = pc.and_(pc.greater_equal(arr, -(2.0**63)), pc.less(arr, 2.0**63))
        ok = pc.and_(pc.equal(pc.floor(arr), arr), in_range)
        good = _mask(ok)
        bad = ~good & ~_mask(arr.is_null())
        return pc.if_else(ok, arr, pa.scalar(None, pa.float64())).cast(pa.int64(), safe=False), bad
    text, bad = utf8(arr)
    ok = pc.match_substring_regex(text, _CANONICAL_INT)
    bad |= ~_mask(ok) & ~_mask(text.is_null())
    kept = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    try:
        return kept.cast(pa.int64()), bad
    except pa.ArrowInvalid:  # 19 digits above 2^63-1: value by value
        values = []
        for i, v in enumerate(kept.to_pylist()):
            if v is not None and not -(2**63) <= int(v) <= INT64_MAX:
                bad[i], v = True, None
            values.append(None if v is None else int(v))
        return pa.array(values, pa.int64()), bad


def _parse_ts_text(text: str) -> int:
    from core.layout import utc

    return int(utc(text).timestamp() * 1000)  # raises ValueError when it is not ISO 8601


def _checked_ts(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """timestamp[ms, UTC] from epoch-millisecond integers or ISO 8601 text; other values are masked."""
    if pa.types.is_integer(arr.type):
        ms, bad = _checked_ids(arr) if arr.type == pa.uint64() else (arr.cast(pa.int64()), _none(len(arr)))
        return ms.cast(TS), bad
    text, bad = utf8(arr)
    values: list[int | None] = []
    for i, v in enumerate(text.to_pylist()):
        if v is None:
            values.append(None)
            continue
        try:
            values.append(_parse_ts_text(v))
        except (ValueError, OverflowError, OSError):
            values.append(None)
            bad[i] = True
    return pa.array(values, pa.int64()).cast(TS), bad


def _cast_ts(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Any timestamp -> timestamp[ms, UTC]: finer units are truncated, seconds are checked for overflow."""
    if arr.type.unit in ("ns", "us", "ms"):
        return arr.cast(TS, safe=False), _none(len(arr))
    try:
        return arr.cast(TS), _none(len(arr))
    except pa.ArrowInvalid:  # seconds beyond what milliseconds can hold: value by value
        secs = arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
        valid = ~_mask(arr.is_null())
        bad = valid & (np.abs(np.nan_to_num(secs.astype(float))) >= INT64_MAX / 1000)
        ms = pa.array(np.where(bad | ~valid, 0, secs).astype(np.int64) * 1000, mask=bad | ~valid)
        return ms.cast(TS), bad


def _conform_column(step: str, arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if step == KEEP:
        return arr, _none(len(arr))
    if step == CAST:
        return arr.cast(target), _none(len(arr))
    if step == TS_CAST:
        return _cast_ts(arr)
    if step == TS_CHECKED:
        return _checked_ts(arr)
    if step == ID_CHECKED:
        return _checked_ids(arr)
    if step == TEXT_CHECKED:
        return utf8(arr)
    raise ValueError(step)


def _apply(plan: _Plan, raw: pa.Table, source: str) -> EventBatch:
    n = raw.num_rows
    bad = np.full(n, None, dtype=object)
    columns = []
    for f in EVENT.schema:
        step = plan.steps.get(f.name, NULLS)
        if step == NULLS:
            columns.append(pa.nulls(n, f.type))
            continue
        arr = raw.column(f.name).combine_chunks()
        typed, unreadable = _conform_column(step, arr, f.type)
        if unreadable.any():
            if f.name in OPTIONAL:  # an optional value that cannot be read is dropped, never the event
                typed = pc.if_else(pa.array(unreadable), pa.scalar(None, f.type), typed)
            else:
                bad[unreadable & no_reason(bad)] = f"bad_type:{f.name}"
        columns.append(typed)
    return EventBatch(pa.Table.from_arrays(columns, schema=EVENT.schema), bad, raw, source)


def conform_events(table: pa.Table, source: str = "input") -> EventBatch | FileProblem:
    """An in-memory table conformed like a file (the same plan, the same casts)."""
    plan = plan_schema(table.schema, source, table.num_rows)
    if isinstance(plan, FileProblem):
        return plan
    return _apply(plan, table, source)


# -- files ----------------------------------------------------------------------------------------


def event_files(partition: Path) -> list[Path]:
    """The data files of one event partition: ``*.parquet``, not hidden (``.``/``_``), sorted."""
    return sorted(p for p in Path(partition).glob("*.parquet") if p.name[0] not in "._" and not p.is_dir())


def splits_for(path: Path, split_bytes: int = 128 * 2**20) -> int:
    """How many tasks read a file: one per ``split_bytes`` (each takes every n-th row group)."""
    return max(1, -(-os.path.getsize(path) // split_bytes))


def read_event_file(
    path: Path | str,
    *,
    columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    split: int = 0,
    splits: int = 1,
) -> Iterator[EventBatch | FileProblem]:
    """Read one event file: conformed batches, or `FileProblem` records for what cannot be used.

    ``columns``: the optional contract columns wanted (default: all; required ones are always
    read). ``split``/``splits``: read only the row groups ``g`` with ``g % splits == split`` (file-wide
    problems are reported by split 0 only), so one large file can be read by several tasks.
    A row group is read whole before anything of it is yielded: a decoding error quarantines the
    row group, never half of it.
    """
    source = str(path)
    try:
        pf = pq.ParquetFile(source)
        schema, meta = pf.schema_arrow, pf.metadata
    except NOT_DATA_ERRORS:
        raise
    except Exception as exc:  # whatever the decoder says, the file is unusable
        if split == 0:
            yield FileProblem(source, "unreadable_file", _say(exc), 0)
        return
    plan = plan_schema(schema, source, meta.num_rows, columns)
    if isinstance(plan, FileProblem):
        if split == 0:
            yield plan
        return
    for group in range(split, meta.num_row_groups, splits):
        group_rows = meta.row_group(group).num_rows
        try:
            raw = pf.read_row_group(group, columns=plan.read)
            batches = [_apply(plan, part, source) for part in _slices(raw, batch_rows)]
        except NOT_DATA_ERRORS:
            raise
        except Exception as exc:  # a row group that cannot be decoded
            where = f"row group {group} of {meta.num_row_groups}: " if meta.num_row_groups > 1 else ""
            yield FileProblem(source, "unreadable_file", where + _say(exc), group_rows)
            continue
        yield from batches


def _slices(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    for start in range(0, max(table.num_rows, 1), max(1, rows)):
        part = table.slice(start, rows)
        if part.num_rows:
            yield part


def _say(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
