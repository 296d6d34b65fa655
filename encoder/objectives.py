"""Training objectives: which future event each position predicts, and the sampled softmax.

Every position ``t`` of a (left-padded) sequence produces a user vector from events ``<= t``
(causal). Its target is a *positive* event after ``t`` (positives = configured event types, by
default click and conversion; impressions without a click are context only):

* ``next_positive``: the first positive event after ``t``.
* ``future_window`` (PinnerFormer's dense all-action loss): a uniformly random positive event in
  ``(t, ts_t + window]``. It trains the vector to stay good for the hours after it is computed,
  which is how nearline vectors are used. Data without a clock (SASRec files) counts the window in
  events instead: one of the next few items, a smoothed next-item target.

Scores are cosines / temperature. Two losses, chosen by catalogue size (`choose_loss`):

* ``full_softmax``: cross-entropy over every item of the catalogue (Klenitskiy & Vasilev, RecSys'23:
  full CE lifts SASRec well past sampled losses). Its logits are (positions x items), so it is for
  catalogues up to ``train.full_softmax_max_items``.
* ``sampled_softmax``: softmax over the *unique* target items of the step (in-batch negatives),
  with the logQ correction ``logit - log q(item)`` where ``q`` is the item's frequency among
  training positives, so popular items are not over-penalised for appearing as negatives more
  often (Yi et al. 2019), plus ``train.negatives`` items drawn uniformly from the catalogue and
  shared by the step (mixed negative sampling; the correction then uses each candidate's expected
  count). Its cost does not depend on the catalogue: the loss of 10^8-item catalogues.

Both take ``label_smoothing`` (Szegedy et al. 2016; `F.cross_entropy`'s semantics): that share of each
target's probability mass is spread evenly over the candidates the query really has (every item under
the full softmax; the unmasked candidates under the sampled one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F

from encoder.settings import Loss

LOSSES: tuple[str, ...] = get_args(Loss)


def choose_loss(loss: str, n_items: int, full_softmax_max_items: int) -> str:
    """The loss to train with: ``loss``, or for "auto" full softmax up to ``full_softmax_max_items`` items."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss != "auto":
        return loss
    return "full_softmax" if n_items <= full_softmax_max_items else "sampled_softmax"


def next_positive_targets(positive: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) int64: index of the first positive after each position, -1 if none."""
    B, T = positive.shape
    idx = torch.where(positive, torch.arange(T, device=positive.device).expand(B, T), T)  # (B, T)
    nearest = idx.flip(1).cummin(dim=1).values.flip(1)  # (B, T): first positive at or after t
    nxt = torch.cat(
        [nearest[:, 1:], torch.full((B, 1), T, device=positive.device)], dim=1
    )  # strictly after t
    return torch.where(nxt < T, nxt, -1)


def future_window_targets(
    positive: torch.Tensor, ts: torch.Tensor, window_ms: int | None, generator=None, window_events: int = 1
) -> torch.Tensor:
    """(B, T) bool, (B, T) int64 ms -> (B, T) int64: a random positive in (t, ts_t + window], -1 if none.

    ``window_ms`` None: data without a clock (SASRec files), the window is the next ``window_events``
    events, (t, t + window_events]."""
    B, T = positive.shape
    cnt = positive.long().cumsum(dim=1)  # (B, T) positives at or before t
    if window_ms is None:
        end = (torch.arange(T, device=ts.device) + window_events).clamp(max=T - 1).expand(B, T)  # (B, T)
    else:
        end = (
            torch.searchsorted(ts.contiguous(), (ts + window_ms).contiguous(), right=True) - 1
        )  # (B, T) last idx in window
    n = cnt.gather(1, end.clamp(min=0)) - cnt  # (B, T) positives in (t, end]
    r = (torch.rand(B, T, generator=generator, device="cpu").to(ts.device) * n).long()  # uniform in [0, n)
    want = cnt + r + 1  # the (cnt+r+1)-th positive of the row, 1-based
    j = torch.searchsorted(cnt.contiguous(), want.contiguous(), right=False)  # (B, T) its index
    return torch.where(n > 0, j, -1)


@dataclass
class Negatives:
    """K catalogue items drawn uniformly for one step, shared by every row of the sampled softmax."""

    vectors: torch.Tensor  # (K, D) L2-normalised item vectors
    ids: torch.Tensor  # (K,) raw item ids
    log_q: torch.Tensor  # (K,) log popularity (`LogQ`), for the mixed correction
    catalogue_size: int  # I, the number of items they were drawn from


def sampled_softmax(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    log_q: torch.Tensor | None,
    temperature: float,
    negatives: Negatives | None = None,
    in_batch: bool = True,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sampled softmax over in-batch (+ uniform) negatives. user, item (N, D) L2-normalised; item_ids
    (N,) raw; log_q (N,) log popularity of each target or None (no correction).

    Candidates are the unique target items of the batch (a row's own item appears once, so no false
    negatives from duplicates) and, with ``negatives``, K items drawn uniformly from the catalogue and
    shared by every row (mixed negative sampling, Yang et al. 2020); a uniform draw equal to a row's
    own target is masked for that row. The correction subtracts the log of each candidate's expected
    count in the candidate set, ``log(N q(j) + K / I)``: with no uniform negatives that is logQ
    (``log q(j)`` up to a constant), with only uniform ones a constant.

    ``in_batch=False`` masks the other rows' targets: each row's candidates are its own target and
    the K uniform draws (RecTools' sampled softmax), whose correction is a constant, so none is applied.
    """
    uniq, inverse = torch.unique(item_ids, return_inverse=True)  # (M,), (N,)
    first = torch.full((len(uniq),), len(item_ids), device=item_ids.device).scatter_reduce(
        0, inverse, torch.arange(len(item_ids), device=item_ids.device), reduce="amin"
    )  # (M,) a row holding each unique item
    cand = item[first]  # (M, D)
    cand_log_q = log_q[first] if log_q is not None and in_batch else None  # (M,)
    if negatives is not None:
        cand = torch.cat([cand, negatives.vectors])  # (M + K, D)
        if cand_log_q is not None:
            cand_log_q = torch.cat([cand_log_q, negatives.log_q])  # (M + K,)
    logits = (user @ cand.T / temperature).float()  # (N, M [+ K])
    if cand_log_q is not None:
        uniform = len(negatives.ids) / negatives.catalogue_size if negatives is not None else 0.0
        logits = logits - torch.log(len(item_ids) * cand_log_q.exp() + uniform)[None, :]
    if negatives is not None:  # a uniform draw of the row's own target is not a negative
        own = negatives.ids[None, :] == item_ids[:, None]  # (N, K)
        logits = logits.masked_fill(F.pad(own, (len(uniq), 0)), float("-inf"))  # (N, M + K)
    if not in_batch:  # other rows' targets are not candidates of this row
        others = inverse[:, None] != torch.arange(len(uniq), device=inverse.device)[None, :]  # (N, M)
        logits = logits.masked_fill(F.pad(others, (0, logits.shape[1] - len(uniq))), float("-inf"))
    if not label_smoothing:
        return F.cross_entropy(logits, inverse)
    log_p = logits.log_softmax(dim=-1)  # (N, M [+ K]), -inf where masked
    nll = -log_p.gather(1, inverse[:, None]).squeeze(1)  # (N,)
    return smoothed(nll, spread_nll(log_p, torch.isfinite(logits)), label_smoothing).mean()


def spread_nll(log_p: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C) log-probabilities -> (N,) mean of -log p over each row's candidates (``candidates`` (N, C)
    bool; default every column): the cross-entropy against a uniform target over them."""
    if candidates is None:
        return -log_p.mean(dim=-1)
    return -log_p.masked_fill(~candidates, 0.0).sum(dim=-1) / candidates.sum(dim=-1)


def smoothed(nll: torch.Tensor, spread: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-target cross-entropy with ``label_smoothing`` of the target's mass spread over its candidates."""
    return (1.0 - label_smoothing) * nll + label_smoothing * spread


def full_softmax(
    user: torch.Tensor,
    items: torch.Tensor,
    targets: list[tuple[torch.Tensor, torch.Tensor]],
    temperature: float,
    label_smoothing: float = 0.0,
) -> list[torch.Tensor]:
    """Cross-entropy over the whole catalogue, for several target sets that share user rows.

    user (U, D), items (I, D) L2-normalised; each target set is (rows (N,) into user, rows (N,) into
    items). The (U, I) logits and their log-softmax are computed once for every objective: a second
    objective (the future window) costs a gather, not another pass over the catalogue.
    Returns the mean cross-entropy of each set.
    """
    log_p = torch.log_softmax(((user / temperature) @ items.T).float(), dim=-1)  # (U, I)
    if not label_smoothing:
        return [-log_p[u, i].mean() for u, i in targets]
    spread = spread_nll(log_p)  # (U,) once for every objective
    return [smoothed(-log_p[u, i], spread[u], label_smoothing).mean() for u, i in targets]


class LogQ:
    """log of the in-batch sampling probability of each item, from its count among training positives.

    The lookup runs where the ids are (a sorted-id search in torch), so a GPU step never waits on the
    host for it; the table is copied to each device once."""

    def __init__(self, ids: np.ndarray, counts: np.ndarray):
        p = np.asarray(counts, dtype=np.float64) / max(float(np.sum(counts)), 1.0)
        log_p = np.log(np.maximum(p, 1e-12))
        self.floor = float(log_p.min()) if len(p) else 0.0  # ids never seen as positives
        self._tables = {
            "cpu": (torch.as_tensor(np.asarray(ids, dtype=np.int64)), torch.as_tensor(log_p).float())
        }

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device) for t in self._tables["cpu"])
        return self._tables[key]

    def __call__(self, item_ids: torch.Tensor) -> torch.Tensor:
        ids, log_p = self._on(item_ids.device)  # (I,) sorted raw ids, (I,) their log share
        if not len(ids):
            return torch.full(item_ids.shape, self.floor, dtype=torch.float32, device=item_ids.device)
        pos = torch.searchsorted(ids, item_ids).clamp(max=len(ids) - 1)
        return torch.where(ids[pos] == item_ids, log_p[pos], self.floor)
