"""The layered state snapshot (core.sequence_state): newest layer wins, the snapshot's as_of, links."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.atomic import publish_dir
from core.sequence_state import StateSnapshot, link_files, read_state
from encoder.inference.sample import AS_OF, random_sequences, write_state_snapshot
from pipelines.state import should_compact


def rows_by_user(table: pa.Table) -> dict[int, list]:
    return dict(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist()))


@pytest.fixture
def layered(settings):
    """Base: users 1..20. Delta 1: users 3..7 re-written + new users 100, 101. Delta 2: user 3 again."""
    layout = settings.layout()
    base = random_sequences(np.full(20, 5), AS_OF - timedelta(hours=2), seed=1, first_user=1)
    d1 = pa.concat_tables(
        [
            random_sequences(np.full(5, 6), AS_OF - timedelta(hours=1), seed=2, first_user=3),
            random_sequences(np.full(2, 1), AS_OF - timedelta(hours=1), seed=3, first_user=100),
        ]
    )
    d2 = random_sequences(np.full(1, 7), AS_OF, seed=4, first_user=3)
    write_state_snapshot(layout, AS_OF, base, num_files=3, deltas=[d1, d2])
    expected = {**rows_by_user(base), **rows_by_user(d1), **rows_by_user(d2)}
    return StateSnapshot(layout.state(AS_OF)), expected


def test_the_newest_layer_holding_a_user_wins(layered):
    snap, expected = layered
    assert [layer.kind for layer in snap.layers] == ["base", "delta", "delta"]
    table = snap.read_table()
    assert table.num_rows == 22 == snap.num_users == len(set(table["user_id"].to_pylist()))
    assert rows_by_user(table) == expected
    assert len(expected[3]) == 7 and len(expected[4]) == 6 and len(expected[1]) == 5  # from d2, d1, base
    assert sorted(snap.user_ids().tolist()) == sorted(expected)
    streamed = pa.Table.from_batches(list(snap.iter_batches(batch_rows=4)))
    assert rows_by_user(streamed) == expected


def test_files_of_different_writers_stream_with_one_schema(settings):
    """Spark writes n_events nullable, pyarrow (active shards) not null: batches must still concatenate."""
    layout = settings.layout()
    base = random_sequences(np.full(5, 3), AS_OF - timedelta(hours=1), seed=1)
    loose = pa.schema([f.with_nullable(True) for f in base.schema])
    delta = random_sequences(np.full(3, 2), AS_OF, seed=2, first_user=50)
    write_state_snapshot(layout, AS_OF, base.cast(loose), num_files=2, deltas=[delta])
    batches = list(StateSnapshot(layout.state(AS_OF)).iter_batches())
    assert len({b.schema for b in batches}) == 1 and pa.Table.from_batches(batches).num_rows == 8


def test_every_row_is_read_as_of_the_snapshot(layered):
    snap, _ = layered
    raw = pq.read_table(snap.layer_files(snap.layers[0])[0])
    assert set(raw["as_of"].to_pylist()) == {AS_OF - timedelta(hours=2)}  # as the base layer wrote it
    assert set(snap.read_table()["as_of"].to_pylist()) == {AS_OF}
    assert snap.delta_rows == 8 and snap.base_rows == 20


def test_a_plain_directory_is_one_base_layer_and_keeps_its_rows_as_of(tmp_path):
    table = random_sequences(np.full(6, 3), AS_OF, seed=5)
    table = table.set_column(
        1, "as_of", pa.array([AS_OF - timedelta(hours=h) for h in range(6)], table["as_of"].type)
    )
    with publish_dir(tmp_path / "trainset", {"kind": "time_split"}) as tmp:  # e.g. a training set
        pq.write_table(table, tmp / "part-0.parquet")
    snap = StateSnapshot(tmp_path / "trainset")
    assert not snap.layered and len(snap.layers) == 1
    assert snap.read_table()["as_of"].to_pylist() == table["as_of"].to_pylist()
    assert read_state(tmp_path / "trainset" / "part-0.parquet").num_rows == 6
    with pytest.raises(FileNotFoundError):
        StateSnapshot(tmp_path / "missing")


def test_links_share_the_file_and_fall_back_to_a_copy(tmp_path, monkeypatch):
    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), src)
    assert link_files([src], tmp_path / "linked") == 0
    assert os.stat(tmp_path / "linked" / "a.parquet").st_ino == os.stat(src).st_ino

    def no_links(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert link_files([src], tmp_path / "copied") == 1
    copied = tmp_path / "copied" / "a.parquet"
    assert os.stat(copied).st_ino != os.stat(src).st_ino and copied.read_bytes() == src.read_bytes()


def test_compaction_policy(layered):
    snap, _ = layered  # 2 delta layers, 8 delta rows, 20 base rows
    assert should_compact(None, 5, 24, 1.0)  # bootstrap: always a base
    assert not should_compact(snap, 5, 24, 1.0)  # 3 deltas, 13 delta rows <= 20
    assert should_compact(snap, 5, 2, 1.0)  # a 3rd delta layer > 2
    assert not should_compact(snap, 0, 2, 1.0)  # an empty hour adds no layer
    assert should_compact(snap, 13, 24, 1.0)  # 21 delta rows > 1.0 x 20 base rows
    assert should_compact(snap, 5, 24, 0.5)
