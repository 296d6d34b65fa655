"""The encoder's optimiser: AdamW over the dense weights, lazy (sparse) Adam over the hashed tables.

The hashed embedding tables hold almost every parameter (2^18 item rows x D, plus the attribute
tables) but a step touches only the rows of its batch's ids. With dense gradients every step would
zero, accumulate and Adam-update all of them: on a 2-core CPU that was ~90 % of a step on the Sports
benchmark (330 ms of 360 ms). The tables therefore produce sparse gradients (``nn.Embedding(sparse=
True)``) and `torch.optim.SparseAdam` updates only the touched rows (lazy Adam, the usual choice for
large embedding tables); the rest (transformer, heads, positions) is AdamW, fused where the build
supports it. Neither group has weight decay on embeddings (`UserEncoder.param_groups`).

The learning rate follows `lr_factor` of the global step (warmup, cosine), set on every group by
`set_lr`, so a resumed run needs no scheduler state: the step count is enough.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def budget_epochs(epochs: int, budget_s: float, elapsed_s: float, done: int) -> int:
    """Epochs the cosine schedule spans: ``epochs``, or, under a time budget, as many as fit in it at
    the mean pace of the ``done`` epochs so far (``elapsed_s``), never fewer than ``done``. Re-planned
    after every epoch, so a machine too slow for ``epochs`` still decays the rate to 0 by the end of its
    budget instead of being cut at a high rate; one fast enough keeps ``epochs`` exactly."""
    if not budget_s or done <= 0 or elapsed_s <= 0:
        return epochs
    fit = math.floor(budget_s / (elapsed_s / done))
    return max(done, min(epochs, fit))


def _adamw(groups: list[dict], lr: float, betas) -> torch.optim.AdamW:
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # a build or device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


class EncoderOptimizer:
    """AdamW (dense groups) + SparseAdam (the ``sparse`` group), stepped, zeroed and saved together."""

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.98), table_lr_scale: float = 1.0):
        dense = [g for g in groups if not g.get("sparse") and g["params"]]
        sparse = [g for g in groups if g.get("sparse") and g["params"]]
        strip = ("names", "sparse")
        self.base_lr = lr
        self.table_lr = lr * table_lr_scale  # the hashed tables' peak rate (`train.table_lr_scale`)
        self.dense = _adamw([{k: v for k, v in g.items() if k not in strip} for g in dense], lr, betas)
        self.sparse = (
            torch.optim.SparseAdam([p for g in sparse for p in g["params"]], lr=self.table_lr, betas=betas)
            if sparse
            else None
        )

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.dense, self.sparse) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def parameters(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def set_lr(self, factor: float) -> None:
        for g in self.dense.param_groups:
            g["lr"] = self.base_lr * factor
        for g in self.sparse.param_groups if self.sparse is not None else ():
            g["lr"] = self.table_lr * factor

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Scale every gradient (dense and sparse) so that their global L2 norm is at most ``max_norm``.

        Returns the norm before clipping, as a tensor: nothing here waits for the device (the scale is
        ``min(1, max_norm / norm)``, applied to every gradient, exactly 1 when no clipping is due)."""
        params = [p for p in self.parameters() if p.grad is not None]
        if not params:
            return torch.zeros(())
        for p in params:  # a sparse grad may repeat a row before coalescing: coalesce first
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
        squares = [(p.grad.values() if p.grad.is_sparse else p.grad).float().pow(2).sum() for p in params]
        total = torch.stack(squares).sum().sqrt()
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in params:
            if p.grad.is_sparse:
                p.grad = p.grad * scale.to(p.grad.dtype)
            else:
                p.grad.mul_(scale.to(p.grad.dtype))
        return total

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict() if self.sparse else None}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state.get("sparse") is not None:
            self.sparse.load_state_dict(state["sparse"])
