"""Batch inference engine: same vectors as the model's reference kernel, in any batch, along every
inference path (newest-only, full, naive). Randomized equivalence: tests/test_encoder_equivalence.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from encoder.config import ModelConfig
from encoder.device import select_device
from encoder.features import featurize
from encoder.inference.batching import plan_batches
from encoder.inference.engine import BatchEncoder
from encoder.inference.fastpath import forward_newest
from encoder.inference.naive import NaiveEncoder, model_flops, naive_encode
from encoder.inference.paths import resolve_path
from encoder.inference.sample import AS_OF, random_sequences
from encoder.inference.settings import InferenceSettings
from encoder.inference.writer import l2_normalise_f16
from encoder.model import UserEncoder

MAX_LEN = 40
F16_ATOL = 2e-3  # a unit vector's components rounded to float16 (2^-11 relative) plus fp32 noise


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: tiny batches on a shared 2-core machine are slower with more (and restore it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """A tiny randomly initialised model (eval mode) and its config."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=32, n_layers=2, n_heads=2, max_len=MAX_LEN, item_buckets=4096, attr_buckets=256, dropout=0.0
    )
    return UserEncoder(cfg).eval(), cfg


@pytest.fixture(scope="module")
def sequences():
    """Users with 1 event, exactly N, more than N (truncated), and everything between."""
    rng = np.random.default_rng(3)
    lengths = np.concatenate([[1, 1, MAX_LEN, MAX_LEN, 3 * MAX_LEN, 2], rng.integers(1, MAX_LEN + 1, 150)])
    return random_sequences(rng.permutation(lengths), AS_OF, seed=4)


def reference(model, cfg, table: pa.Table) -> np.ndarray:
    """The model's full forward with the reference attention kernel, one user at a time (no padding)."""
    ref = UserEncoder(cfg, attention="reference").eval()
    ref.load_state_dict(model.state_dict())
    with torch.inference_mode():
        return np.concatenate(
            [ref(featurize(table.slice(i, 1), cfg, as_of=AS_OF)).numpy() for i in range(table.num_rows)]
        )


def engine(model, cfg, **overrides) -> BatchEncoder:
    assert model.cfg is cfg
    return BatchEncoder(model, select_device("cpu"), InferenceSettings(**{"threads": 1, **overrides}))


def test_engine_matches_reference_path_within_float16(tiny, sequences):
    model, cfg = tiny
    vectors = engine(model, cfg, max_batch_tokens=256, window_users=64).encode_table(sequences, AS_OF)
    ref = reference(model, cfg, sequences)
    stored = l2_normalise_f16(vectors).astype(np.float32)  # what the writer publishes
    lengths = np.diff(sequences["item_id"].combine_chunks().offsets.to_numpy())
    for name, rows in {
        "1 event": lengths == 1,
        "N events": lengths == MAX_LEN,
        "> N events": lengths > MAX_LEN,
    }.items():
        assert rows.any(), name
        np.testing.assert_allclose(stored[rows], ref[rows], atol=F16_ATOL, err_msg=name)
    np.testing.assert_allclose(stored, ref, atol=F16_ATOL)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=2e-3)


@pytest.mark.parametrize(
    "schedule",
    [
        {"cpu_workers": 2},
        {"cpu_workers": 2, "loader_thread": False},
        {"cpu_workers": 1},
        {"cpu_workers": 1, "loader_thread": False},
        {"cpu_workers": 1, "loader_workers": 3},
    ],
    ids=["parallel", "parallel-inline", "stream", "stream-inline", "stream-3-loaders"],
)
def test_vectors_do_not_depend_on_batch_window_or_schedule(tiny, sequences, schedule):
    model, cfg = tiny
    one = engine(model, cfg, max_batch_tokens=100_000, window_users=10_000, cpu_workers=1)  # one batch
    small = engine(model, cfg, max_batch_tokens=MAX_LEN, window_users=7, **schedule)  # ~1 long user per batch
    mid = engine(model, cfg, max_batch_tokens=300, window_users=64, **schedule)
    expected = one.encode_table(sequences, AS_OF)
    np.testing.assert_allclose(small.encode_table(sequences, AS_OF), expected, atol=1e-5)
    np.testing.assert_allclose(mid.encode_table(sequences, AS_OF), expected, atol=1e-5)


def test_bucketing_cuts_padding_compared_with_padding_to_n(tiny, sequences):
    model, cfg = tiny
    enc = engine(model, cfg, max_batch_tokens=400, window_users=10_000)
    stats = next(s for _w, _v, s in enc.encode_windows(iter([sequences]), AS_OF))
    assert stats.users == sequences.num_rows
    assert stats.tokens == int(np.minimum(enc.lengths(sequences), MAX_LEN).sum())
    assert stats.padded_tokens < 1.25 * stats.tokens < sequences.num_rows * MAX_LEN


def test_plan_batches_covers_every_row_once_within_budget():
    lengths = np.random.default_rng(0).integers(1, 201, 5000)
    plans = plan_batches(lengths, 2048)
    rows = np.concatenate([p.rows for p in plans])
    assert sorted(rows.tolist()) == list(range(5000))
    for p in plans:
        assert p.padded_len == lengths[p.rows].max()
        assert len(p.rows) * p.padded_len <= 2048
    one = plan_batches(np.array([500, 3]), 100)  # a row longer than the budget gets its own batch
    assert [len(p.rows) for p in one] == [1, 1]


def test_naive_baseline_computes_the_same_vectors(tiny, sequences):
    model, cfg = tiny
    naive = naive_encode(NaiveEncoder(model), sequences, AS_OF, batch_rows=32)
    fast = engine(model, cfg).encode_table(sequences, AS_OF)
    np.testing.assert_allclose(naive, fast, atol=1e-4)


def test_model_flops_counts_only_real_tokens():
    d, layers = 64, 2
    one = model_flops(np.array([1]), d, layers)
    assert one == layers * (24 * d * d + 2 * d * 2) + 2 * d * d
    assert model_flops(np.array([10, 10]), d, layers) == 2 * model_flops(np.array([10]), d, layers)
    assert model_flops(np.array([200]), d, layers) > 200 * (one - 2 * d * d)  # attention is superlinear
    assert model_flops(np.array([50]), d, layers, path="newest_only") < 0.65 * model_flops(
        np.array([50]), d, layers
    )
    assert model_flops(np.array([50]), d, layers, path="naive") == model_flops(np.array([50]), d, layers)


def test_out_of_memory_splits_the_batch_and_lowers_the_budget(tiny, sequences, monkeypatch):
    model, cfg = tiny
    enc = engine(model, cfg, max_batch_tokens=100_000)
    expected = enc.encode_table(sequences, AS_OF)
    real = BatchEncoder.encode_batch

    def small_memory(self, batch):
        if len(batch) > 20:
            raise torch.OutOfMemoryError("pretend the device is full")
        return real(self, batch)

    monkeypatch.setattr(BatchEncoder, "encode_batch", small_memory)
    np.testing.assert_allclose(enc.encode_table(sequences, AS_OF), expected, atol=1e-5)
    assert enc.max_batch_tokens < 100_000


@pytest.mark.parametrize("path", ["newest_only", "full", "naive"])
def test_every_inference_path_gives_the_same_vectors(tiny, sequences, path):
    model, cfg = tiny
    enc = engine(model, cfg, path=path, max_batch_tokens=300, window_users=64)
    assert enc.path == path
    np.testing.assert_allclose(
        enc.encode_table(sequences, AS_OF), reference(model, cfg, sequences), atol=1e-5
    )


def test_path_switch_is_explicit(tiny, sequences):
    model, cfg = tiny
    assert engine(model, cfg).path == "newest_only"  # auto with pooling="last"
    batch = featurize(sequences, cfg, as_of=AS_OF)
    with torch.inference_mode():
        np.testing.assert_allclose(forward_newest(model, batch).numpy(), model(batch).numpy(), atol=1e-5)
    attention = ModelConfig(**{**cfg.to_dict(), "pooling": "attention"})
    assert resolve_path(attention, "auto") == "full"  # auto never picks a path the model cannot take
    assert resolve_path(attention, "full") == "full"
    for path in ("newest_only", "naive"):  # asked for explicitly: an error, never a silent fallback
        with pytest.raises(ValueError, match="needs pooling='last'"):
            engine(UserEncoder(attention).eval(), attention, path=path)
    with pytest.raises(ValueError, match="pooling='last'"):
        forward_newest(UserEncoder(attention).eval(), batch)
