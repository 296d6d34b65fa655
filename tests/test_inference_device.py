"""Device handling (one resolver for training and inference): GPU when present, CPU otherwise, always
logged; GPU-only switches testable without a GPU."""

from __future__ import annotations

import logging

import pytest
import torch

from encoder.device import DeviceError, autocast, autocast_dtype, select_device
from encoder.inference.device import available_cores, batch_token_budget, configure_threads


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_picks_cpu_without_a_gpu_and_logs_it_once(no_gpu, caplog):
    import encoder.device

    encoder.device._ANNOUNCED.clear()  # a fresh process
    with caplog.at_level(logging.INFO, logger="soe.inference"):
        choice = select_device("auto")
        select_device("auto")  # a second shard of the same run: no second line
    assert choice.device == torch.device("cpu") and not choice.is_cuda
    assert "inference device: cpu" in caplog.text and "no CUDA GPU" in caplog.text
    assert caplog.text.count("inference device: cpu") == 1


def test_auto_picks_the_gpu_when_present(one_gpu):
    choice = select_device("auto")
    assert choice.device == torch.device("cuda") and choice.is_cuda
    assert select_device("cuda:0").device == torch.device("cuda:0")


def test_cuda_requested_but_absent_falls_back_with_a_warning(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="soe.inference"):
        choice = select_device("cuda")
    assert choice.device == torch.device("cpu") and "CPU fallback" in choice.reason
    assert "falling back to the CPU" in caplog.text
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        select_device("cuda", strict=True)


def test_missing_gpu_index_and_bad_specs(one_gpu):
    assert select_device("cuda:3").device == torch.device("cpu")
    with pytest.raises(DeviceError, match="only 1 GPU"):
        select_device("cuda:3", strict=True)
    for bad in ("tpu", "cuda:x"):
        with pytest.raises(ValueError, match="not a device"):
            select_device(bad)


def test_autocast_is_fp32_on_cpu_and_half_precision_on_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "bf16") is None  # CPU vectors must match the fp32 reference
    assert autocast_dtype(gpu, "fp16") is torch.float16
    assert autocast_dtype(gpu, "bf16") is torch.bfloat16
    assert autocast_dtype(gpu, "fp32") is None
    with pytest.raises(ValueError):
        autocast_dtype(gpu, "int8")
    with autocast(cpu, None):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype is torch.float32


def test_threads_follow_the_available_cores():
    before = torch.get_num_threads()
    try:
        assert configure_threads(0) == available_cores() == torch.get_num_threads()
        assert configure_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_token_budget_shrinks_to_fit_free_memory(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("encoder.inference.device.free_memory_bytes", lambda device: 1_000_000)
    assert batch_token_budget(65536, cpu, per_token_bytes=100, memory_fraction=0.5) == 5000
    assert batch_token_budget(4096, cpu, per_token_bytes=100, memory_fraction=0.5) == 4096
    assert batch_token_budget(65536, cpu, per_token_bytes=10**9, min_tokens=200) == 200
    with pytest.raises(ValueError):
        batch_token_budget(0, cpu, per_token_bytes=1)


def test_training_uses_the_same_resolver_with_its_own_section_name(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="soe.train"):
        assert select_device("cuda:1", purpose="train").device == torch.device("cpu")
    assert "train.device='cuda:1'" in caplog.text
    with pytest.raises(DeviceError, match=r"set train\.device=auto or cpu"):
        select_device("cuda", strict=True, purpose="train")


def test_training_falls_back_or_fails_as_configured(no_gpu, settings):
    """`fit` resolves train.device through select_device: no GPU is a CPU fallback or, strict, an error."""
    from core.datasets.synthetic import SyntheticConfig, generate
    from encoder.config import ModelConfig
    from encoder.data import events_to_sequences, item_catalogue, leave_last_out
    from encoder.settings import TrainSettings
    from encoder.train import fit

    seq = events_to_sequences(
        generate(
            SyntheticConfig(n_users=60, n_items=100, n_clusters=3, hours=6, base_events_per_user=30)
        ).events
    )
    pos = ["click", "conversion", "view"]
    split, cat = leave_last_out(seq, pos), item_catalogue(seq)
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, max_len=10, item_buckets=64, attr_buckets=16)
    ts = TrainSettings(
        epochs=1, batch_size=16, eval_users=20, threads=1, device="cuda", positive_event_types=pos
    )
    assert fit(cfg, ts, split, cat, pos, show_progress=False).device == torch.device("cpu")
    with pytest.raises(DeviceError):
        fit(cfg, ts.model_copy(update={"strict_device": True}), split, cat, pos, show_progress=False)
