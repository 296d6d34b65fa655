"""Bad event files, written with pyarrow the way real producers get them wrong: one writer per kind.

Shared by ``tests/test_bad_input.py`` (each kind through the reader and the rules, then all of them in
one hour through ``soe validate`` and the Spark step) and ``bench/chaos.py`` (the same kinds, plus
`EXTRA_KINDS`, in one hour of a running world, checked against what readers see).

`KINDS`: the catalogue the tests pin exactly (valid rows, quarantine reasons, whole-file or not).
`GOOD_USERS`: the users whose rows are valid by construction in each kind (they must reach the state).
`EXTRA_KINDS`: more kinds for the chaos campaign, pinned only by what is unambiguous (the rows that
are valid by construction and their users); every kind writes its rows at ``T`` of hour ``H``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.contracts import EVENT
from core.layout import HOUR
from core.validation import ValidationRules

H = datetime(2026, 1, 1, 5, tzinfo=UTC)  # the arrival hour with every bad kind
T = H + timedelta(minutes=30)
TYPES = ("impression", "click", "conversion", "view", "search")
RULES = ValidationRules(event_types=TYPES, interval_start=H, interval_end=H + HOUR, max_lateness_hours=72)
NULLABLE = pa.schema([f.with_nullable(True) for f in EVENT.schema])


def event(user_id, ts=None, event_type="click", item_id=None, **over):
    row = dict(
        user_id=user_id,
        ts=T if ts is None else ts,
        event_type=event_type,
        item_id=100 + (user_id if isinstance(user_id, int) and 0 < user_id < 10**6 else 0),
        category_id=3,
        advertiser_id=4,
        campaign_id=5,
        device="ios",
        country="US",
    )
    if item_id is not None:
        row["item_id"] = item_id
    row.update(over)
    return row


def contract_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=NULLABLE)


def invalid_utf8(values: list[bytes | None]) -> pa.Array:
    """A ``string`` array holding bytes that are not UTF-8 (pyarrow writes it to Parquet unchecked)."""
    data = b"".join(v or b"" for v in values)
    offsets = np.cumsum([0] + [len(v or b"") for v in values]).astype(np.int32)
    validity = pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(
        pa.string(), len(values), [validity, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)]
    )


def set_column(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


# -- the catalogue: one writer per bad kind -------------------------------------------------------


def good_and_row_kinds(path: Path) -> None:
    """20 good rows, a valid late one, 25 duplicates (20 exact, 5 differing only in `device`) and one
    row of each row-level kind."""
    good = [event(1001 + i, ts=T + timedelta(seconds=i), event_type=TYPES[i % 5]) for i in range(20)]
    late = [event(1021, ts=H - timedelta(hours=2))]  # late but inside the lateness window: valid
    dups = [dict(r) for r in good] + [dict(r, device="web") for r in good[:5]]
    bad = [
        event(None),  # null_user_id
        event(-5),  # negative_user_id
        event(0, item_id=7),  # absurd_value:user_id (0: the "no user" sentinel)
        event(2**63 - 1, item_id=8),  # absurd_value:user_id (int64 max)
        event(1101, ts=None) | {"ts": None},  # null_ts
        event(1102, ts=H + HOUR + timedelta(minutes=5)),  # ts_after_interval (from the run's future)
        event(1103, ts=H - timedelta(hours=100)),  # ts_before_lateness_window
        event(1104, ts=datetime(1999, 12, 31, tzinfo=UTC)),  # absurd_value:ts
        event(1105, event_type="hover"),  # unknown_event_type
        event(1106, event_type=None),  # null_event_type
        event(1107) | {"item_id": None},  # null_item_id
        event(1108, category_id=-7),  # absurd_value:category_id
    ]
    pq.write_table(contract_table(good + late + dups + bad), path)


def user_id_as_text(path: Path) -> None:
    t = contract_table([event(2001 + i) for i in range(5)])
    ids = pa.array(["2001", "2002", "abc", "007", "99999999999999999999"])
    pq.write_table(t.set_column(0, "user_id", ids), path)


def user_id_uint64(path: Path) -> None:
    t = contract_table([event(3001 + i) for i in range(4)])
    pq.write_table(t.set_column(0, "user_id", pa.array([3001, 3002, 2**63, 2**64 - 1], pa.uint64())), path)


def ts_ns_naive(path: Path) -> None:  # pandas' default: nanoseconds, no zone (UTC by contract)
    t = contract_table([event(4001), event(4002)])
    ns = pa.array([ms(T) * 10**6 + 123_456, ms(T) * 10**6 + 999_999], pa.timestamp("ns"))
    pq.write_table(t.set_column(1, "ts", ns), path)


def ts_us_tz_aware(path: Path) -> None:
    t = contract_table([event(4101), event(4102)])
    pq.write_table(t.set_column(1, "ts", t["ts"].cast(pa.timestamp("us", tz="America/New_York"))), path)


def ts_seconds(path: Path) -> None:
    t = contract_table([event(4201), event(4202)])
    pq.write_table(t.set_column(1, "ts", t["ts"].cast(pa.timestamp("s", tz="UTC"))), path)


def ts_as_text(path: Path) -> None:
    t = contract_table([event(4301), event(4302), event(4303)])
    text = pa.array(["2026-01-01T05:20:00Z", "2026-01-01 05:21:00", "yesterday"])
    pq.write_table(t.set_column(1, "ts", text), path)


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    pq.write_table(contract_table([event(4401 + i) for i in range(10)]), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def not_parquet(path: Path) -> None:
    path.write_text("user_id,ts,event_type,item_id\n4501,2026-01-01T05:30:00Z,click,1\n")


def missing_required_column(path: Path) -> None:
    pq.write_table(contract_table([event(4601 + i) for i in range(7)]).drop_columns(["item_id"]), path)


def not_utf8_text(path: Path) -> None:
    """device / country bytes that are not UTF-8 null that value only; in event_type they reject the row."""
    t = contract_table([event(4701 + i) for i in range(4)])
    t = set_column(t, "device", invalid_utf8([b"\xff\xfeios", b"web", b"ios", b"ctv"]))
    t = set_column(t, "country", invalid_utf8([b"US", b"D\xe9", b"US", None]))
    t = t.set_column(2, "event_type", invalid_utf8([b"click", b"view", b"cl\xffick", b"view"]))
    pq.write_table(t, path)


def optional_attribute_wrong_type(path: Path) -> None:
    t = contract_table([event(4801 + i) for i in range(3)])
    t = set_column(t, "category_id", pa.array([True, False, None]))
    t = set_column(t, "advertiser_id", pa.array(["4", "x", None]))
    t = set_column(t, "campaign_id", pa.array([1.0, 2.5, None]))
    pq.write_table(t, path)


def narrow_types(path: Path) -> None:  # int32 / int16 / uint32 ids, large_string, dictionary text: safe casts
    t = contract_table([event(4901), event(4902)])
    t = t.set_column(0, "user_id", t["user_id"].cast(pa.int32()))
    t = t.set_column(3, "item_id", t["item_id"].cast(pa.int16()))
    t = set_column(t, "category_id", t["category_id"].cast(pa.uint32()))
    t = t.set_column(2, "event_type", t["event_type"].cast(pa.large_string()))
    t = set_column(t, "device", t["device"].combine_chunks().dictionary_encode())
    pq.write_table(t, path)


def user_id_bool(path: Path) -> None:
    t = contract_table([event(5001 + i) for i in range(3)])
    pq.write_table(t.set_column(0, "user_id", pa.array([True, False, True])), path)


def event_type_int(path: Path) -> None:
    t = contract_table([event(5101), event(5102)])
    pq.write_table(t.set_column(2, "event_type", pa.array([1, 2], pa.int64())), path)


def only_required_plus_unknown_column(path: Path) -> None:
    t = contract_table([event(5201), event(5202)]).select(["user_id", "ts", "event_type", "item_id"])
    pq.write_table(t.append_column("session", pa.array(["a", "b"])), path)


def another_contract(path: Path) -> None:
    t = contract_table([event(5301)])
    pq.write_table(t.replace_schema_metadata({"soe.contract": "sequence", "soe.contract_version": "1"}), path)


def newer_contract_version(path: Path) -> None:
    t = contract_table([event(5401), event(5402)])
    pq.write_table(t.replace_schema_metadata({"soe.contract": "event", "soe.contract_version": "9"}), path)


@dataclass(frozen=True)
class Kind:
    write: Callable[[Path], None]
    valid: int  # rows of the file that are valid
    counts: dict[str, int]  # reason -> rows
    whole_file: bool = False  # quarantined as one record


KINDS: dict[str, Kind] = {
    "good_and_row_kinds": Kind(
        good_and_row_kinds,
        21,
        {
            "duplicate": 25,
            "null_user_id": 1,
            "negative_user_id": 1,
            "absurd_value:user_id": 2,
            "null_ts": 1,
            "ts_after_interval": 1,
            "ts_before_lateness_window": 1,
            "absurd_value:ts": 1,
            "unknown_event_type": 1,
            "null_event_type": 1,
            "null_item_id": 1,
            "absurd_value:category_id": 1,
        },
    ),
    "user_id_as_text": Kind(user_id_as_text, 2, {"bad_type:user_id": 3}),
    "user_id_uint64": Kind(user_id_uint64, 2, {"bad_type:user_id": 2}),
    "ts_ns_naive": Kind(ts_ns_naive, 2, {}),
    "ts_us_tz_aware": Kind(ts_us_tz_aware, 2, {}),
    "ts_seconds": Kind(ts_seconds, 2, {}),
    "ts_as_text": Kind(ts_as_text, 2, {"bad_type:ts": 1}),
    "zero_bytes": Kind(zero_bytes, 0, {"unreadable_file": 0}, True),
    "truncated": Kind(truncated, 0, {"unreadable_file": 0}, True),
    "not_parquet": Kind(not_parquet, 0, {"unreadable_file": 0}, True),
    "missing_required_column": Kind(missing_required_column, 0, {"missing_column:item_id": 7}, True),
    "not_utf8_text": Kind(not_utf8_text, 3, {"bad_type:event_type": 1}),
    "optional_attribute_wrong_type": Kind(optional_attribute_wrong_type, 3, {}),
    "narrow_types": Kind(narrow_types, 2, {}),
    "user_id_bool": Kind(user_id_bool, 0, {"bad_physical_type:user_id:bool": 3}, True),
    "event_type_int": Kind(event_type_int, 0, {"bad_physical_type:event_type:int64": 2}, True),
    "only_required_plus_unknown_column": Kind(only_required_plus_unknown_column, 2, {}),
    "another_contract": Kind(another_contract, 0, {"unsupported_contract": 1}, True),
    "newer_contract_version": Kind(newer_contract_version, 0, {"unsupported_contract": 2}, True),
}


def expected_totals() -> tuple[int, dict[str, int]]:
    valid, counts = 0, {}
    for kind in KINDS.values():
        valid += kind.valid
        for reason, n in kind.counts.items():
            counts[reason] = counts.get(reason, 0) + n
    return valid, dict(sorted(counts.items()))


# users with valid rows in each kind of KINDS (one valid row each, except 1001-1021: see below)
GOOD_USERS: dict[str, set[int]] = {
    "good_and_row_kinds": set(range(1001, 1022)),
    "user_id_as_text": {2001, 2002},
    "user_id_uint64": {3001, 3002},
    "ts_ns_naive": {4001, 4002},
    "ts_us_tz_aware": {4101, 4102},
    "ts_seconds": {4201, 4202},
    "ts_as_text": {4301, 4302},
    "not_utf8_text": {4701, 4702, 4704},
    "optional_attribute_wrong_type": {4801, 4802, 4803},
    "narrow_types": {4901, 4902},
    "only_required_plus_unknown_column": {5201, 5202},
}


# -- more kinds (the chaos campaign) ----------------------------------------------------------------


def empty_table(path: Path) -> None:  # a valid file with the contract's schema and no rows
    pq.write_table(contract_table([]), path)


def user_id_all_null_type(path: Path) -> None:  # a column of pyarrow's ``null`` type
    t = contract_table([event(6001 + i) for i in range(3)])
    pq.write_table(t.set_column(0, "user_id", pa.nulls(3)), path)


def user_id_float(path: Path) -> None:  # ids as float64: none is unambiguously valid
    t = contract_table([event(6101 + i) for i in range(3)])
    pq.write_table(t.set_column(0, "user_id", pa.array([6101.0, 6102.5, float("nan")])), path)


def ts_far_future_and_good(path: Path) -> None:  # one row in year 3000, one good row
    pq.write_table(contract_table([event(6201), event(6202, ts=datetime(3000, 1, 1, tzinfo=UTC))]), path)


def huge_attribute_string(path: Path) -> None:  # a 1 MiB device string in two good rows
    pq.write_table(contract_table([event(6301, device="x" * 2**20), event(6302, country="U" * 2**20)]), path)


def one_row_per_row_group(path: Path) -> None:  # 40 good rows, 40 row groups
    rows = [event(6401 + i, ts=T + timedelta(seconds=i)) for i in range(40)]
    pq.write_table(contract_table(rows), path, row_group_size=1)


def item_id_as_list(path: Path) -> None:  # a nested type where an id belongs
    t = contract_table([event(6451), event(6452)])
    pq.write_table(t.set_column(3, "item_id", pa.array([[1, 2], [3]], pa.list_(pa.int64()))), path)


def extra_struct_column(path: Path) -> None:  # an unknown nested column beside good rows
    t = contract_table([event(6501), event(6502)])
    pq.write_table(t.append_column("ctx", pa.array([{"a": 1}, {"a": 2}])), path)


def duplicate_across_files(path: Path) -> None:  # the same 3 good rows in two files of the hour
    rows = [event(6601 + i, ts=T + timedelta(seconds=i)) for i in range(3)]
    pq.write_table(contract_table(rows), path)
    pq.write_table(contract_table(rows), path.with_name(path.stem + "-copy.parquet"))


def hidden_temp_file(path: Path) -> None:  # a producer's crash leftover: ignored (hidden), not read
    pq.write_table(contract_table([event(6701)]), path.with_name("." + path.name + ".tmp-1"))


def not_a_parquet_name(path: Path) -> None:  # a stray text file in the partition: not an event file
    path.with_suffix(".txt").write_text("written by hand\n")


def event_type_case_and_good(path: Path) -> None:  # "CLICK" is not in the vocabulary; one good row
    pq.write_table(contract_table([event(6801), event(6802, event_type="CLICK")]), path)


def ts_int_epoch_ms(path: Path) -> None:  # ts as a bare int64 (epoch ms): not the contract's type
    t = contract_table([event(6901), event(6902)])
    pq.write_table(t.set_column(1, "ts", pa.array([ms(T), ms(T) + 1], pa.int64())), path)


def fully_duplicated_hour_file(path: Path) -> None:  # a file re-delivered whole (= good_and_row_kinds)
    good_and_row_kinds(path)


@dataclass(frozen=True)
class Extra:
    write: Callable[[Path], None]
    good_users: set[int]  # users with exactly one row that is valid by construction


EXTRA_KINDS: dict[str, Extra] = {
    "empty_table": Extra(empty_table, set()),
    "user_id_all_null_type": Extra(user_id_all_null_type, set()),
    "user_id_float": Extra(user_id_float, set()),
    "ts_far_future_and_good": Extra(ts_far_future_and_good, {6201}),
    "huge_attribute_string": Extra(huge_attribute_string, {6301, 6302}),
    "one_row_per_row_group": Extra(one_row_per_row_group, set(range(6401, 6441))),
    "item_id_as_list": Extra(item_id_as_list, set()),
    "extra_struct_column": Extra(extra_struct_column, {6501, 6502}),
    "duplicate_across_files": Extra(duplicate_across_files, {6601, 6602, 6603}),
    "hidden_temp_file": Extra(hidden_temp_file, set()),
    "not_a_parquet_name": Extra(not_a_parquet_name, set()),
    "event_type_case_and_good": Extra(event_type_case_and_good, {6801}),
    "ts_int_epoch_ms": Extra(ts_int_epoch_ms, set()),
    "fully_duplicated_hour_file": Extra(fully_duplicated_hour_file, set()),  # users: good_and_row_kinds
}


def write_all(directory: Path) -> dict[str, Path]:
    """Every kind of KINDS and EXTRA_KINDS as files of one directory (an hour's partition being built)."""
    paths = {}
    for i, (name, kind) in enumerate([*KINDS.items(), *EXTRA_KINDS.items()]):
        paths[name] = Path(directory) / f"bad-{i:05d}.parquet"
        kind.write(paths[name])
    return paths


def good_rows() -> dict[int, int]:
    """user id -> valid rows by construction of all kinds written together (the hour's good rows)."""
    out: dict[int, int] = {}
    for users in [*GOOD_USERS.values(), *(k.good_users for k in EXTRA_KINDS.values())]:
        for u in users:
            out[u] = 1
    return out
