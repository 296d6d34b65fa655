"""How the inference engine uses its device: CPU threads and memory-aware batch sizes.

The device itself is chosen by `encoder.device.select_device` (shared with training), and autocast
by `encoder.device.autocast`. The one CUDA-only call here (the free-memory query) sits behind a
``device.type == "cuda"`` check, so the GPU path is the same code as the CPU path and can be reasoned
about without a GPU.

* `configure_threads`: intra-op threads = the cores this process may use (cgroup/affinity aware).
* `batch_token_budget`: tokens per batch = min(configured maximum, what fits in a share of the free
  memory given the model's activation footprint per token).
"""

from __future__ import annotations

import logging
import os

import psutil
import torch

log = logging.getLogger("soe.inference")


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


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the activations live: the GPU's when on cuda, the host's otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def activation_bytes_per_token(
    d_model: int, n_heads: int, max_len: int, ff_mult: int = 4, bytes_per: int = 4
) -> int:
    """A generous upper bound of the live activation bytes of one token in one layer's forward pass.

    Hidden states and their norms/residuals (~6 d), the q/k/v/out projections (4 d), the feed-forward
    hidden layer (ff_mult d, twice for the activation), and one row of attention scores per head
    (n_heads * max_len) for kernels that materialise them. Inference keeps one layer alive at a time.
    """
    floats = 10 * d_model + 2 * ff_mult * d_model + n_heads * max_len
    return floats * bytes_per


def batch_token_budget(
    max_batch_tokens: int,
    device: torch.device,
    per_token_bytes: int,
    memory_fraction: float = 0.25,
    min_tokens: int = 256,
) -> int:
    """Padded tokens per batch: the configured maximum, reduced so a batch fits in free memory."""
    if max_batch_tokens <= 0:
        raise ValueError(f"inference.max_batch_tokens must be positive, got {max_batch_tokens}")
    fits = int(free_memory_bytes(device) * memory_fraction) // max(1, per_token_bytes)
    budget = max(min_tokens, min(max_batch_tokens, fits))
    if budget < max_batch_tokens:
        log.info("batch token budget reduced to %d by free memory (configured %d)", budget, max_batch_tokens)
    return budget
