"""Encoding published shards: contract output, atomic + idempotent publication, sources, readers, CLI."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from core.atomic import is_complete, read_marker
from core.contracts import embedding_contract
from core.embeddings import latest_embeddings, read_embeddings, snapshot_times, vector_array
from encoder.artifact import save_model
from encoder.config import ModelConfig
from encoder.features import featurize
from encoder.inference import engine as engine_mod
from encoder.inference.engine import encode_all, encode_shard
from encoder.inference.sample import AS_OF, random_sequences, write_active_snapshot, write_state_snapshot
from encoder.inference.writer import shard_dir
from encoder.model import UserEncoder

MAX_LEN = 30


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def setup(settings):
    """Settings (1 CPU thread, small batches), a tiny saved model, and 120 users' sequences."""
    torch.manual_seed(1)
    cfg = ModelConfig(
        d_model=16, n_layers=2, n_heads=2, max_len=MAX_LEN, item_buckets=1024, attr_buckets=64, dropout=0.0
    )
    model = UserEncoder(cfg).eval()
    settings.inference.threads = 1
    settings.inference.max_batch_tokens = 128
    settings.inference.window_users = 50
    version = save_model(settings.layout(), model, cfg, train_window="test", metrics={})
    rng = np.random.default_rng(0)
    table = random_sequences(np.r_[1, MAX_LEN, 2 * MAX_LEN, rng.integers(1, MAX_LEN, 117)], AS_OF, seed=2)
    return settings, version, model, cfg, table


def vectors(table: pa.Table) -> np.ndarray:
    """(N, D) float32 of an embedding table (`core.embeddings.vector_array`, the one converter)."""
    return vector_array(table["vector"])


def reference(model, cfg, table):
    """The full forward with the reference attention kernel (the plain path)."""
    ref = UserEncoder(cfg, attention="reference").eval()
    ref.load_state_dict(model.state_dict())
    with torch.inference_mode():
        return ref(featurize(table, cfg, as_of=AS_OF)).numpy()


def test_encode_all_publishes_every_active_user_in_the_embedding_contract(setup):
    settings, version, model, cfg, table = setup
    layout = settings.layout()
    write_active_snapshot(layout, AS_OF, table, num_shards=3)
    manifests = encode_all(settings.layout(), settings.inference, version, AS_OF)
    assert [m["users"] for m in manifests] == [40, 40, 40]
    assert all(m["device"] == "cpu" and m["dim"] == 16 and m["model_version"] == version for m in manifests)
    assert (
        is_complete(layout.embeddings(version, AS_OF))
        and read_marker(layout.embeddings(version, AS_OF))["users"] == 120
    )

    out = read_embeddings(layout, version, AS_OF)
    assert out.schema == embedding_contract(16).schema
    assert out["user_id"].to_pylist() == table["user_id"].to_pylist()  # shard order, then row order
    assert set(out["model_version"].to_pylist()) == {version}
    assert set(out["as_of"].to_pylist()) == {AS_OF}
    assert out["n_events"].to_pylist() == table["n_events"].to_pylist()
    v = vectors(out)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(v, reference(model, cfg, table), atol=2e-3)


def test_rerun_is_idempotent_and_leaves_no_temp(setup):
    settings, version, *_rest, table = setup
    layout = settings.layout()
    write_active_snapshot(layout, AS_OF, table, num_shards=2)
    first = encode_shard(settings.layout(), settings.inference, version, AS_OF, 1)
    before = pq.read_table(shard_dir(layout, version, AS_OF, 1))
    second = encode_shard(settings.layout(), settings.inference, version, AS_OF, 1, num_shards=2)
    after = pq.read_table(shard_dir(layout, version, AS_OF, 1))
    assert after.equals(before) and first["users"] == second["users"] == 60
    assert [p.name for p in layout.embeddings(version, AS_OF).iterdir()] == ["shard=00001"]


def test_crash_mid_shard_publishes_nothing_and_keeps_the_previous_shard(setup, monkeypatch):
    settings, version, *_rest, table = setup
    layout = settings.layout()
    write_active_snapshot(layout, AS_OF, table, num_shards=1)
    calls = {"n": 0}
    real = engine_mod.BatchEncoder.encode_batch

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker died")
        return real(self, batch)

    monkeypatch.setattr(engine_mod.BatchEncoder, "encode_batch", flaky)
    with pytest.raises(RuntimeError, match="worker died"):
        encode_shard(settings.layout(), settings.inference, version, AS_OF, 0)
    root = layout.embeddings(version, AS_OF)
    assert not shard_dir(layout, version, AS_OF, 0).exists() and list(root.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        read_embeddings(layout, version, AS_OF)

    monkeypatch.setattr(engine_mod.BatchEncoder, "encode_batch", real)
    good = encode_shard(settings.layout(), settings.inference, version, AS_OF, 0)
    published = pq.read_table(shard_dir(layout, version, AS_OF, 0))
    calls["n"] = 0
    monkeypatch.setattr(engine_mod.BatchEncoder, "encode_batch", flaky)
    with pytest.raises(RuntimeError):
        encode_shard(
            settings.layout(), settings.inference, version, AS_OF, 0
        )  # a failed retry must not damage the published shard
    assert pq.read_table(shard_dir(layout, version, AS_OF, 0)).equals(published) and good["users"] == 120
    assert [p.name for p in root.iterdir()] == ["shard=00000"]


def test_resume_keeps_published_shards_and_encodes_the_rest(setup, monkeypatch):
    settings, version, *_rest, table = setup
    layout = settings.layout()
    write_state_snapshot(layout, AS_OF, table, num_files=3)
    first = encode_shard(
        settings.layout(), settings.inference, version, AS_OF, 0, num_shards=3, source="state"
    )  # then the run "crashed"
    encoded = []
    real = engine_mod.encode_with
    monkeypatch.setattr(engine_mod, "encode_with", lambda *a, **k: encoded.append(a[4]) or real(*a, **k))
    manifests = encode_all(
        settings.layout(), settings.inference, version, AS_OF, source="state", num_shards=3, resume=True
    )
    assert encoded == [1, 2] and manifests[0]["seconds"] == first["seconds"]
    assert read_embeddings(layout, version, AS_OF).num_rows == 120
    encode_all(
        settings.layout(), settings.inference, version, AS_OF, source="state", num_shards=3
    )  # without resume: everything again
    assert encoded == [1, 2, 0, 1, 2]


def test_loader_errors_surface_in_the_worker(setup, monkeypatch):
    settings, version, *_rest, table = setup
    write_active_snapshot(settings.layout(), AS_OF, table, num_shards=1)

    def broken(*args, **kwargs):
        raise ValueError("bad sequence row")

    monkeypatch.setattr("encoder.inference.engine.featurize", broken)
    with pytest.raises(ValueError, match="bad sequence row"):
        encode_shard(settings.layout(), settings.inference, version, AS_OF, 0)
    assert not shard_dir(settings.layout(), version, AS_OF, 0).exists()


@pytest.mark.parametrize("split", ["hash", "files"])
def test_state_source_splits_every_user_exactly_once(setup, split):
    settings, version, *_rest, table = setup
    layout = settings.layout()
    write_state_snapshot(layout, AS_OF, table, num_files=5)
    settings.inference.state_split = split
    manifests = encode_all(
        settings.layout(), settings.inference, version, AS_OF, source="state", num_shards=3
    )
    assert sum(m["users"] for m in manifests) == 120
    users = read_embeddings(layout, version, AS_OF)["user_id"].to_pylist()
    assert sorted(users) == sorted(table["user_id"].to_pylist())
    assert all(m["users"] > 0 for m in manifests)


@pytest.mark.parametrize("split", ["hash", "files"])
def test_state_source_encodes_the_newest_layer_of_each_user_as_of_the_snapshot(setup, split):
    """A layered state (base + 2 hourly deltas): each user once, from its newest layer, as of the snapshot."""
    settings, version, model, cfg, table = setup
    layout = settings.layout()
    rng = np.random.default_rng(3)
    d1 = random_sequences(
        rng.integers(1, MAX_LEN, 30), AS_OF - timedelta(hours=1), seed=7, first_user=11
    )  # users 11..40
    d2 = random_sequences(
        rng.integers(1, MAX_LEN, 10), AS_OF, seed=8, first_user=115
    )  # 115..120 + 4 new users
    write_state_snapshot(layout, AS_OF, table, num_files=4, deltas=[d1, d2])
    settings.inference.state_split = split
    manifests = encode_all(
        settings.layout(), settings.inference, version, AS_OF, source="state", num_shards=3
    )
    assert sum(m["users"] for m in manifests) == 124
    out = read_embeddings(layout, version, AS_OF)
    got = dict(zip(out["user_id"].to_pylist(), vectors(out)))
    assert sorted(got) == sorted(set(table["user_id"].to_pylist()) | set(d2["user_id"].to_pylist()))
    layers = (table, d1, d2)
    newest = {
        u: k for k, layer in enumerate(layers) for u in layer["user_id"].to_pylist()
    }  # later layers win
    current = pa.concat_tables(
        [
            layer.take([i for i, u in enumerate(layer["user_id"].to_pylist()) if newest[u] == k])
            for k, layer in enumerate(layers)
        ]
    )
    want = reference(model, cfg, current)  # the plain reference path, featurised as of AS_OF
    for u, w in zip(current["user_id"].to_pylist(), want):
        np.testing.assert_allclose(got[u], w, atol=2e-3)
    assert int(pc.sum(pc.equal(out["as_of"], AS_OF)).as_py()) == 124


def test_a_marked_snapshot_ignores_leftover_shards_of_an_earlier_sharding(setup):
    settings, version, *_rest, table = setup
    layout = settings.layout()
    write_state_snapshot(layout, AS_OF, table, num_files=4)
    encode_all(settings.layout(), settings.inference, version, AS_OF, source="state", num_shards=4)
    encode_all(
        settings.layout(), settings.inference, version, AS_OF, source="state", num_shards=2
    )  # shards 2, 3 are now stale
    users = read_embeddings(layout, version, AS_OF)["user_id"].to_pylist()
    assert sorted(users) == sorted(table["user_id"].to_pylist())


def test_latest_embeddings_keeps_each_users_newest_vector(setup):
    settings, version, *_rest, table = setup
    layout = settings.layout()
    later = AS_OF + timedelta(hours=1)
    write_active_snapshot(layout, AS_OF, table.slice(0, 80), num_shards=1)
    write_active_snapshot(layout, later, table.slice(40, 80), num_shards=2)
    encode_all(settings.layout(), settings.inference, version, AS_OF)
    encode_all(settings.layout(), settings.inference, version, later)
    assert snapshot_times(layout, version) == [AS_OF, later]
    latest = latest_embeddings(layout, version)
    assert latest["user_id"].to_pylist() == sorted(table["user_id"].to_pylist())
    newest = pc.equal(latest["as_of"], later).to_numpy(zero_copy_only=False)
    assert newest.sum() == 80 and not newest[:40].any() and newest[40:].all()


def test_a_corrupt_file_of_an_older_snapshot_never_blocks_the_merge(setup, caplog):
    """bench.chaos found it: one corrupt shard of a finished hour failed every later graph build."""
    settings, version, *_rest, table = setup
    layout = settings.layout()
    later = AS_OF + timedelta(hours=1)
    write_active_snapshot(layout, AS_OF, table.slice(0, 80), num_shards=2)
    write_active_snapshot(layout, later, table.slice(40, 80), num_shards=1)
    encode_all(settings.layout(), settings.inference, version, AS_OF)
    encode_all(settings.layout(), settings.inference, version, later)
    bad = sorted((layout.embeddings(version, AS_OF) / "shard=00000").glob("*.parquet"))[0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated on disk
    with pytest.raises((OSError, pa.ArrowException)):  # one snapshot alone still fails loudly
        read_embeddings(layout, version, AS_OF)
    latest = latest_embeddings(layout, version)
    assert str(bad) in caplog.text and "unreadable" in caplog.text
    newest = pc.equal(latest["as_of"], later).to_numpy(zero_copy_only=False)
    assert newest.sum() == 80  # every user of the newer snapshot is there, from it
    assert set(latest["user_id"].to_pylist()) >= set(table.slice(40, 80)["user_id"].to_pylist())


def test_clear_errors_for_missing_or_mismatched_inputs(setup):
    settings, version, *_rest, table = setup
    with pytest.raises(FileNotFoundError, match="run the sequence pipeline"):
        encode_shard(settings.layout(), settings.inference, version, AS_OF, 0)
    write_active_snapshot(settings.layout(), AS_OF, table, num_shards=2)
    with pytest.raises(ValueError, match="out of range"):
        encode_shard(settings.layout(), settings.inference, version, AS_OF, 2)
    with pytest.raises(ValueError, match="does not match"):
        encode_shard(settings.layout(), settings.inference, version, AS_OF, 0, num_shards=4)
    with pytest.raises(ValueError, match="source"):
        encode_shard(settings.layout(), settings.inference, version, AS_OF, 0, source="everything")
    with pytest.raises(FileNotFoundError, match="not published"):
        encode_shard(settings.layout(), settings.inference, "v-doesnotexist", AS_OF, 0)


def test_empty_shard_publishes_an_empty_valid_shard(setup):
    settings, version, *_rest, table = setup
    write_active_snapshot(settings.layout(), AS_OF, table.slice(0, 0), num_shards=1)
    assert encode_shard(settings.layout(), settings.inference, version, AS_OF, 0)["users"] == 0
    assert read_embeddings(settings.layout(), version, AS_OF).num_rows == 0


def test_cli_encode_with_cuda_requested_falls_back_to_cpu_clearly(setup, monkeypatch):
    import json

    from typer.testing import CliRunner

    from soe.cli.app import app

    settings, version, *_rest, table = setup
    write_active_snapshot(settings.layout(), AS_OF, table, num_shards=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = {
        "SOE_DATA__ROOT": str(settings.data.root),
        "SOE_INFERENCE__DEVICE": "cuda",
        "SOE_INFERENCE__THREADS": "1",
    }
    result = CliRunner().invoke(
        app, ["encode", "--model", version, "--as-of", "2026-01-01T12:00Z", "--shard", "1"], env=env
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert (
        manifest["device"] == "cpu"
        and "CPU fallback" in manifest["device_reason"]
        and manifest["users"] == 60
    )

    env["SOE_INFERENCE__STRICT_DEVICE"] = "true"
    strict = CliRunner().invoke(
        app, ["encode", "--model", version, "--as-of", "2026-01-01T12:00Z", "--shard", "1"], env=env
    )
    assert strict.exit_code == 2 and "no CUDA GPU" in strict.output
