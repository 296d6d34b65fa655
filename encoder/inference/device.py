"""Where the encoder runs, and how: device choice, CPU threads, autocast and memory-aware batch sizes.

Every CUDA-only call in the inference engine lives in this module behind a ``device.type == "cuda"``
check, so the GPU path is the same code as the CPU path with three switches (autocast dtype,
pinned host memory + ``non_blocking`` copies, memory query) and can be reasoned about without a GPU.

* `select_device`: ``auto`` -> ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. Asking for
  ``cuda`` on a machine without one falls back to the CPU with a warning (or raises when
  ``strict_device`` is set), and the choice is always logged and recorded in the shard manifest.
* `configure_threads`: intra-op threads = the cores this process may use (cgroup/affinity aware).
* `autocast`: bf16 (or fp16) autocast on GPU; fp32 on CPU, so CPU vectors match the reference path.
* `batch_token_budget`: tokens per batch = min(configured maximum, what fits in a share of the free
  memory given the model's activation footprint per token).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("soe.inference")


class DeviceError(ValueError):
    """The requested device cannot be used (only raised with ``strict_device``); a user error."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device  # where the model runs
    requested: str  # what the settings asked for
    reason: str  # why this device (logged and written to the manifest)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def select_device(requested: str = "auto", *, strict: bool = False) -> DeviceChoice:
    """Resolve ``auto`` / ``cpu`` / ``cuda`` / ``cuda:i`` to a usable device, logging the choice."""
    spec = (requested or "auto").strip().lower()
    has_cuda = torch.cuda.is_available()
    if spec == "auto":
        choice = (
            DeviceChoice(torch.device("cuda"), requested, "auto: a CUDA GPU is available")
            if has_cuda
            else DeviceChoice(torch.device("cpu"), requested, "auto: no CUDA GPU available, using the CPU")
        )
    elif spec == "cpu":
        choice = DeviceChoice(torch.device("cpu"), requested, "cpu requested")
    elif spec.startswith("cuda"):
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise ValueError(f"inference.device {requested!r} is not a device: use auto, cpu, cuda or cuda:<i>") from exc
        index = device.index or 0
        if has_cuda and index < torch.cuda.device_count():
            choice = DeviceChoice(device, requested, f"{spec} requested and available")
        else:
            why = (
                "no CUDA GPU is available (torch.cuda.is_available() is False)"
                if not has_cuda
                else f"only {torch.cuda.device_count()} GPU(s) are visible"
            )
            if strict:
                raise DeviceError(f"inference.device={requested!r} but {why}; set inference.device=auto or cpu")
            log.warning("inference.device=%r but %s: falling back to the CPU", requested, why)
            choice = DeviceChoice(torch.device("cpu"), requested, f"{spec} requested but {why}: CPU fallback")
    else:
        raise ValueError(f"inference.device {requested!r} is not a device: use auto, cpu, cuda or cuda:<i>")
    log.info("inference device: %s (%s)", choice.device, choice.reason)
    return choice


def available_cores() -> int:
    """The CPU cores this process may run on (affinity/cgroup aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads (0 = every available core); returns the number set."""
    n = threads if threads > 0 else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def autocast_dtype(device: torch.device, gpu_dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype of this device: None (plain fp32) on CPU; bf16/fp16 on GPU."""
    if device.type != "cuda" or gpu_dtype == "fp32":
        return None
    if gpu_dtype == "bf16":
        return torch.bfloat16
    if gpu_dtype == "fp16":
        return torch.float16
    if gpu_dtype != "auto":
        raise ValueError(f"inference.gpu_dtype {gpu_dtype!r}: use auto, bf16, fp16 or fp32")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context manager running the forward pass in ``dtype`` (no-op when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the activations live: the GPU's when on cuda, the host's otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # POSIX fallback: free physical pages (ignores reclaimable cache, so conservative)
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def activation_bytes_per_token(d_model: int, n_heads: int, max_len: int, ff_mult: int = 4, bytes_per: int = 4) -> int:
    """A generous upper bound of the live activation bytes of one token in one layer's forward pass.

    Hidden states and their norms/residuals (~6 d), the q/k/v/out projections (4 d), the feed-forward
    hidden layer (ff_mult d, twice for the activation), and one row of attention scores per head
    (n_heads * max_len) for kernels that materialise them. Inference keeps one layer alive at a time.
    """
    floats = 10 * d_model + 2 * ff_mult * d_model + n_heads * max_len
    return floats * bytes_per


def batch_token_budget(
    max_batch_tokens: int, device: torch.device, per_token_bytes: int, memory_fraction: float = 0.25, min_tokens: int = 256
) -> int:
    """Padded tokens per batch: the configured maximum, reduced so a batch fits in free memory."""
    if max_batch_tokens <= 0:
        raise ValueError(f"inference.max_batch_tokens must be positive, got {max_batch_tokens}")
    fits = int(free_memory_bytes(device) * memory_fraction) // max(1, per_token_bytes)
    budget = max(min_tokens, min(max_batch_tokens, fits))
    if budget < max_batch_tokens:
        log.info("batch token budget reduced to %d by free memory (configured %d)", budget, max_batch_tokens)
    return budget
