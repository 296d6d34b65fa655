"""Where the encoder runs: one device resolver and one autocast rule for training and inference.

* `select_device`: ``auto`` -> ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. Asking for
  ``cuda`` / ``cuda:i`` on a machine without it falls back to the CPU with a warning, or raises
  `DeviceError` with ``strict`` (``train.strict_device`` / ``inference.strict_device``). The choice
  and its reason are logged (logger ``soe.<purpose>``) and returned, so inference writes them into
  every shard manifest.
* `autocast_dtype` / `autocast`: bf16 (or fp16) autocast on a GPU; plain fp32 on the CPU, so CPU
  vectors match the fp32 reference path.

Every CUDA-only call here sits behind ``device.type == "cuda"``; the rest of the encoder is
device-agnostic.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import get_args

import torch

from encoder.settings import DEVICE_PATTERN, GpuDtype


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a built model's weights are on (where its inputs and companions must go)."""
    return next(model.parameters()).device


class DeviceError(ValueError):
    """The requested device cannot be used (only raised with ``strict``); a user error."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device  # where the model runs
    requested: str  # what the settings asked for
    reason: str  # why this device (logged and written to the manifest)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


_ANNOUNCED: set[tuple[str, str]] = set()  # (purpose, requested) already logged in this process


def select_device(
    requested: str = "auto", *, strict: bool = False, purpose: str = "inference"
) -> DeviceChoice:
    """Resolve ``auto`` / ``cpu`` / ``cuda`` / ``cuda:i`` to a usable device, logging the choice.

    ``purpose`` ("inference" or "train") names the settings section in messages and the logger.
    """
    log = logging.getLogger(f"soe.{purpose}")
    spec = (requested or "auto").strip().lower()
    if not re.match(DEVICE_PATTERN, spec):
        raise ValueError(f"{purpose}.device {requested!r} is not a device: use auto, cpu, cuda or cuda:<i>")
    has_cuda = torch.cuda.is_available()
    if spec == "auto":
        choice = (
            DeviceChoice(torch.device("cuda"), requested, "auto: a CUDA GPU is available")
            if has_cuda
            else DeviceChoice(torch.device("cpu"), requested, "auto: no CUDA GPU available, using the CPU")
        )
    elif spec == "cpu":
        choice = DeviceChoice(torch.device("cpu"), requested, "cpu requested")
    else:
        device = torch.device(spec)
        if has_cuda and (device.index or 0) < torch.cuda.device_count():
            choice = DeviceChoice(device, requested, f"{spec} requested and available")
        else:
            why = (
                "no CUDA GPU is available (torch.cuda.is_available() is False)"
                if not has_cuda
                else f"only {torch.cuda.device_count()} GPU(s) are visible"
            )
            if strict:
                raise DeviceError(
                    f"{purpose}.device={requested!r} but {why}; set {purpose}.device=auto or cpu"
                )
            if (purpose, requested) not in _ANNOUNCED:
                log.warning("%s.device=%r but %s: falling back to the CPU", purpose, requested, why)
            choice = DeviceChoice(torch.device("cpu"), requested, f"{spec} requested but {why}: CPU fallback")
    if (purpose, requested) not in _ANNOUNCED:  # one device line per process, not one per shard
        _ANNOUNCED.add((purpose, requested))
        log.info("%s device: %s (%s)", purpose, choice.device, choice.reason)
    return choice


def autocast_dtype(device: torch.device, gpu_dtype: GpuDtype = "auto") -> torch.dtype | None:
    """The autocast dtype of this device: None (plain fp32) on CPU; bf16/fp16 on GPU."""
    if gpu_dtype not in get_args(GpuDtype):
        raise ValueError(f"gpu_dtype {gpu_dtype!r}: use auto, bf16, fp16 or fp32")
    if device.type != "cuda" or gpu_dtype == "fp32":
        return None
    if gpu_dtype == "bf16":
        return torch.bfloat16
    if gpu_dtype == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context manager running the forward pass in ``dtype`` (no-op when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
