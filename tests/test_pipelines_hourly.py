"""The Spark hourly sequence update against the plain-Python reference, on real local Spark.

One small generated log (40 users, 4 hours, late arrivals, malformed rows, exact duplicates inside
an hour, re-sent copies one hour later, null attributes, N=6 so most users overflow) plus an empty
published hour. The chain of hourly runs is computed once per module and checked from several sides.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core.atomic import is_complete, publish_dir, read_marker
from core.contracts import EVENT, SEQUENCE, TS, conform
from core.datasets.synthetic import GeneratedLog, SyntheticConfig, generate, write_log
from core.layout import HOUR, utc
from core.sequence_state import StateSnapshot
from core.validation import QUARANTINE_SCHEMA
from pipelines.hourly import backfill_sequences, previous_state_time, update_sequences
from soe.config import load_settings
from tests.test_pipelines_reference import Reference, read_sequences

START = utc("2026-01-01T00:00Z")
HOURS = 4  # hours with events; hour 4 is published empty
MAX_LEN = 6
SHARDS = 3


def make_settings(root, **extra):
    env = {
        "SOE_DATA__ROOT": str(root),
        "SOE_SEQUENCES__MAX_LEN": str(MAX_LEN),
        "SOE_SEQUENCES__NUM_SHARDS": str(SHARDS),
        "SOE_SEQUENCES__STATE_FILES": "2",
        "SOE_SEQUENCES__BOOTSTRAP_LOOKBACK_HOURS": "3",
        # at most 2 delta layers, whatever their size: the chain writes deltas and compacts once
        "SOE_SEQUENCES__COMPACT_MAX_LAYERS": "2",
        "SOE_SEQUENCES__COMPACT_DELTA_RATIO": "100",
        **extra,
    }
    return load_settings(environ=env)


def write_messy_log(layout, hours: int = HOURS, seed: int = 7) -> None:
    log = generate(
        SyntheticConfig(
            n_users=40,
            n_items=300,
            n_clusters=4,
            hours=hours,
            base_events_per_user=25,
            late_fraction=0.15,
            malformed_fraction=0.03,
            seed=seed,
        )
    )
    rng = np.random.default_rng(seed)
    n_valid = log.manifest["n_valid_events"]
    events = log.events
    # null attributes on 10 % of the rows (real logs, e.g. MovieLens, have no advertiser)
    mask = pa.array(rng.random(events.num_rows) < 0.1)
    col = events["advertiser_id"]
    events = events.set_column(
        events.schema.get_field_index("advertiser_id"),
        "advertiser_id",
        pc.if_else(mask, pa.nulls(events.num_rows, pa.int64()), col),
    )
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
        manifest = update_sequences(settings.pipeline(), start, start + HOUR, spark=spark)
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


def test_the_state_is_a_base_plus_linked_deltas_until_a_compaction(chain):
    settings, runs = chain
    layout = settings.layout()
    times = [utc(m["as_of"]) for m, _, _ in runs]
    kinds = [[layer.kind for layer in StateSnapshot(layout.state(t)).layers] for t in times]
    # h0 bootstrap: a base; h1, h2: one delta each; h3 would make 3 > 2 deltas: compaction; h4 is empty
    assert kinds == [["base"], ["base", "delta"], ["base", "delta", "delta"], ["base"], ["base"]]
    assert [m["compacted"] for m, _, _ in runs] == [True, False, False, True, False]
    assert [m["state_layers"] for m, _, _ in runs] == [len(k) for k in kinds]
    # the delta of h2 *is* its active shards, and the older layers are the previous snapshot's files
    snap = StateSnapshot(layout.state(times[2]))
    inode = lambda p: os.stat(p).st_ino  # noqa: E731
    assert sorted(inode(f) for f in snap.layer_files(snap.layers[-1])) == sorted(
        inode(layout.active_shard(times[2], i)) for i in range(SHARDS)
    )
    before = StateSnapshot(layout.state(times[1]))
    for layer in before.layers:
        assert [inode(f) for f in before.layer_files(layer)] == [
            inode(snap.path / layer.name / f.name) for f in before.layer_files(layer)
        ]
    # a user in two layers is read from the newer one (the chain test checks every value)
    base_ids = set(
        pq.read_table(snap.layer_files(snap.layers[0])[0], columns=["user_id"])["user_id"].to_pylist()
    )
    assert base_ids & set(runs[2][1]["active"]), "some active users of h2 are superseded in the base"
    # the empty hour links the base and adds no layer
    last = StateSnapshot(layout.state(times[4]))
    assert [inode(f) for f in last.layer_files(last.layers[0])] == [
        inode(f)
        for f in StateSnapshot(layout.state(times[3])).layer_files(
            StateSnapshot(layout.state(times[3])).layers[0]
        )
    ]


def test_fetching_current_rows_in_the_executors_equals_the_plain_spark_reading(chain, spark):
    """HSTU-style: the fast path (pyarrow in the executors, filtered before Spark sees a row) against
    the plain Spark path (semi-join the layers' newest rows) and the pyarrow reader, on a 3-layer state
    and the users of the next hour."""
    from pyspark.sql import functions as F

    from pipelines import sequences as seq
    from pipelines import state as st

    settings, runs = chain
    layout = settings.layout()
    snap = StateSnapshot(layout.state(utc(runs[2][0]["as_of"])))
    assert [layer.kind for layer in snap.layers] == ["base", "delta", "delta"]
    users = sorted(set(runs[3][1]["active"]) | {10**9})  # the next hour's active users, plus an unknown one
    ids = spark.createDataFrame([(u,) for u in users], "user_id long")

    def norm(values):  # timestamps as epoch ms (Spark gives naive UTC datetimes, pyarrow aware ones)
        return tuple(
            round(v.replace(tzinfo=v.tzinfo or UTC).timestamp() * 1000)
            if isinstance(v, datetime)
            else v
            for v in values
        )

    def rows(df):
        return {r["user_id"]: tuple(norm(r[c]) for c in seq.EV_FIELDS) for r in df.collect()}

    fast = rows(st.fetch_current_rows(spark, snap, ids))
    plain = rows(
        st.current_rows(st.layer_frames(spark, snap), broadcast=True).join(
            F.broadcast(ids), "user_id", "left_semi"
        )
    )
    table = snap.read_table()
    reader = {
        u: tuple(norm(table[c][i].as_py()) for c in seq.EV_FIELDS)
        for i, u in enumerate(table["user_id"].to_pylist())
        if u in set(users)
    }
    assert fast == plain == reader
    assert 10**9 not in fast and len(fast) >= 5
    base = set(pq.read_table(snap.layer_files(snap.layers[0])[0], columns=["user_id"])["user_id"].to_pylist())
    assert base & set(runs[2][1]["active"]) & set(fast), "some fetched users have an older row in the base"


def test_the_messy_cases_really_occur(chain):
    """Guard against a test that passes because the data was too clean."""
    settings, runs = chain
    assert sum(e["repeats_of_state"] for _, e, _ in runs) >= 5  # re-sent copies caught against the state
    assert sum(m["reasons"].get("duplicate", 0) for m, _, _ in runs) > sum(
        e["repeats_of_state"] for _, e, _ in runs
    )
    assert any(len(s) == MAX_LEN for s in runs[-1][2].values())  # users cut to N
    late = pq.read_table(settings.layout().event_partition(START + HOUR))
    assert pc.min(late["ts"].cast(pa.int64())).as_py() < int((START + HOUR).timestamp() * 1000)  # late events
    nulls = [e for s in runs[-1][2].values() for e in s if e[4] is None]
    assert nulls, "null attributes reach the sequences"


def test_empty_hour_gives_empty_but_valid_outputs(chain):
    settings, runs = chain
    layout = settings.layout()
    manifest, _expected, _state = runs[-1]
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
    state = StateSnapshot(layout.state(as_of))
    raw_layers = [pq.read_table(f) for f in state.layer_files(state.layers[-1])]
    for table in [state.read_table(), pq.read_table(layout.active_shard(as_of, 0)), *raw_layers]:
        assert table.schema.field("as_of").type == TS
        assert table.schema.field("ts").type.value_type == TS  # Spark wrote milliseconds, UTC
        conformed = conform(table, SEQUENCE)
        assert conformed.schema.equals(SEQUENCE.schema)
        assert pc.all(pc.equal(conformed["n_events"], pc.list_value_length(conformed["item_id"]))).as_py()
        assert set(conformed["as_of"].to_pylist()) <= {as_of, *[layer.as_of for layer in state.layers]}
    assert set(state.read_table()["as_of"].to_pylist()) == {as_of}  # read as of the snapshot
    assert set(pq.read_table(layout.active_shard(as_of, 0))["as_of"].to_pylist()) == {as_of}
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
        for i in range(SHARDS):
            users = pq.read_table(layout.active_shard(utc(manifest["as_of"]), i))["user_id"].to_pylist()
            assert users == sorted(users), "shard rows are sorted by user_id"


def test_rerun_of_an_older_interval_is_identical_and_leaves_newer_states_alone(chain, spark):
    settings, runs = chain
    layout = settings.layout()
    h2 = START + timedelta(hours=2)
    newer = {
        p: p.read_bytes()
        for t in (4, 5)
        for p in layout.state(START + timedelta(hours=t)).rglob("*")
        if p.is_file()
    }
    # the rerun also takes the other join strategy (no broadcast): same content
    other = make_settings(settings.data.root, SOE_SEQUENCES__BROADCAST_ACTIVE_IDS="false")
    again = update_sequences(other.pipeline(), h2, h2 + HOUR, spark=spark)
    first = runs[2][0]
    drop = ("seconds", "phase_seconds", "state_users")
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in first.items() if k not in drop
    }
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
    manifest = update_sequences(
        settings.pipeline(), h3, h3 + HOUR, spark=spark
    )  # lookback 3 h: history = hours 1, 2

    ref = Reference(settings.events, MAX_LEN)
    ref.run(layout, START + HOUR, h3)
    expected = ref.run(layout, h3, h3 + HOUR)
    assert manifest["mode"] == "bootstrap" and manifest["previous_state"] is None
    assert read_sequences(layout.state(h3 + HOUR)) == ref.state
    assert active_sequences(layout, h3 + HOUR) == expected["active"]
    assert manifest["reasons"] == expected["reasons"]


def test_a_skipped_hour_is_caught_up_and_older_snapshots_can_be_deleted(spark, tmp_path):
    """Hour 1 never ran: the run for hour 2 merges arrival hours 1 and 2. Then retention deletes the
    older snapshot; the newer one (hard links, not references) still reads, and the next hour runs."""
    settings = make_settings(tmp_path / "data")
    layout = settings.layout()
    write_messy_log(layout)
    h1, h2, h3 = (START + timedelta(hours=h) for h in (1, 2, 3))
    update_sequences(settings.pipeline(), START, h1, spark=spark)
    manifest = update_sequences(settings.pipeline(), h2, h3, spark=spark)

    ref = Reference(settings.events, MAX_LEN)
    ref.run(layout, START, h1)
    expected = ref.run(layout, h1, h3)
    assert manifest["previous_state"] == h1.isoformat() and manifest["merged_from"] == h1.isoformat()
    assert len(manifest["partitions"]) == 2 and manifest["mode"] == "incremental"
    assert read_sequences(layout.state(h3)) == ref.state
    assert active_sequences(layout, h3) == expected["active"]
    assert manifest["reasons"] == expected["reasons"] and manifest["valid_events"] == expected["valid_events"]

    shutil.rmtree(layout.state(h1))
    assert read_sequences(layout.state(h3)) == ref.state
    update_sequences(settings.pipeline(), h3, h3 + HOUR, spark=spark)
    expected = ref.run(layout, h3, h3 + HOUR)
    assert read_sequences(layout.state(h3 + HOUR)) == ref.state
    assert active_sequences(layout, h3 + HOUR) == expected["active"]


def test_a_crash_before_publishing_leaves_nothing_that_looks_complete(spark, tmp_path, monkeypatch):
    import pipelines.hourly as hourly

    settings = make_settings(tmp_path / "data")
    layout = settings.layout()
    write_messy_log(layout, hours=2, seed=3)

    def crash(directory):  # the state files are fully written in the temp dir, the marker is not
        assert list(directory.glob("*.parquet"))
        raise RuntimeError("executor lost")

    monkeypatch.setattr(hourly, "data_rows", crash)
    as_of = START + HOUR
    with pytest.raises(RuntimeError):
        update_sequences(settings.pipeline(), START, as_of, spark=spark)
    assert not layout.state(as_of).exists() and not layout.active(as_of).exists()
    assert previous_state_time(layout, as_of + HOUR) is None  # readers see no state at all
    assert not [p for p in layout.state_root.iterdir() if is_complete(p)]

    monkeypatch.undo()
    manifests = backfill_sequences(settings.pipeline(), START, as_of, spark=spark)  # the retry repairs it
    ref = Reference(settings.events, MAX_LEN)
    expected = ref.run(layout, START, as_of)
    assert [m["mode"] for m in manifests] == ["bootstrap"]
    assert read_sequences(layout.state(as_of)) == ref.state
    assert active_sequences(layout, as_of) == expected["active"]


def test_interval_must_be_whole_hours(settings):
    with pytest.raises(ValueError, match="whole hours"):
        update_sequences(settings.pipeline(), START, START + timedelta(minutes=30), spark=object())
