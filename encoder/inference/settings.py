"""Config section of batch inference (composed in soe.config as `inference`). No torch here."""

from __future__ import annotations

from typing import Literal

from core.section import Section
from encoder.settings import DeviceName, GpuDtype

StateSplit = Literal["auto", "files", "hash"]  # how source=state splits a snapshot over workers
InferencePath = Literal["auto", "newest_only", "full", "naive"]  # see encoder.inference.fastpath
Source = Literal["active", "state"]  # what a worker encodes: the hour's active users, or all users (backfill)


class InferenceSettings(Section):
    device: DeviceName = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:1"
    strict_device: bool = False  # True: a requested GPU that is absent is an error, not a CPU fallback
    max_batch_tokens: int = 16384  # upper bound of padded tokens per batch (adapted down to free memory)
    memory_fraction: float = 0.25  # share of the free host/GPU memory one batch's activations may use
    window_users: int = 32768  # users read and length-sorted together (bounds host memory per worker)
    prefetch_batches: int = 2  # featurised batches queued ahead of compute by the loader thread
    loader_thread: bool = True  # read/featurise in a background thread, overlapping the model's compute
    loader_workers: int = 1  # stream schedule (GPU): threads featurising a window's batches in parallel
    cpu_workers: int = 0  # CPU: batches encoded in parallel, 1 thread each; 0 = one per available core
    threads: int = 0  # CPU intra-op threads when cpu_workers=1; 0 = the cores this process may run on
    # the forward: "newest_only" (last block at the newest position), "full" (model.forward), "naive"
    # (nn.TransformerEncoder); "auto" = newest_only when pooling="last", else full
    path: InferencePath = "auto"
    compile: bool = False  # torch.compile the model (CPU and GPU); measured in bench.inference
    gpu_dtype: GpuDtype = "auto"  # autocast dtype on GPU: "auto" (bf16 when supported, else fp16), "bf16"...
    # source=state: "hash" (of user_id), "files" (file i::n), "auto" (files when >= as many files as workers)
    state_split: StateSplit = "auto"
