"""An independent, minimal SASRec on a SASRec text file: is our encoder's level the data's or its own?

Our encoder differs from the published SASRec recipes in several ways at once (hashed item ids, lazy
sparse Adam at a multiple of the learning rate, cosine scores over a temperature, in-batch negatives with
logQ). This bench trains the textbook version beside it, on the same split and scored by the same
ranking code (`encoder.evaluate.leave_last_out_metrics`), with popularity in the same run:

* exact item ids (one embedding row per catalogue item), learned positions, dropout on the tokens;
* causal pre-norm blocks (`nn.MultiheadAttention`, GELU MLP), a final LayerNorm;
* scores = dot products with the same item table (tied), no normalisation, no temperature;
* sampled softmax over the positive and ``negatives`` items drawn uniformly per step (shared by the
  step's positions; a draw equal to a position's own positive is masked), no logQ;
* dense Adam at a constant learning rate; the best epoch on validation NDCG@10 over all validation
  users is kept (the eSASRec benchmark's selection), then scored on test.

    python -m bench.reference_sasrec [--quick] [--sports-file F] [--seed 0] [--threads 2]

Last line: one JSON object with ``reference_ndcg10``/``reference_hr10`` beside ``pop_ndcg10``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import emit, machine, parse_args
from bench.quality import REPO, SPORTS_FILE
from encoder.baselines import popularity_scores
from encoder.data import Catalogue, history_items, item_catalogue, leave_last_out, read_sasrec
from encoder.evaluate import leave_last_out_metrics


@dataclass
class ReferenceConfig:
    d_model: int = 64  # embedding / hidden width (eSASRec's Sports table: 64)
    n_layers: int = 1  # transformer blocks (eSASRec's Sports table: 1)
    n_heads: int = 1  # attention heads
    dropout: float = 0.2  # tokens, attention weights, residual branches
    mlp_ratio: int = 1  # MLP hidden width = mlp_ratio * d_model (SASRec's point-wise feed-forward)
    max_len: int = 50  # newest items kept per row (the benchmark protocol)
    negatives: int = 1024  # uniform negatives per step, shared by its positions
    lr: float = 1e-3  # Adam, constant
    batch_size: int = 128  # training rows per step
    epochs: int = 200  # upper bound
    patience: int = 20  # epochs without a better validation NDCG@10 before stopping
    eval_every: int = 5  # epochs between validation scorings (all validation users)
    budget_s: float = 2400.0  # stop training after this many seconds
    seed: int = 0  # weights, batch order and negatives


class Block(nn.Module):
    """Pre-norm causal block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        D = cfg.d_model
        self.ln_attn, self.ln_mlp = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(D, D * cfg.mlp_ratio),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(D * cfg.mlp_ratio, D),
            nn.Dropout(cfg.dropout),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, causal, real):  # (B, T, D), (T, T) bool, (B, T, 1)
        q = self.ln_attn(x)
        x = x + self.drop(self.attn(q, q, q, attn_mask=causal, need_weights=False)[0])
        return (x + self.mlp(self.ln_mlp(x))) * real  # (B, T, D) padding stays zero


class ReferenceSASRec(nn.Module):
    def __init__(self, cfg: ReferenceConfig, n_items: int):
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)  # row 0 = padding
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)  # slot of a left-padded max_len row
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, x):  # (B, T) left-padded item rows, T <= max_len, newest last
        T = x.shape[1]
        real = (x > 0).unsqueeze(-1).float()  # (B, T, 1)
        slots = torch.arange(self.cfg.max_len - T, self.cfg.max_len)  # newest always in the last slot
        h = self.drop(self.items(x) + self.pos(slots)) * real  # (B, T, D)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)  # True = may not attend
        for block in self.blocks:
            h = block(h, causal, real)
        return self.ln_f(h)  # (B, T, D)


def item_rows(sequences: pa.Table, catalogue: Catalogue, max_len: int) -> torch.Tensor:
    """(U, max_len) left-padded catalogue positions + 1 of each row's newest ``max_len`` catalogue items."""
    offsets, flat = history_items(sequences, catalogue)  # CSR of catalogue positions, in time order
    out = np.zeros((len(offsets) - 1, max_len), np.int64)  # 0 = padding
    for r, (lo, hi) in enumerate(pairwise(offsets)):
        keep = flat[max(lo, hi - max_len) : hi] + 1
        out[r, max_len - len(keep) :] = keep
    return torch.from_numpy(out)


def training_pairs(train: pa.Table, catalogue: Catalogue, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next items), both (R, max_len): each row's items[:-1] predicting items[1:]."""
    rows = item_rows(train, catalogue, max_len + 1)
    rows = rows[(rows > 0).sum(1) >= 2]
    return rows[:, :-1], rows[:, 1:]


def sampled_softmax_loss(model: ReferenceSASRec, h, y, negatives: int) -> torch.Tensor:
    """h (B, T, D) outputs, y (B, T) next items (0 = none) -> mean CE over [positive, shared draws]."""
    mask = y > 0
    hq, yq = h[mask], y[mask]  # (N, D), (N,)
    draws = torch.randint(1, model.items.num_embeddings, (negatives,))  # (K,)
    pos = (model.items(yq) * hq).sum(-1, keepdim=True)  # (N, 1)
    neg = (hq @ model.items(draws).T).masked_fill(draws[None] == yq[:, None], float("-inf"))  # (N, K)
    return F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros(len(yq), dtype=torch.long))


@torch.no_grad()
def score(model: ReferenceSASRec, inputs: pa.Table, targets: np.ndarray, catalogue: Catalogue) -> dict:
    model.eval()
    rows = item_rows(inputs, catalogue, model.cfg.max_len)
    items = model.items.weight[1:]  # (I, D) catalogue order

    def scores(lo, hi):
        return model(rows[lo:hi])[:, -1] @ items.T  # (u, I)

    out = leave_last_out_metrics(scores, inputs, targets, catalogue)
    model.train()
    return out


def train_reference(cfg: ReferenceConfig, sequences: pa.Table, log=print) -> dict:
    torch.manual_seed(cfg.seed)
    split = leave_last_out(sequences, ["click"], min_positives=3)
    catalogue = item_catalogue(sequences, ())
    X, Y = training_pairs(split.train, catalogue, cfg.max_len)
    model = ReferenceSASRec(cfg, len(catalogue))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    best, best_epoch, best_state, t0 = -1.0, 0, None, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        total, steps = 0.0, 0
        for idx in torch.randperm(len(X)).split(cfg.batch_size):
            x, y = X[idx], Y[idx]
            keep = int((y > 0).sum(1).max())  # drop the all-padding columns of this batch
            loss = sampled_softmax_loss(model, model(x[:, -keep:]), y[:, -keep:], cfg.negatives)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        record = {"epoch": epoch, "loss": round(total / steps, 4), "s": round(time.perf_counter() - t0, 1)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            valid = score(model, split.valid, split.valid_target, catalogue)["ndcg@10"]
            record["valid_ndcg10"] = round(valid, 4)
            if valid > best:
                best, best_epoch = valid, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        log(json.dumps(record))
        if epoch - best_epoch >= cfg.patience or time.perf_counter() - t0 > cfg.budget_s:
            break
    train_s = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    test = score(model, split.test, split.test_target, catalogue)
    pop = leave_last_out_metrics(
        popularity_scores(split.train, catalogue, ["click"]), split.test, split.test_target, catalogue
    )
    return {
        "reference_ndcg10": test["ndcg@10"],
        "reference_hr10": test["hr@10"],
        "reference_valid_ndcg10": best,
        "reference_best_epoch": best_epoch,
        "reference_train_s": round(train_s, 1),
        "pop_ndcg10": pop["ndcg@10"],
        "pop_hr10": pop["hr@10"],
        "users_evaluated": test["users"],
        "items": len(catalogue),
    }


QUICK = {"epochs": 2, "eval_every": 1}


def _args(parser) -> None:
    parser.add_argument("--sports-file", default=SPORTS_FILE, help="a SASRec text file (repo-relative)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--set", default="{}", help='JSON ReferenceConfig overrides, e.g. {"negatives": 256}')


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _args)
    torch.set_num_threads(args.threads)
    cfg = ReferenceConfig(**{**(QUICK if args.quick else {}), **json.loads(args.set), "seed": args.seed})
    result = train_reference(cfg, read_sasrec(REPO / args.sports_file))
    result["ratio_to_pop"] = round(result["reference_ndcg10"] / max(result["pop_ndcg10"], 1e-12), 2)
    emit(
        {
            "bench": "reference_sasrec",
            "quick": args.quick,
            "machine": machine(),
            "config": asdict(cfg),
            **result,
        }
    )


if __name__ == "__main__":
    main()
