"""The user-action-as-token transformer: one event = one token, one user = one L2-normalised vector.

Token embedding (sum of parts, each switchable for the plain-SASRec ablation)::

    token = Σ_attr Σ_h E_attr[hash_h(raw id)]     hashed tables: item, category, advertiser, campaign
          + E_action[event_type]                  use_action
          + E_time[log2 bucket of (as_of - ts)]   use_time  (ATRank-style time-gap buckets)
          + E_gap[log2 bucket of (ts - ts_before)] use_time and use_event_gap (TiSASRec-style interval)
          + E_pos[position]                       from the newest event (0) back, or from the oldest

Hashing is done by `encoder.features` (numpy, no vocabulary); this module only sees bucket indexes
``(B, T, A, H)``: A hashed tables (item first), H hash functions whose rows are *summed*. Bucket 0
of every table is the padding / missing-value row and stays zero. The tables are an
``nn.ModuleDict`` keyed by table name (``tables.item``, ``tables.category`` ...; one
`encoder.config.TableConfig` each); weights saved under the older positional keys (``tables.0`` ...)
are renamed on load.

**Padding is on the left**: the newest event is always at position ``T-1``. Position embeddings count
back from the newest event (``positions="from_newest"``, SASRec's layout) or up from the oldest *kept*
event (``"from_oldest"``, artifacts saved before the switch existed); either way a user gets the same
positions whatever padded length its batch has. The
attention mask lets a real query see only real keys at or before it; a padding query sees only
itself (so no softmax row is empty and nothing leaks into real positions). The vector of a user is
therefore the same (up to float rounding) in any batch, which the inference engineer relies on.

The blocks are causal pre-norm transformer blocks. **One switch selects the attention kernel** of
every block (HSTU style): ``UserEncoder(cfg, attention="sdpa")`` (default, the fused
`F.scaled_dot_product_attention`) or ``"reference"`` (explicit matmul-softmax, the plain path tests
compare against); `UserEncoder.set_attention` changes it on a built model. The kernel is a runtime
choice, not part of the artifact: the same weights run under either. Context (hour of day, weekday
of ``as_of``) is added *beside* the sequence, to the pooled output, never as a token; so is the idle
time (``use_idle``: how long the user has been idle at ``as_of``), as a scale and shift of each
dimension, so that it can choose between what the vector holds of the session and of the lasting
interests. In training each query's idle time is a random moment before its next event. Pooling is
"last" (the output at the newest position) or "attention" (a learned query attending over the
outputs, causally per position).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from encoder.config import ModelConfig
from encoder.optim import EncoderOptimizer

Attention = Literal[
    "sdpa", "reference"
]  # the attention kernel: fused SDPA (default) or explicit matmul-softmax
DECAY_MODULES = (nn.Linear,)  # weights of these get weight decay
NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm)  # weights of these do not; no bias ever does


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool of real positions -> (B, T, T) bool, True = query may attend to key.

    Causal, real keys only; a padding query attends to itself only (no empty softmax row).
    """
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()  # (T, T)
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)  # (T, T)
    return (causal & valid[:, None, :]) | eye  # (B, T, T)


def attend(q, k, v, mask, dropout_p: float = 0.0, kernel: Attention = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v by ``kernel``. q (B, h, Tq, d), k/v (B, h, T, d), mask (B, 1, Tq, T).

    ``"sdpa"``: `F.scaled_dot_product_attention` (fused where the backend has it). ``"reference"``:
    the explicit matmul-softmax, every intermediate materialised.
    """
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, h, Tq, d)
    if kernel != "reference":
        raise ValueError(f"attention kernel must be one of {get_args(Attention)}, got {kernel!r}")
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, h, Tq, T)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, h, Tq, d)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, kernel: Attention = "sdpa"):
        super().__init__()
        self.n_heads, self.dropout, self.attn_dropout = cfg.n_heads, cfg.dropout, cfg.attn_dropout
        self.kernel: Attention = kernel  # set by UserEncoder.set_attention
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, h, T, d)."""
        B, T, D = t.shape
        return t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def attend(self, q, k, v, mask) -> torch.Tensor:
        """Heads (B, h, Tq, d) x (B, h, T, d) -> (B, Tq, D) projected output (this layer's kernel)."""
        p, pa = (self.dropout, self.attn_dropout) if self.training else (0.0, 0.0)
        y = attend(q, k, v, mask, pa, self.kernel)  # (B, h, Tq, d)
        B, h, Tq, d = y.shape
        y = y.transpose(1, 2).reshape(B, Tq, h * d)  # (B, Tq, D)
        return F.dropout(self.proj(y), p=p)

    def forward(self, x, mask):
        D = x.shape[-1]
        q, k, v = (self.heads(t) for t in self.qkv(x).split(D, dim=2))  # 3 x (B, h, T, d)
        return self.attend(q, k, v, mask)  # (B, T, D)


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig, kernel: Attention = "sdpa"):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, kernel)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)  # (B, T, D)
        return x + self.mlp(self.ln2(x))


class UserEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: Attention = "sdpa"):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.tables = nn.ModuleDict(
            {t.name: nn.Embedding(t.num_embeddings, D, padding_idx=0, sparse=True) for t in cfg.tables}
        )  # sparse gradients: a step updates only its ids' rows (encoder.optim)
        self.output_tables = (
            None
            if cfg.tie_items
            else nn.ModuleDict(
                {t.name: nn.Embedding(t.num_embeddings, D, padding_idx=0, sparse=True) for t in cfg.tables}
            )
        )  # untied target-item side (cfg.tie_items False): same hashing, its own rows
        self.action = nn.Embedding(len(cfg.actions) + 2, D, padding_idx=0)  # 0 pad, 1..n types, n+1 unknown
        self.time = nn.Embedding(cfg.n_time_buckets, D, padding_idx=0)
        if cfg.uses_event_gap:  # rows 1..n-1: log2 buckets; n: no event before
            self.gap = nn.Embedding(cfg.n_time_buckets + 1, D, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, D)
        self.hour = nn.Embedding(24, D)
        self.weekday = nn.Embedding(7, D)
        if cfg.uses_idle:  # log2 bucket of the idle time -> (scale, shift) of each dimension; 0 = no event
            self.idle = nn.Embedding(cfg.n_time_buckets, 2 * D, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.pool_query = nn.Linear(D, 1, bias=False)  # attention pooling score w . h_k
        self.head = nn.Linear(D, D)  # user vector head (after pooling + context)
        self.apply(self._init)
        self.set_attention(attention)
        self.register_load_state_dict_pre_hook(UserEncoder._rename_positional_tables)

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

    # -- switches and loading -------------------------------------------------------------------
    @property
    def attention(self) -> Attention:
        """The attention kernel of every block (one switch for the whole model)."""
        return self.blocks[0].attn.kernel if len(self.blocks) else "sdpa"

    def set_attention(self, kernel: Attention) -> UserEncoder:
        """Run every block's attention with ``kernel`` ("sdpa" or "reference"); returns the model."""
        if kernel not in get_args(Attention):
            raise ValueError(f"attention kernel must be one of {get_args(Attention)}, got {kernel!r}")
        for block in self.blocks:
            block.attn.kernel = kernel
        return self

    @staticmethod
    def _rename_positional_tables(module: UserEncoder, state_dict, prefix, *_args) -> None:
        """Weights saved before the tables were named (``tables.0.weight`` ...) load under their names."""
        for i, table in enumerate(module.cfg.tables):
            old = f"{prefix}tables.{i}.weight"
            if old in state_dict:
                state_dict[f"{prefix}tables.{table.name}.weight"] = state_dict.pop(old)

    # -- optimisation ---------------------------------------------------------------------------
    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups chosen by module type (nanoGPT style): Linear weights decay; embedding and
        LayerNorm weights and every bias do not; the hashed tables (sparse gradients) form their own
        group for the sparse optimiser. A parameter of any other module type is an error, so a new
        layer must be classified here before it can be trained."""
        decay: dict[str, nn.Parameter] = {}
        no_decay: dict[str, nn.Parameter] = {}
        sparse: dict[str, nn.Parameter] = {}
        for mn, m in self.named_modules():
            for pn, p in m.named_parameters(recurse=False):
                name = f"{mn}.{pn}" if mn else pn
                if isinstance(m, nn.Embedding) and m.sparse:
                    sparse[name] = p
                elif pn.endswith("bias") or (pn.endswith("weight") and isinstance(m, NO_DECAY_MODULES)):
                    no_decay[name] = p
                elif pn.endswith("weight") and isinstance(m, DECAY_MODULES):
                    decay[name] = p
                else:
                    raise TypeError(f"parameter {name} of a {type(m).__name__}: classify it in param_groups")
        return [
            {"params": list(decay.values()), "names": list(decay), "weight_decay": weight_decay},
            {"params": list(no_decay.values()), "names": list(no_decay), "weight_decay": 0.0},
            {"params": list(sparse.values()), "names": list(sparse), "weight_decay": 0.0, "sparse": True},
        ]

    def configure_optimizer(
        self, lr: float, weight_decay: float, betas=(0.9, 0.98), table_lr_scale: float = 1.0
    ) -> EncoderOptimizer:
        """AdamW over the dense groups, SparseAdam over the hashed tables at ``lr * table_lr_scale``."""
        return EncoderOptimizer(self.param_groups(weight_decay), lr, betas, table_lr_scale)

    # -- embeddings -----------------------------------------------------------------------------
    def _used_tables(self, side: nn.ModuleDict) -> list[nn.Embedding]:
        """The tables of ``side`` summed into a vector, in feature order: all, or the item table alone."""
        tables = list(side.values())
        return tables if self.cfg.use_attributes else tables[:1]

    def attribute_embedding(self, idx: torch.Tensor, side: nn.ModuleDict | None = None) -> torch.Tensor:
        """(..., A, H) hashed bucket indexes -> (..., D): Σ over used tables (of ``side``, default the
        token tables) and hash functions."""
        out = 0
        for a, table in enumerate(self._used_tables(self.tables if side is None else side)):
            out = out + table(idx[..., a, :]).sum(dim=-2)  # (..., H, D) -> (..., D)
        return out

    def item_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """Target-item vectors, tied with the token tables (or the output tables when ``cfg.tie_items``
        is False): (N, A, H) indexes -> (N, D).

        L2-normalised with ``cfg.unit_items``; otherwise the norm is learned (the score of an item is
        its norm x the cosine with the unit user vector: a per-item popularity prior, and the user
        vectors stay unit length for the user graph). Attribute indexes of 0 (unknown) contribute
        nothing, so item ids alone work too.
        """
        v = self.attribute_embedding(idx, self.output_tables)
        return F.normalize(v, dim=-1) if self.cfg.unit_items else v

    def token_embedding(self, batch, newest: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) token embeddings. ``newest`` (B,) is the slot each row's "from the newest" positions
        count back from (default: the last slot, T-1); later slots get position 0 too (training only:
        no query with a target ever sees them, see `encode_positions`)."""
        x = self.attribute_embedding(batch.attrs)  # (B, T, D)
        if self.training and self.cfg.item_dropout > 0:  # whole tokens lose their item (not position, type)
            keep = torch.rand(x.shape[:2], device=x.device) >= self.cfg.item_dropout  # (B, T)
            x = x * keep[..., None]
        if self.cfg.use_action:
            x = x + self.action(batch.action)
        if self.cfg.use_time:
            x = x + self.time(batch.time_bucket)
        if self.cfg.uses_event_gap:
            x = x + self.gap(batch.gap_bucket)
        valid = batch.valid  # (B, T)
        T = valid.shape[1]
        if self.cfg.positions == "from_newest":
            slot = torch.arange(T, device=valid.device)[None, :]  # (1, T)
            pos = (T - 1 if newest is None else newest[:, None]) - slot  # (B, T) or (1, T)
            pos = pos.expand(len(batch.lengths), T)  # (B, T)
        else:  # from_oldest
            pos = torch.arange(T, device=valid.device)[None, :] - (T - batch.lengths)[:, None]  # (B, T)
        x = x + self.pos(pos.clamp(0, self.cfg.max_len - 1))
        return x * valid[..., None]  # (B, T, D) padding tokens are exactly zero

    def context(self, hour: torch.Tensor, weekday: torch.Tensor) -> torch.Tensor:
        """(B,) or (B, T) hour / weekday -> (..., D), or 0 when context is off."""
        if not self.cfg.use_context:
            return 0
        return self.hour(hour) + self.weekday(weekday)

    # -- encoder --------------------------------------------------------------------------------
    def _hidden(self, batch, newest: torch.Tensor | None = None) -> torch.Tensor:
        valid = batch.valid  # (B, T)
        mask = attention_mask(valid)[:, None]  # (B, 1, T, T)
        x = self.drop(self.token_embedding(batch, newest))  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask)  # (B, T, D)
        h = self.ln_f(x)  # (B, T, D)
        if self.cfg.pooling == "attention":
            s = self.pool_query(h).squeeze(-1)  # (B, T) score of each output
            att = (
                s[:, None, :].expand(-1, s.shape[1], -1).masked_fill(~mask[:, 0], float("-inf"))
            )  # (B, T, T)
            h = att.softmax(dim=-1) @ h  # (B, T, D) causal pooled output per position
        return h

    def user_head(self, h, hour, weekday, idle=None) -> torch.Tensor:
        """Pooled hidden (..., D) + context -> (..., D) L2-normalised user vectors. ``idle``: log2 buckets
        of the idle time, shaped as ``hour`` (used with ``cfg.uses_idle``)."""
        h = h + self.context(hour, weekday)
        if self.cfg.uses_idle:
            scale, shift = self.idle(idle).chunk(2, dim=-1)  # (..., D) each
            h = h * (1 + scale) + shift
        return F.normalize(self.head(h), dim=-1)

    def user_vector(self, h, batch) -> torch.Tensor:
        """(B, D) hidden state at the newest position -> (B, D) user vectors, in the batch's as_of context."""
        return self.user_head(h, batch.hour, batch.weekday, batch.idle_bucket)

    def encode_positions(self, batch, hour=None, weekday=None, newest=None, idle=None) -> torch.Tensor:
        """(B, T, D) L2-normalised vector after every position (training: each predicts the future).

        ``hour``/``weekday`` (B, T) are the context of each position's query time (default: as_of's), and
        ``idle`` (B, T) the idle-time bucket each query is computed at (default: as_of's).
        ``newest`` (B,): the slot of each row's last query that has a target. Training passes it so
        that this query sits at position 0 "from the newest", exactly where the query of `forward` (the
        newest event) sits at inference; the row's later events only ever serve as targets. Without it
        the inference position would be one that training never uses as a query (the newest event of a
        training row has no target).
        """
        h = self._hidden(batch, newest)  # (B, T, D)
        hour = batch.hour[:, None] if hour is None else hour  # (B, 1) or (B, T)
        weekday = batch.weekday[:, None] if weekday is None else weekday
        idle = batch.idle_bucket[:, None] if idle is None else idle
        return self.user_head(h, hour, weekday, idle)

    def forward(self, batch) -> torch.Tensor:
        """(B, D) L2-normalised user vectors: the output at the newest position (left padding)."""
        return self.user_vector(self._hidden(batch)[:, -1], batch)  # (B, D)
