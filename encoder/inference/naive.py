"""The naive baseline the engine is measured against, and the FLOP count both are judged by.

`NaiveEncoder` is what one writes first: the model's token embedding, then PyTorch's eager
``nn.TransformerEncoder`` in fp32; `naive_encode` pads every batch to N = ``max_len`` whatever its
users' lengths, fixed-size batches in file order, no bucketing. The engine can also run it as
``inference.path=naive`` (see `encoder.inference.paths`), on its own length-bucketed batches. It
runs the *same weights* as the model (the q/k/v, projection, MLP and norms of each
`encoder.model.Block` are copied into the matching ``nn.TransformerEncoderLayer``), so on the same
sequences its vectors equal the engine's (a test checks it) and the benchmark compares like with
like.

`model_flops` counts the useful work of one user with L real events (padding excluded): per layer
``(8 + 4 r) d^2`` multiply-adds x2 per token for q/k/v, projection and the r-times-wide MLP, plus
``2 d L (L + 1)`` for causal attention (query i sees i + 1 keys: QK^T and AV, 2 d each), plus the
``2 d^2`` user head. Embedding lookups, norms and activations are memory-bound and not counted.
With ``path="newest_only"`` it counts what the engine's fast path needs (the last block at the newest
position only), which is what ``achieved_gflops`` in bench.inference is measured against.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from encoder.device import model_device
from encoder.features import featurize
from encoder.inference.batching import padded_fixed_batches
from encoder.model import UserEncoder


def model_flops(
    lengths: np.ndarray, d_model: int, n_layers: int, mlp_ratio: int = 4, path: str = "full"
) -> float:
    """Useful FLOPs to encode users with these (non-padded) lengths.

    ``path="newest_only"``: the FLOPs the user vector actually needs (`encoder.inference.fastpath`): the
    last block projects keys/values at every position (4 d^2 per token) and does the rest for the
    newest position only (one query over L keys, projection, MLP).
    """
    L = np.asarray(lengths, dtype=np.float64)
    d = float(d_model)
    per_layer = (8 + 4 * mlp_ratio) * d * d * L + 2 * d * L * (L + 1)  # (U,)
    if path != "newest_only":  # full and naive compute every position of every block
        return float((n_layers * per_layer + 2 * d * d).sum())
    last = (
        4 * d * d * L + (4 + 4 * mlp_ratio) * d * d + 4 * d * L
    )  # kv at every position; the newest's q, proj, MLP, attention
    return float(((n_layers - 1) * per_layer + last + 2 * d * d).sum())


class NaiveEncoder(nn.Module):
    """The model's weights through eager ``nn.TransformerEncoder`` (fp32, no fused/packed tricks)."""

    def __init__(self, model: UserEncoder):
        super().__init__()
        cfg = model.cfg
        if cfg.pooling != "last":
            raise NotImplementedError("the naive baseline implements pooling='last' only")
        self.model, self.n_heads = model, cfg.n_heads
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.n_heads,
            dim_feedforward=cfg.mlp_ratio * cfg.d_model,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        with torch.no_grad():
            for ours, theirs in zip(model.blocks, self.encoder.layers, strict=True):
                theirs.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)  # (3D, D): q, k, v rows
                theirs.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
                theirs.self_attn.out_proj.load_state_dict(ours.attn.proj.state_dict())
                theirs.linear1.load_state_dict(ours.mlp[0].state_dict())
                theirs.linear2.load_state_dict(ours.mlp[2].state_dict())
                theirs.norm1.load_state_dict(ours.ln1.state_dict())
                theirs.norm2.load_state_dict(ours.ln2.state_dict())
        self.encoder.to(model_device(model))  # beside the model's weights (a GPU engine too)
        self.eval()

    def forward(self, batch) -> torch.Tensor:
        x = self.model.token_embedding(batch)  # (B, T, D) left-padded: newest event at T-1
        B, T, _ = x.shape
        pad = T - batch.lengths  # (B,)
        # The textbook layout is right padding with a causal mask plus a key-padding mask:
        # shift each row left by its padding (positions are already relative to the oldest event).
        idx = (torch.arange(T, device=x.device)[None, :] + pad[:, None]) % T  # (B, T)
        x = torch.gather(x, 1, idx[..., None].expand_as(x))  # (B, T, D) right-padded
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(
            1
        )  # (T, T) True = a future key, masked
        key_padding = (
            torch.arange(T, device=x.device)[None, :] >= batch.lengths[:, None]
        )  # (B, T) True = padding
        h = self.encoder(x, mask=causal, src_key_padding_mask=key_padding, is_causal=True)  # (B, T, D)
        h = self.model.ln_f(h[torch.arange(B, device=x.device), batch.lengths - 1])  # (B, D) newest event
        return self.model.user_vector(h, batch)  # (B, D) unit vectors


def naive_encode(naive: NaiveEncoder, table: pa.Table, as_of: datetime, batch_rows: int = 64) -> np.ndarray:
    """(R, D) vectors of a SEQUENCE table: batches of ``batch_rows`` users in file order, padded to N."""
    cfg = naive.model.cfg
    parts = []
    with torch.no_grad():
        for rows in padded_fixed_batches(table.num_rows, batch_rows):
            batch = featurize(table.take(pa.array(rows)), cfg, as_of=as_of, pad_to=cfg.max_len)
            parts.append(naive(batch).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, cfg.d_model), np.float32)
