"""The Spark hourly sequence update against the plain-Python reference, on real local Spark.

One small generated log (40 users, 4 hours, late arrivals, malformed rows, exact duplicates inside
an hour, re-sent copies one hour later, null attributes, N=6 so most users overflow) plus an empty
published hour. The chain of hourly runs is computed once per module and checked from several sides.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.hourly import backfill_sequences, previous_state_time, update_sequences
from soe.atomic import is_complete, publish_dir, read_marker
from soe.config import load_settings
from soe.contracts import EVENT, SEQUENCE, TS, conform
from soe.datasets.synthetic import GeneratedLog, SyntheticConfig, generate, write_log
from soe.layout import HOUR, utc
from soe.validation import QUARANTINE_SCHEMA
from tests.test_pipelines_reference import Reference, read_sequences

START = utc("2026-01-01T00:00Z")
HOURS = 4  # hours with events; hour 4 is published empty
MAX_LEN = 6
SHARDS = 3


def make_settings(root, **extra):
    env = {"SOE_DATA__ROOT": str(root), "SOE_SEQUENCES__MAX_LEN": str(MAX_LEN),
           "SOE_SEQUENCES__NUM_SHARDS": str(SHARDS), "SOE_SEQUENCES__STATE_FILES": "2",
           "SOE_SEQUENCES__BOOTSTRAP_LOOKBACK_HOURS": "3", **extra}
    return load_settings(environ=env)


def write_messy_log(layout, hours: int = HOURS, seed: int = 7) -> None:
    log = generate(SyntheticConfig(n_users=40, n_items=300, n_clusters=4, hours=hours, base_events_per_user=25,
                                   late_fraction=0.15, malformed_fraction=0.03, seed=seed))
    rng = np.random.default_rng(seed)
    n_valid = log.manifest["n_valid_events"]
    events = log.events
    # null attributes on 10 % of the rows (real logs, e.g. MovieLens, have no advertiser)
    mask = pa.array(rng.random(events.num_rows) < 0.1)
    col = events["advertiser_id"]
    events = events.set_column(events.schema.get_field_index("advertiser_id"), "advertiser_id",
                               pc.if_else(mask, pa.nulls(events.num_rows, pa.int64()), col))
    # at-least-once delivery: 25 valid events re-sent one hour after their first arrival (recent ones,
    # still in their user's last N, so most are caught by the check against the state)
    ts = events["ts"].cast(pa.int64()).to_numpy()[:n_valid]
    in_hour = ts // 1000 % 3600
    early = np.flatnonzero((log.arrival_hour[:n_valid] < log.arrival_hour.max()) & (in_hour > 3000))
    resent = rng.choice(early, 25, replace=False)
    events = pa.concat_tables([events, events.take(pa.array(resent))])
    arrival = np.concatenate([log.arrival_hour, log.arrival_hour[resent] + 1])
    write_log(GeneratedLog(events, arrival, log.users, log.items, log.manifest), layout)
    with publish_dir(layout.event_partition(START + timedelta(hours=hours)), {"rows": 0}) as tmp:
        pq.write_table(EVENT.schema.empty_table(), tmp / "part-00000.parquet")


def active_sequences(layout, as_of) -> dict:
    out = {}
    for i in range(SHARDS):
        shard = read_sequences(layout.active_shard(as_of, i))
        assert not set(shard) & set(out), "a user in two shards"
        out.update(shard)
    return out


@pytest.fixture(scope="module")
def chain(spark, tmp_path_factory):
    """Hourly runs for hours 0..4 (4 is empty), each with the reference's answer beside it."""
    settings = make_settings(tmp_path_factory.mktemp("chain") / "data")
    layout = settings.layout()
    write_messy_log(layout)
    ref = Reference(settings.events, MAX_LEN)
    runs = []
    for h in range(HOURS + 1):
        start = START + timedelta(hours=h)
        manifest = update_sequences(settings, start, start + HOUR, spark=spark)
        expected = ref.run(layout, start, start + HOUR)
        runs.append((manifest, expected, {u: list(s) for u, s in ref.state.items()}))
    return settings, runs


def test_every_hour_matches_the_reference(chain):
    settings, runs = chain
    layout = settings.layout()
    for manifest, expected, state in runs:
        as_of = utc(manifest["as_of"])
        assert read_sequences(layout.state(as_of)) == state
        assert active_sequences(layout, as_of) == expected["active"]
        assert manifest["reasons"] == expected["reasons"]
        assert manifest["valid_events"] == expected["valid_events"]
        assert manifest["active_users"] == len(expected["active"])
        assert manifest["state_users"] == len(state)
    first = runs[0][0]
    assert first["mode"] == "bootstrap" and all(m["mode"] == "incremental" for m, _, _ in runs[1:])


def test_the_messy_cases_really_occur(chain):
    """Guard against a test that passes because the data was too clean."""
    settings, runs = chain
    assert sum(e["repeats_of_state"] for _, e, _ in runs) >= 5  # re-sent copies caught against the state
    assert sum(m["reasons"].get("duplicate", 0) for m, _, _ in runs) > sum(e["repeats_of_state"] for _, e, _ in runs)
    assert any(len(s) == MAX_LEN for s in runs[-1][2].values())  # users cut to N
    late = pq.read_table(settings.layout().event_partition(START + HOUR))
    assert pc.min(late["ts"].cast(pa.int64())).as_py() < int((START + HOUR).timestamp() * 1000)  # late events
    nulls = [e for s in runs[-1][2].values() for e in s if e[4] is None]
    assert nulls, "null attributes reach the sequences"


def test_empty_hour_gives_empty_but_valid_outputs(chain):
    settings, runs = chain
    layout = settings.layout()
    manifest, expected, state = runs[-1]
    as_of = utc(manifest["as_of"])
    assert manifest["active_users"] == 0 and manifest["valid_events"] == 0 and manifest["quarantined"] == 0
    assert manifest["shard_sizes"] == [0] * SHARDS
    for i in range(SHARDS):
        assert pq.read_table(layout.active_shard(as_of, i)).num_rows == 0
    assert read_sequences(layout.state(as_of)) == runs[-2][2]
    assert is_complete(layout.quarantine(as_of)) and read_marker(layout.quarantine(as_of))["counts"] == {}


def test_outputs_keep_the_contracts(chain):
    settings, runs = chain
    layout = settings.layout()
    as_of = utc(runs[2][0]["as_of"])
    for path in [layout.state(as_of), layout.active_shard(as_of, 0)]:
        table = pq.read_table(path)
        assert table.schema.field("as_of").type == TS
        assert table.schema.field("ts").type.value_type == TS  # Spark wrote milliseconds, UTC
        conformed = conform(table, SEQUENCE)
        assert conformed.schema.equals(SEQUENCE.schema)
        assert pc.all(pc.equal(conformed["n_events"], pc.list_value_length(conformed["item_id"]))).as_py()
        assert set(conformed["as_of"].to_pylist()) == {as_of}
    q = pq.read_table(layout.quarantine(as_of))
    assert q.schema.names == QUARANTINE_SCHEMA.names and q.num_rows == runs[2][0]["quarantined"]


def test_shards_are_balanced_and_named(chain):
    settings, runs = chain
    layout = settings.layout()
    for manifest, _, _ in runs:
        sizes = manifest["shard_sizes"]
        assert len(sizes) == SHARDS and max(sizes) - min(sizes) <= 1
        marker = read_marker(layout.active(utc(manifest["as_of"])))
        assert marker["num_shards"] == SHARDS and marker["shard_sizes"] == sizes
        names = sorted(p.name for p in layout.active(utc(manifest["as_of"])).iterdir())
        assert names == ["_SUCCESS"] + [f"shard={i:05d}.parquet" for i in range(SHARDS)]


def test_rerun_of_an_older_interval_is_identical_and_leaves_newer_states_alone(chain, spark):
    settings, runs = chain
    layout = settings.layout()
    h2 = START + timedelta(hours=2)
    newer = {p: p.read_bytes() for t in (4, 5) for p in layout.state(START + timedelta(hours=t)).iterdir()}
    # the rerun also takes the other join strategy (no broadcast): same content
    other = make_settings(settings.data.root, SOE_SEQUENCES__BROADCAST_ACTIVE_IDS="false")
    again = update_sequences(other, h2, h2 + HOUR, spark=spark)
    first = runs[2][0]
    drop = ("seconds", "phase_seconds", "state_users")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in first.items() if k not in drop}
    assert read_sequences(layout.state(h2 + HOUR)) == runs[2][2]
    assert active_sequences(layout, h2 + HOUR) == runs[2][1]["active"]
    assert {p: p.read_bytes() for p in newer} == newer
    assert previous_state_time(layout, h2 + HOUR) == h2


def test_bootstrap_reads_the_lookback_and_matches_the_chain(spark, tmp_path):
    """No previous state: hours [1, 3) are rebuilt as history, hour 3 merged as an hourly run."""
    chain_root = tmp_path / "src"
    settings = make_settings(tmp_path / "data")
    write_messy_log(load_settings(environ={"SOE_DATA__ROOT": str(chain_root)}).layout())
    shutil.copytree(chain_root / "events", settings.data.root / "events")
    layout = settings.layout()
    h3 = START + timedelta(hours=3)
    manifest = update_sequences(settings, h3, h3 + HOUR, spark=spark)  # lookback 3 h: history = hours 1, 2

    ref = Reference(settings.events, MAX_LEN)
    ref.run(layout, START + HOUR, h3)
    expected = ref.run(layout, h3, h3 + HOUR)
    assert manifest["mode"] == "bootstrap" and manifest["previous_state"] is None
    assert read_sequences(layout.state(h3 + HOUR)) == ref.state
    assert active_sequences(layout, h3 + HOUR) == expected["active"]
    assert manifest["reasons"] == expected["reasons"]


def test_a_crash_before_publishing_leaves_nothing_that_looks_complete(spark, tmp_path, monkeypatch):
    import pipelines.hourly as hourly

    settings = make_settings(tmp_path / "data")
    layout = settings.layout()
    write_messy_log(layout, hours=2, seed=3)

    def crash(directory):  # the state files are fully written in the temp dir, the marker is not
        assert list(directory.glob("*.parquet"))
        raise RuntimeError("executor lost")

    monkeypatch.setattr(hourly, "_rows", crash)
    as_of = START + HOUR
    with pytest.raises(RuntimeError):
        update_sequences(settings, START, as_of, spark=spark)
    assert not layout.state(as_of).exists() and not layout.active(as_of).exists()
    assert previous_state_time(layout, as_of + HOUR) is None  # readers see no state at all
    assert not [p for p in layout.state_root.iterdir() if is_complete(p)]

    monkeypatch.undo()
    manifests = backfill_sequences(settings, START, as_of, spark=spark)  # the retry repairs it
    ref = Reference(settings.events, MAX_LEN)
    expected = ref.run(layout, START, as_of)
    assert [m["mode"] for m in manifests] == ["bootstrap"]
    assert read_sequences(layout.state(as_of)) == ref.state
    assert active_sequences(layout, as_of) == expected["active"]


def test_interval_must_be_whole_hours(settings):
    with pytest.raises(ValueError, match="whole hours"):
        update_sequences(settings, START, START + timedelta(minutes=30), spark=object())
