"""Bad input never blocks the pipeline, and nothing good is lost: per-file and per-row quarantine.

A catalogue of bad event files, each written with pyarrow the way a real producer gets it wrong
(pandas' ``timestamp[ns]``, ids as text or uint64, zero-byte and truncated files, a missing column,
bytes that are not UTF-8, ...). Each kind is checked on its own with the one reader and the rules
(`core.validation.validate_files`, no Spark); then all of them share one arrival hour with a good
file, and ``soe validate`` (the typer app) and the Spark step (``soe sequences``) must report the
same counts per reason, keep the good rows, quarantine each bad file as one record naming it, and
let the following hour run.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.bad_input import (  # the catalogue of bad kinds, shared with bench/chaos.py
    KINDS,
    RULES,
    TYPES,
    H,
    T,
    contract_table,
    event,
    expected_totals,
    zero_bytes,
)
from core.atomic import publish_dir, read_marker
from core.contracts import EVENT
from core.layout import HOUR, Layout
from core.validation import QUARANTINE_SCHEMA, validate_files
from soe.cli.app import app
from tests.fixtures.spark import TEST_SPARK_CONF

runner = CliRunner()


# -- each kind on its own (the reader and the rules, no Spark) -----------------------------------


@pytest.mark.parametrize("name", list(KINDS))
def test_each_bad_kind_alone(tmp_path, name):
    kind = KINDS[name]
    path = tmp_path / f"{name}.parquet"
    kind.write(path)
    result = validate_files([path], RULES)
    assert result.counts == kind.counts
    assert result.n_valid == kind.valid
    assert result.valid.schema.equals(EVENT.schema, check_metadata=False)
    assert result.quarantine.schema.equals(QUARANTINE_SCHEMA)
    files = result.quarantine.filter(pa.compute.is_valid(result.quarantine["detail"]))
    if kind.whole_file:  # one record naming the file, its reason and the rows lost
        assert files["source_file"].to_pylist() == [str(path)] and len(result.files) == 1
        assert files["rows"].to_pylist() == list(kind.counts.values())
        assert str(path) in result.files[0].message() and "re-run" in result.files[0].message()
    else:
        assert files.num_rows == 0 and not result.files


def test_the_values_of_safe_and_checked_casts(tmp_path):
    read = {}
    names = ("ts_ns_naive", "ts_us_tz_aware", "ts_seconds", "narrow_types", "optional_attribute_wrong_type",
             "not_utf8_text", "user_id_uint64", "user_id_as_text", "ts_as_text")
    for name in names:
        KINDS[name].write(tmp_path / f"{name}.parquet")
        read[name] = validate_files([tmp_path / f"{name}.parquet"], RULES).valid
    assert read["ts_ns_naive"]["ts"].to_pylist() == [T, T]  # sub-millisecond digits dropped
    assert read["ts_us_tz_aware"]["ts"].to_pylist() == [T, T]  # the instant, whatever the zone
    assert read["ts_seconds"]["ts"].to_pylist() == [T, T]
    assert read["narrow_types"]["user_id"].to_pylist() == [4901, 4902]
    assert read["narrow_types"]["device"].to_pylist() == ["ios", "ios"]
    attrs = read["optional_attribute_wrong_type"]
    assert attrs["category_id"].to_pylist() == [None] * 3  # bool attribute: nulled, the events kept
    assert attrs["advertiser_id"].to_pylist() == [4, None, None]
    assert attrs["campaign_id"].to_pylist() == [1, None, None]
    text = read["not_utf8_text"]
    assert text["user_id"].to_pylist() == [4701, 4702, 4704]
    assert text["device"].to_pylist() == [None, "web", "ctv"]
    assert text["country"].to_pylist() == ["US", None, None]
    assert read["user_id_uint64"]["user_id"].to_pylist() == [3001, 3002]
    assert read["user_id_as_text"]["user_id"].to_pylist() == [2001, 2002]  # "007" is not a canonical id
    assert read["ts_as_text"]["ts"].to_pylist() == [H + timedelta(minutes=20), H + timedelta(minutes=21)]


# -- every kind in one hour: soe validate == the Spark step; the next hour runs -------------------


def env_for(root: Path) -> dict[str, str]:
    """`soe` settings on the test's data root, sized like the shared Spark session of the fixture."""
    return {"SOE_DATA__ROOT": str(root), "SOE_SPARK__MASTER": "local[2]",
            "SOE_SPARK__SHUFFLE_PARTITIONS": "2", "SOE_SPARK__ARROW_BATCH_ROWS": "500",
            "SOE_SPARK__CONF": json.dumps(TEST_SPARK_CONF),
            "SOE_SEQUENCES__NUM_SHARDS": "2", "SOE_SEQUENCES__STATE_FILES": "1"}


def write_bad_hour(layout: Layout) -> dict[str, Path]:
    paths = {}
    with publish_dir(layout.event_partition(H), {}) as tmp:
        for i, (name, kind) in enumerate(KINDS.items()):
            kind.write(tmp / f"part-{i:05d}.parquet")
            paths[name] = layout.event_partition(H) / f"part-{i:05d}.parquet"
    return paths


def write_next_hour(layout: Layout) -> None:
    """5 new events, a re-delivery of an event of the bad hour (a duplicate across hours), an empty file."""
    rows = [event(1001 + i, ts=H + HOUR + timedelta(minutes=10, seconds=i)) for i in range(5)]
    resent = event(1006, ts=T + timedelta(seconds=5), event_type=TYPES[0])  # = good row 5 of the bad hour
    with publish_dir(layout.event_partition(H + HOUR), {}) as tmp:
        pq.write_table(contract_table(rows + [resent]), tmp / "part-00000.parquet")
        zero_bytes(tmp / "part-00001.parquet")


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def interval(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%dT%H:%MZ}/{end:%Y-%m-%dT%H:%MZ}"


@pytest.fixture(scope="module")
def bad_log(tmp_path_factory, spark):
    """The bad hour and the next one, validated by `soe validate` and run by `soe sequences` (CLI)."""
    root = tmp_path_factory.mktemp("bad_input")
    layout = Layout(root)
    paths = write_bad_hour(layout)
    write_next_hour(layout)
    env = env_for(root)
    out = {"layout": layout, "paths": paths}
    h1, h2 = interval(H, H + HOUR), interval(H + HOUR, H + 2 * HOUR)
    out["validate_h"] = runner.invoke(app, ["validate", "--interval", h1], env=env)
    out["validate_both"] = runner.invoke(app, ["validate", "--interval", interval(H, H + 2 * HOUR)], env=env)
    out["sequences_h"] = runner.invoke(app, ["sequences", "--interval", h1], env=env)
    out["sequences_next"] = runner.invoke(app, ["sequences", "--interval", h2], env=env)
    return out


def test_soe_validate_reports_every_kind_without_a_traceback(bad_log):
    r = bad_log["validate_h"]
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    summary = last_json(r.output)
    valid, counts = expected_totals()
    assert summary["valid"] == valid and summary["reasons"] == counts
    assert summary["quarantined"] == sum(counts.values())
    whole = {str(bad_log["paths"][n]) for n, k in KINDS.items() if k.whole_file}
    assert {f["file"] for f in summary["quarantined_files"]} == whole
    warnings = [line for line in r.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(whole)  # one clear line per file: the file, the problem, what to do
    for line in warnings:
        assert any(f in line for f in whole) and "re-run this hour" in line


def test_spark_step_counts_equal_soe_validate(bad_log):
    r = bad_log["sequences_h"]
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    manifest = last_json(r.output)
    summary = last_json(bad_log["validate_h"].output)
    assert manifest["reasons"] == summary["reasons"]  # every reason, duplicates (25, not 20) included
    assert manifest["valid_events"] == summary["valid"] and manifest["quarantined"] == summary["quarantined"]


def test_spark_quarantine_holds_one_record_per_bad_file_and_the_good_rows_are_in_the_state(bad_log):
    layout = bad_log["layout"]
    q = pq.read_table(layout.quarantine(H + HOUR))
    assert q.schema.names == QUARANTINE_SCHEMA.names
    columns = [q[c].to_pylist() for c in ("source_file", "reason", "rows", "detail")]
    records = {p: (reason, rows) for p, reason, rows, detail in zip(*columns) if detail is not None}
    for name, kind in KINDS.items():
        if kind.whole_file:
            assert records[str(bad_log["paths"][name])] == next(iter(kind.counts.items()))
    assert len(records) == sum(k.whole_file for k in KINDS.values())
    row_records = q.filter(pa.compute.equal(q["reason"], "bad_type:user_id"))
    assert sorted(row_records["user_id"].to_pylist()) == sorted(["abc", "007", "99999999999999999999",
                                                                 str(2**63), str(2**64 - 1)])
    assert set(row_records["source_file"].to_pylist()) == {str(bad_log["paths"]["user_id_as_text"]),
                                                           str(bad_log["paths"]["user_id_uint64"])}
    from core.sequence_state import StateSnapshot

    users = set(StateSnapshot(layout.state(H + HOUR)).read_table()["user_id"].to_pylist())
    good_users = {1001 + i for i in range(21)} | {2001, 2002, 3001, 3002, 4001, 4002, 4101, 4102, 4201, 4202,
                                                  4301, 4302, 4701, 4702, 4704, 4801, 4802, 4803, 4901, 4902,
                                                  5201, 5202}
    assert users == good_users


def test_the_following_hour_runs_and_agrees_with_soe_validate(bad_log):
    r = bad_log["sequences_next"]
    assert r.exit_code == 0, r.output
    manifest = last_json(r.output)
    assert manifest["mode"] == "incremental" and manifest["valid_events"] == 5
    assert manifest["reasons"] == {"duplicate": 1, "unreadable_file": 0}  # the re-delivery, the empty file
    assert read_marker(bad_log["layout"].active(H + 2 * HOUR))["active_users"] == 5
    both = last_json(bad_log["validate_both"].output)  # the two hours in one call: the re-delivery is seen
    first = last_json(bad_log["sequences_h"].output)
    summed = dict(first["reasons"])
    for reason, n in manifest["reasons"].items():
        summed[reason] = summed.get(reason, 0) + n
    assert both["reasons"] == dict(sorted(summed.items()))
    assert both["valid"] == first["valid_events"] + manifest["valid_events"]


def test_read_validated_without_context_keeps_the_same_valid_rows(bad_log, spark):
    """The history reads (bootstrap, rebuild, training sets) skip the context columns: same valid rows."""
    from pipelines import events as ev
    from soe.config import load_settings

    settings = load_settings(environ=env_for(bad_log["layout"].root))
    parts = [bad_log["layout"].event_partition(H)]
    slim = ev.read_validated(spark, bad_log["layout"], parts, settings.events, keep_raw=False)
    full = ev.read_validated(spark, bad_log["layout"], parts, settings.events)
    key = list(ev.SEQ_KEY)
    a = ev.valid_events(slim).select(*key).toArrow().sort_by([(c, "ascending") for c in key])
    b = ev.valid_events(full).select(*key).toArrow().sort_by([(c, "ascending") for c in key])
    assert a.num_rows == b.num_rows == expected_totals()[0] + 25  # + the 25 duplicates, not yet removed
    assert a.equals(b)
