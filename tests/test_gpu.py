"""The GPU lane: ``bash scripts/test.sh -m gpu`` (excluded from the default run; skips cleanly without CUDA).

On a CUDA machine it checks what the CPU suite can only reason about:

* the bf16 inference engine against the fp32 CPU reference (reference attention kernel), cosine > 0.99
  per user, along every inference path;
* the pinned-memory path is really taken (every featurised batch is pinned before its non-blocking copy);
* out-of-memory halving: a forward that raises ``torch.cuda.OutOfMemoryError`` on big batches, and a
  tiny free-memory budget, both still give every user's vector;
* FAISS on the GPU finds the same neighbours as on the CPU, and the graph's reverse search the same
  candidates (skipped when faiss has no GPU support);
* training on the GPU (bf16 autocast, pinned batches, both losses) learns and ends on the GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from encoder.config import ModelConfig
from encoder.device import select_device
from encoder.features import featurize
from encoder.inference.engine import BatchEncoder
from encoder.inference.sample import AS_OF, random_sequences
from encoder.inference.settings import InferenceSettings
from encoder.model import UserEncoder
from store.graph.index import IndexSpec, build_index, on_device
from store.graph.knn import exact_neighbours, recall_at_k, search_neighbours
from store.graph.settings import GraphSettings
from store.graph.vectors import UserVectors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    ),
]

MAX_LEN = 50
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig(
        d_model=64,
        n_layers=2,
        n_heads=2,
        max_len=MAX_LEN,
        item_buckets=2**14,
        attr_buckets=2**10,
        dropout=0.0,
    )


@pytest.fixture(scope="module")
def weights(cfg) -> dict:
    torch.manual_seed(0)
    return UserEncoder(cfg).state_dict()


@pytest.fixture(scope="module")
def table():
    """400 users: 1 event, exactly N, more than N, and heavy-tailed lengths between."""
    rng = np.random.default_rng(7)
    lengths = np.r_[[1, 1, MAX_LEN, MAX_LEN, 3 * MAX_LEN], rng.integers(1, MAX_LEN + 1, 395)]
    return random_sequences(rng.permutation(lengths), AS_OF, seed=8)


def gpu_engine(cfg, weights, **settings) -> BatchEncoder:
    choice = select_device("cuda", strict=True)
    model = UserEncoder(cfg)
    model.load_state_dict(weights)
    inference = InferenceSettings(device="cuda", gpu_dtype="bf16", **settings)
    return BatchEncoder(model.to(choice.device), choice, inference)


def cpu_reference(cfg, weights, table) -> torch.Tensor:
    """fp32 on the CPU, the full forward with the reference attention kernel."""
    model = UserEncoder(cfg, attention="reference").eval()
    model.load_state_dict(weights)
    with torch.inference_mode():
        return model(featurize(table, cfg, as_of=AS_OF))  # (U, D)


def per_user_cosine(a, b) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(
        torch.as_tensor(a).float(), torch.as_tensor(b).float(), dim=-1
    )


@pytest.mark.parametrize("path", ["newest_only", "full", "naive"])
def test_bf16_engine_matches_the_fp32_cpu_reference(cfg, weights, table, path):
    engine = gpu_engine(cfg, weights, path=path, max_batch_tokens=2048, window_users=128)
    assert engine.choice.is_cuda and engine.amp_dtype is torch.bfloat16 and engine.path == path
    cos = per_user_cosine(engine.encode_table(table, AS_OF), cpu_reference(cfg, weights, table))
    assert cos.min() > MIN_COSINE, (float(cos.min()), int(cos.argmin()))


@pytest.mark.parametrize("loader_thread", [True, False])
def test_batches_are_pinned_before_the_non_blocking_copy(cfg, weights, table, monkeypatch, loader_thread):
    engine = gpu_engine(cfg, weights, loader_thread=loader_thread, max_batch_tokens=1024)
    pinned, on_device = [], []
    real = BatchEncoder.encode_batch

    def spy(self, batch):
        pinned.append(
            all(t.is_pinned() for t in (batch.attrs, batch.action, batch.time_bucket, batch.lengths))
        )
        out = real(self, batch)
        on_device.append(out.device.type)
        return out

    monkeypatch.setattr(BatchEncoder, "encode_batch", spy)
    engine.encode_table(table, AS_OF)
    assert len(pinned) > 1 and all(pinned), pinned
    assert set(on_device) == {"cuda"}


def test_out_of_memory_halves_the_batch_and_the_budget(cfg, weights, table, monkeypatch):
    engine = gpu_engine(cfg, weights, max_batch_tokens=1 << 16, window_users=1000)
    expected = engine.encode_table(table, AS_OF)
    budget = engine.max_batch_tokens
    real_forward, sizes, emptied = engine.forward, [], []

    def tight(batch):
        sizes.append(len(batch))
        if len(batch) > 16:
            raise torch.cuda.OutOfMemoryError("simulated: CUDA out of memory")
        return real_forward(batch)

    engine.forward = tight
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    got = engine.encode_table(table, AS_OF)
    assert max(sizes) > 16 and emptied  # it did run out, and released the cache
    assert engine.max_batch_tokens < budget  # later batches are planned smaller
    assert per_user_cosine(got, expected).min() > 0.999


def test_a_tiny_memory_budget_still_encodes_every_user(cfg, weights, table, monkeypatch):
    monkeypatch.setattr("encoder.inference.device.free_memory_bytes", lambda device: 0)  # nothing "free"
    engine = gpu_engine(cfg, weights, max_batch_tokens=1 << 16)
    assert engine.max_batch_tokens == MAX_LEN  # the floor: one longest user per batch
    cos = per_user_cosine(engine.encode_table(table, AS_OF), cpu_reference(cfg, weights, table))
    assert cos.min() > MIN_COSINE


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_gpu_recall_matches_the_cpu(kind):
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss has no GPU support here (faiss-cpu installed)")
    rng = np.random.default_rng(0)
    uv = UserVectors.from_arrays(np.arange(1, 20_001), rng.normal(size=(20_000, 64)).astype(np.float32))
    spec = IndexSpec("flat") if kind == "flat" else IndexSpec("ivf", nlist=256, nprobe=16)
    index = build_index(uv, spec, GraphSettings())
    rows = np.sort(rng.choice(len(uv), 1000, replace=False))
    exact, _ = exact_neighbours(uv, rows, 10)
    cpu = recall_at_k(search_neighbours(index, uv, rows, 10)[0], exact)
    gpu = recall_at_k(search_neighbours(on_device(index, "gpu"), uv, rows, 10)[0], exact)
    if kind == "flat":
        assert cpu > 0.99 and gpu > 0.99, (cpu, gpu)
    assert gpu >= cpu - 0.02, (cpu, gpu)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_the_reverse_search_on_the_gpu_finds_what_the_cpu_finds(kind):
    """graph.reverse_search's index of the touched users, searched on the GPU (use_gpu auto) and on the
    CPU (never): the same (list, touched user) candidates, exactly for flat, nearly for IVF (the CPU's
    default cell join is compared with this index search in tests/test_graph_cell_join.py)."""
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() < 1:
        pytest.skip("faiss has no GPU support here (faiss-cpu installed)")
    from store.graph.incremental import reverse_search

    rng = np.random.default_rng(1)
    uv = UserVectors.from_arrays(np.arange(1, 200_001), rng.normal(size=(200_000, 64)).astype(np.float32))
    touched = np.sort(rng.choice(len(uv), 20_000, replace=False))
    # cos of random 64-d users ~ N(0, 1/64): a few of each list's 30 nearest touched users beat 0.45
    bars = np.full(len(uv), 0.45, np.float32)
    kw = {"index": kind, "flat_max_users": 0, "ivf_nlist": 256, "scan_with": "index"}
    pairs = {}
    for use_gpu in ("auto", "never"):
        cfg = GraphSettings(use_gpu=use_gpu, **kw)
        (rows, ids, _), _ = reverse_search(uv, touched, touched, bars, 30, cfg, 0.955)
        pairs[use_gpu] = set(zip(rows.tolist(), ids.tolist()))
    both = len(pairs["auto"] & pairs["never"]) / max(len(pairs["never"]), 1)
    assert len(pairs["never"]) > 1000 and both > (0.999 if kind == "flat" else 0.95), both


@pytest.mark.parametrize("loss", ["full_softmax", "sampled_softmax"])
def test_training_on_the_gpu_learns_with_pinned_batches(loss, monkeypatch):
    from core.datasets.synthetic import SyntheticConfig, generate
    from encoder.data import events_to_sequences, item_catalogue, leave_last_out
    from encoder.features import SequenceBatch
    from encoder.settings import TrainSettings
    from encoder.train import fit

    pinned = []
    original = SequenceBatch.pin_memory
    monkeypatch.setattr(
        SequenceBatch,
        "pin_memory",
        lambda self: pinned.append(threading.current_thread().name) or original(self),
    )
    log = generate(SyntheticConfig(n_users=200, n_items=300, n_clusters=3, hours=12, base_events_per_user=40))
    seq = events_to_sequences(log.events)
    positives = ["click", "conversion", "view"]
    split = leave_last_out(seq, positives, 3)
    cfg = ModelConfig(
        d_model=32, n_heads=2, n_layers=1, max_len=MAX_LEN, item_buckets=2**12, attr_buckets=2**8
    )
    ts = TrainSettings(
        epochs=3, batch_size=32, lr=3e-3, loss=loss, device="cuda", strict_device=True, patience=9
    )
    catalogue = item_catalogue(seq, cfg.attributes)
    result = fit(cfg, ts, split, catalogue, positives, show_progress=False)
    assert result.device.type == "cuda" and next(result.model.parameters()).is_cuda
    assert pinned and result.history[-1]["loss"] < result.history[0]["loss"]
    assert set(pinned) == {"soe-train-loader"}  # on a GPU, batches are made ahead in the loader thread
    # the GPU-trained model is evaluated where it is (bench.quality reports straight after fit)
    from encoder.evaluate import leave_last_out_report

    report = leave_last_out_report(result.model, cfg, split, catalogue, positives)
    assert 0 < report["test_users"] <= split.test.num_rows and 0.0 <= report["ndcg@10"] <= 1.0
