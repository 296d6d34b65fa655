"""The user-action-as-token transformer: one event = one token, one user = one L2-normalised vector.

Token embedding (sum of parts, each switchable for the plain-SASRec ablation)::

    token = Σ_attr Σ_h E_attr[hash_h(raw id)]     hashed tables: item, category, advertiser, campaign
          + E_action[event_type]                  use_action
          + E_time[log2 bucket of (as_of - ts)]   use_time  (ATRank-style time-gap buckets)
          + E_pos[index from the oldest kept event]

Hashing is done by `encoder.features` (numpy, no vocabulary); this module only sees bucket indexes
``(B, T, A, H)``: A attribute tables (item first), H hash functions whose rows are *summed*. Bucket 0
of every table is the padding / missing-value row and stays zero.

**Padding is on the left**: the newest event is always at position ``T-1``. Positions count from the
oldest *kept* event, so a user gets the same positions whatever padded length its batch has. The
attention mask lets a real query see only real keys at or before it; a padding query sees only
itself (so no softmax row is empty and nothing leaks into real positions). The vector of a user is
therefore the same (up to float rounding) in any batch, which the inference engineer relies on.

The blocks are causal pre-norm transformer blocks using `F.scaled_dot_product_attention` (the fast
path); `forward_reference` runs the same weights through an explicit matmul-softmax attention (the
plain path); tests compare both. Context (hour of day, weekday of ``as_of``) is added *beside* the
sequence, to the pooled output, never as a token. Pooling is "last" (the output at the newest
position) or "attention" (a learned query attending over the outputs, causally per position).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.contracts import ATTRIBUTE_COLUMNS

DEFAULT_ACTIONS = ("impression", "click", "conversion", "view", "search")


@dataclass
class ModelConfig:
    d_model: int = 64  # token / user vector width D
    n_layers: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads (d_model % n_heads == 0)
    max_len: int = 200  # newest events kept per user (T upper bound)
    dropout: float = 0.1  # dropout on tokens, residual branches and MLP (training only)
    attn_dropout: float = 0.0  # dropout on attention weights (costly on CPU; off by default)
    mlp_ratio: int = 4  # hidden width of the block MLP = mlp_ratio * d_model
    item_buckets: int = 2**18  # rows of the item hash table (2 hashes -> ~2^36 distinct pairs, fine for 1e8+ ids)
    attr_buckets: int = 2**14  # rows of each attribute hash table (category, advertiser, campaign)
    n_hashes: int = 2  # hash functions per id; their rows are summed (hash embedding)
    hash_seed: int = 0x5EED  # seed of the hash functions (part of the artifact: changing it changes every id)
    attributes: tuple[str, ...] = ATTRIBUTE_COLUMNS  # attribute tables besides item_id, in this order
    actions: tuple[str, ...] = DEFAULT_ACTIONS  # action vocabulary; 0 = padding, len+1 = unknown type
    n_time_buckets: int = 24  # log2 time-gap buckets of (as_of - ts) in seconds; 0 = padding
    use_action: bool = True  # add the action-type embedding
    use_time: bool = True  # add the time-gap bucket embedding
    use_attributes: bool = True  # add the attribute tables (False: item id only, plain SASRec)
    use_context: bool = True  # add hour-of-day / weekday of as_of beside the sequence
    pooling: str = "last"  # "last" (newest position) or "attention" (learned-query pooling)

    def __post_init__(self):
        self.attributes = tuple(self.attributes)
        self.actions = tuple(self.actions)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.pooling not in ("last", "attention"):
            raise ValueError(f"pooling must be 'last' or 'attention', got {self.pooling!r}")
        if min(self.item_buckets, self.attr_buckets) < 2 or self.n_hashes < 1 or self.n_time_buckets < 2:
            raise ValueError("hash tables need >= 2 buckets, >= 1 hash function, >= 2 time buckets")

    @property
    def tables(self) -> tuple[str, ...]:
        """The hashed tables, item first: ("item_id", *attributes)."""
        return ("item_id", *self.attributes)

    def buckets(self, table: str) -> int:
        return self.item_buckets if table == "item_id" else self.attr_buckets

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool of real positions -> (B, T, T) bool, True = query may attend to key.

    Causal, real keys only; a padding query attends to itself only (no empty softmax row).
    """
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()  # (T, T)
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)  # (T, T)
    return (causal & valid[:, None, :]) | eye  # (B, T, T)


def reference_attention(q, k, v, mask, dropout_p: float = 0.0):
    """Plain attention: softmax(q k^T / sqrt(d) masked) v. q, k, v (B, h, T, d); mask (B, 1, T, T)."""
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, h, T, T)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, h, T, d)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout, self.attn_dropout = cfg.n_heads, cfg.dropout, cfg.attn_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, mask, reference: bool = False):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d)
        p, pa = (self.dropout, self.attn_dropout) if self.training else (0.0, 0.0)
        if reference:
            y = reference_attention(q, k, v, mask, pa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=pa)  # (B, h, T, d)
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return F.dropout(self.proj(y), p=p)


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, mask, reference: bool = False):
        x = x + self.attn(self.ln1(x), mask, reference)
        return x + self.mlp(self.ln2(x))


class UserEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.tables = nn.ModuleList(nn.Embedding(cfg.buckets(t), D, padding_idx=0) for t in cfg.tables)
        self.action = nn.Embedding(len(cfg.actions) + 2, D, padding_idx=0)  # 0 pad, 1..n types, n+1 unknown
        self.time = nn.Embedding(cfg.n_time_buckets, D, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, D)
        self.hour = nn.Embedding(24, D)
        self.weekday = nn.Embedding(7, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.pool_query = nn.Linear(D, 1, bias=False)  # attention pooling score w . h_k
        self.head = nn.Linear(D, D)  # user vector head (after pooling + context)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    # -- embeddings -----------------------------------------------------------------------------
    def _n_tables(self) -> int:
        return len(self.tables) if self.cfg.use_attributes else 1

    def attribute_embedding(self, idx: torch.Tensor) -> torch.Tensor:
        """(..., A, H) hashed bucket indexes -> (..., D): Σ over used tables and hash functions."""
        out = 0
        for a in range(self._n_tables()):
            out = out + self.tables[a](idx[..., a, :]).sum(dim=-2)  # (..., H, D) -> (..., D)
        return out

    def item_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """Target-item vectors, tied with the token tables: (N, A, H) indexes -> (N, D), L2-normalised.

        Attribute indexes of 0 (unknown) contribute nothing, so item ids alone work too.
        """
        return F.normalize(self.attribute_embedding(idx), dim=-1)

    def token_embedding(self, batch) -> torch.Tensor:
        x = self.attribute_embedding(batch.attrs)  # (B, T, D)
        if self.cfg.use_action:
            x = x + self.action(batch.action)
        if self.cfg.use_time:
            x = x + self.time(batch.time_bucket)
        valid = batch.valid  # (B, T)
        T = valid.shape[1]
        pos = torch.arange(T, device=valid.device)[None, :] - (T - batch.lengths)[:, None]  # (B, T)
        x = x + self.pos(pos.clamp(0, self.cfg.max_len - 1))
        return x * valid[..., None]  # padding tokens are exactly zero

    def context(self, hour: torch.Tensor, weekday: torch.Tensor) -> torch.Tensor:
        """(B,) or (B, T) hour / weekday -> (..., D), or 0 when context is off."""
        if not self.cfg.use_context:
            return 0
        return self.hour(hour) + self.weekday(weekday)

    # -- encoder --------------------------------------------------------------------------------
    def _hidden(self, batch, reference: bool) -> torch.Tensor:
        valid = batch.valid  # (B, T)
        mask = attention_mask(valid)[:, None]  # (B, 1, T, T)
        x = self.drop(self.token_embedding(batch))  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask, reference)
        h = self.ln_f(x)  # (B, T, D)
        if self.cfg.pooling == "attention":
            s = self.pool_query(h).squeeze(-1)  # (B, T) score of each output
            att = s[:, None, :].expand(-1, s.shape[1], -1).masked_fill(~mask[:, 0], float("-inf"))  # (B, T, T)
            h = att.softmax(dim=-1) @ h  # (B, T, D) causal pooled output per position
        return h

    def _head(self, h, hour, weekday):
        ctx = self.context(hour, weekday)
        return F.normalize(self.head(h + ctx), dim=-1)

    def encode_positions(self, batch, hour=None, weekday=None, reference: bool = False) -> torch.Tensor:
        """(B, T, D) L2-normalised vector after every position (training: each predicts the future).

        ``hour``/``weekday`` (B, T) are the context of each position's query time (default: as_of's).
        """
        h = self._hidden(batch, reference)  # (B, T, D)
        hour = batch.hour[:, None] if hour is None else hour  # (B, 1) or (B, T)
        weekday = batch.weekday[:, None] if weekday is None else weekday
        return self._head(h, hour, weekday)

    def forward(self, batch) -> torch.Tensor:
        """(B, D) L2-normalised user vectors: the output at the newest position (left padding)."""
        h = self._hidden(batch, reference=False)[:, -1]  # (B, D)
        return self._head(h, batch.hour, batch.weekday)

    def forward_reference(self, batch) -> torch.Tensor:
        """Same weights, explicit matmul-softmax attention: the plain path tests compare against."""
        h = self._hidden(batch, reference=True)[:, -1]  # (B, D)
        return self._head(h, batch.hour, batch.weekday)
