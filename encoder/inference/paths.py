"""One switch between the inference paths: ``inference.path`` (and `forward_for`).

=============  ==========================================================================================
path           what computes a batch's (B, D) user vectors
=============  ==========================================================================================
``full``       ``model(batch)``: every position of every block (the training forward)
``newest_only`` `encoder.inference.fastpath.forward_newest`: the last block at the newest position only
``naive``      `encoder.inference.naive.NaiveEncoder`: the same weights through eager
               ``nn.TransformerEncoder`` (the benchmark's baseline)
``auto``       ``newest_only`` when ``pooling="last"``, else ``full`` (the default)
=============  ==========================================================================================

``newest_only`` and ``naive`` need ``pooling="last"``; asking for them with another pooling is an
error, never a silent fallback. All paths give the same vectors (tested on random models); the
attention kernel inside is the model's own switch (`UserEncoder.set_attention`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import get_args

import torch

from encoder.config import ModelConfig
from encoder.inference.fastpath import forward_newest
from encoder.inference.naive import NaiveEncoder
from encoder.inference.settings import InferencePath
from encoder.model import UserEncoder

PATHS: tuple[str, ...] = get_args(InferencePath)


def resolve_path(cfg: ModelConfig, requested: InferencePath = "auto") -> InferencePath:
    """The concrete path (never ``auto``) for a model of this config; an impossible request is an error."""
    if requested not in PATHS:
        raise ValueError(f"inference.path must be one of {PATHS}, got {requested!r}")
    if requested == "auto":
        return "newest_only" if cfg.pooling == "last" else "full"
    if requested in ("newest_only", "naive") and cfg.pooling != "last":
        raise ValueError(
            f"inference.path={requested} needs pooling='last'; this model has pooling={cfg.pooling!r} "
            "(use path=full or auto)"
        )
    return requested


def forward_for(model: UserEncoder, path: InferencePath = "auto") -> Callable[..., torch.Tensor]:
    """``batch -> (B, D)`` of ``model`` along ``path`` (see the module doc)."""
    path = resolve_path(model.cfg, path)
    if path == "newest_only":
        return functools.partial(forward_newest, model)
    if path == "naive":
        return NaiveEncoder(model)
    return model
