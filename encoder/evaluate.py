"""Evaluation harness: leave-last-out full ranking, time split / staleness, planted structure.

All three families go through `encoder.metrics` (one ranking code, one purity code), and the
baselines (`encoder.baselines`) are scored by the very same functions on the same split:

* `leave_last_out_metrics`: HR/NDCG@{10,20,50} over the whole catalogue, the user's history items
  excluded from the candidates (the target itself is never excluded).
* `served_hourly`: the same test targets as the hourly job serves them: each scored by the vector
  computed at the last hour boundary before it, from the events before that boundary (so the
  vector knows how long the user has been idle, and not what they did in the target's hour).
* `staleness_metrics`: vectors computed at T score the positives in (T, T+horizon]; "fresh" vectors
  recomputed just before each target event score that one event. Loss = 1 - stale/fresh, in %.
* `planted_purity`: purity@20 of each user's nearest neighbours against the planted clusters, with
  the random-neighbour level beside it.

The promotion decision itself is not here: it is `soe.flows.gate.decide`, on metrics from
`evaluate_model`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from core.layout import HOUR_MS, Layout
from core.settings import EventSettings
from encoder.artifact import load_model, update_metrics
from encoder.baselines import bag_of_items_scores, popularity_scores
from encoder.config import ModelConfig
from encoder.data import (
    Catalogue,
    Split,
    events_before,
    has_real_time,
    history_items,
    is_positive,
    item_catalogue,
    leave_last_out,
    truncate,
)
from encoder.device import model_device, select_device
from encoder.features import featurize, hash_items
from encoder.metrics import KS, csr, purity, random_purity, ranking_metrics
from encoder.model import UserEncoder
from encoder.settings import TrainSettings


@torch.no_grad()
def encode_users(
    model: UserEncoder, cfg: ModelConfig, sequences: pa.Table, as_of=None, batch_size: int = 256, device=None
) -> torch.Tensor:
    """(U, D) user vectors in the row order of ``sequences`` (batches sorted by length for speed).

    ``device``: where the batches go; None = the model's own device (a GPU-trained model stays there).
    """
    model.eval()
    device = device or model_device(model)
    if sequences.num_rows == 0:
        return torch.zeros(0, cfg.d_model)
    lengths = pc.list_value_length(sequences["item_id"]).to_numpy()
    order = np.argsort(lengths, kind="stable")
    out = torch.zeros(sequences.num_rows, cfg.d_model)
    as_of_rows = (
        None if as_of is None or np.isscalar(as_of) or not hasattr(as_of, "__len__") else np.asarray(as_of)
    )
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        chunk_as_of = as_of_rows[idx] if as_of_rows is not None else as_of
        batch = featurize(sequences.take(pa.array(idx)), cfg, as_of=chunk_as_of).to(device)
        out[torch.from_numpy(idx)] = model(batch).float().cpu()
    return out


@torch.no_grad()
def item_matrix(model: UserEncoder, cfg: ModelConfig, catalogue: Catalogue, device=None) -> torch.Tensor:
    """(I, D) target vectors of every catalogue item (``device`` None: the model's own device)."""
    model.eval()
    device = device or model_device(model)
    idx = hash_items(catalogue.ids, cfg, catalogue.attributes)
    return torch.cat(
        [
            model.item_vectors(idx[lo : lo + 65536].to(device)).float().cpu()
            for lo in range(0, len(idx), 65536)
        ]
    )


def _targets_csr(targets: np.ndarray, catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    pos = catalogue.index(targets)
    counts = (pos >= 0).astype(np.int64)
    return np.r_[0, np.cumsum(counts)], pos[pos >= 0]


def vector_scores(users: torch.Tensor, items: torch.Tensor):
    """score_fn for `ranking_metrics`: dot products of user and item vectors."""
    return lambda lo, hi: users[lo:hi] @ items.T


def leave_last_out_metrics(
    score_fn, inputs: pa.Table, targets: np.ndarray, catalogue: Catalogue, ks=KS
) -> dict:
    """HR/NDCG@K of one scorer on (inputs, targets), history excluded. Same code for every scorer."""
    return ranking_metrics(
        score_fn, _targets_csr(targets, catalogue), history_items(inputs, catalogue), len(catalogue), ks
    )


def model_leave_last_out(
    model, cfg, inputs: pa.Table, targets: np.ndarray, catalogue: Catalogue, device=None, ks=KS
) -> dict:
    users = encode_users(model, cfg, inputs, device=device)
    items = item_matrix(model, cfg, catalogue, device=device)
    return leave_last_out_metrics(vector_scores(users, items), inputs, targets, catalogue, ks)


# -- time split / staleness ---------------------------------------------------------------------
def _positive_flat(sequences: pa.Table, positive_types):
    ts = pc.fill_null(sequences["ts"].combine_chunks().flatten().cast(pa.int64()), 0).to_numpy()
    lengths = pc.list_value_length(sequences["ts"]).to_numpy().astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    idx = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = pc.fill_null(sequences["item_id"].combine_chunks().flatten(), -1).to_numpy()
    pos = is_positive(sequences["event_type"].combine_chunks().flatten(), positive_types)
    return ts, row, idx, items, pos


def staleness_metrics(
    model,
    cfg,
    sequences: pa.Table,
    catalogue: Catalogue,
    T_ms: int,
    positive_types,
    horizon_h: float = 24.0,
    k: int = 10,
    device=None,
) -> dict:
    """Vectors at T vs vectors recomputed just before each target, on positives in (T, T+horizon]."""
    ts, row, idx, items, pos = _positive_flat(sequences, positive_types)
    horizon = int(horizon_h * HOUR_MS)
    before = np.bincount(row[ts <= T_ms], minlength=sequences.num_rows)  # events known at T
    is_target = pos & (ts > T_ms) & (ts <= T_ms + horizon) & (before[row] > 0) & (catalogue.index(items) >= 0)
    users = np.unique(row[is_target])
    if len(users) == 0:
        raise ValueError("staleness: no user has a history before T and a positive in (T, T+horizon]")
    # stale: one vector per user at T, all of the user's window positives relevant
    hist_T = truncate(sequences.take(pa.array(users)), before[users])
    stale_vec = encode_users(model, cfg, hist_T, as_of=T_ms, device=device)
    item_vec = item_matrix(model, cfg, catalogue, device=device)
    t_rows = np.searchsorted(users, row[is_target])
    order = np.argsort(t_rows, kind="stable")
    rel_counts = np.bincount(t_rows, minlength=len(users))
    relevant = (np.r_[0, np.cumsum(rel_counts)], catalogue.index(items[is_target])[order])
    stale = ranking_metrics(
        vector_scores(stale_vec, item_vec), relevant, history_items(hist_T, catalogue), len(catalogue), (k,)
    )
    # fresh: one vector per target event, from every event strictly before it, as_of = the target time
    t_user, t_idx, t_ts = row[is_target], idx[is_target], ts[is_target]
    hist_f = truncate(sequences.take(pa.array(t_user)), t_idx)
    kept = t_idx > 0
    fresh_vec = encode_users(model, cfg, hist_f, as_of=t_ts[kept], device=device)
    rel_f = (np.arange(kept.sum() + 1), catalogue.index(items[is_target][kept]))
    # exclude what the stale vector's user had seen at T, so both score the same candidate set
    excl_T = history_items(hist_T, catalogue)
    rows_f = np.searchsorted(users, t_user[kept])
    ex_lists = [excl_T[1][excl_T[0][r] : excl_T[0][r + 1]] for r in rows_f]
    fresh = ranking_metrics(vector_scores(fresh_vec, item_vec), rel_f, csr(ex_lists), len(catalogue), (k,))
    # per-event averages of the stale vectors, for a like-for-like comparison with fresh
    stale_ev = ranking_metrics(
        vector_scores(stale_vec[torch.from_numpy(rows_f)], item_vec),
        rel_f,
        csr(ex_lists),
        len(catalogue),
        (k,),
    )
    loss = 100.0 * (1.0 - stale_ev[f"hr@{k}"] / fresh[f"hr@{k}"]) if fresh[f"hr@{k}"] > 0 else float("nan")
    return {
        f"stale_recall{k}": stale[f"hr@{k}"],
        f"stale_ndcg{k}": stale[f"ndcg@{k}"],
        f"stale_event_recall{k}": stale_ev[f"hr@{k}"],
        f"fresh_event_recall{k}": fresh[f"hr@{k}"],
        f"fresh_event_ndcg{k}": fresh[f"ndcg@{k}"],
        f"stale_event_ndcg{k}": stale_ev[f"ndcg@{k}"],
        "staleness_loss_pct": loss,
        "staleness_users": len(users),
        "staleness_targets": int(kept.sum()),
        "staleness_T_ms": int(T_ms),
        "staleness_horizon_h": horizon_h,
    }


def busiest_time(sequences: pa.Table, positive_types, horizon_h: float = 24.0, quantile: float = 0.7) -> int:
    """A split time T (hour-aligned, ms) after ``quantile`` of the events with many positives after it."""
    ts, _row, _, _, pos = _positive_flat(sequences, positive_types)
    lo = int(np.quantile(ts, quantile)) // HOUR_MS * HOUR_MS
    hi = int(np.quantile(ts, min(quantile + 0.2, 0.99))) // HOUR_MS * HOUR_MS
    candidates = np.arange(lo, hi + 1, HOUR_MS * 6) if hi > lo else np.array([lo])
    horizon = int(horizon_h * HOUR_MS)
    pts = np.sort(ts[pos])
    counts = np.searchsorted(pts, candidates + horizon, side="right") - np.searchsorted(
        pts, candidates, side="right"
    )
    return int(candidates[int(np.argmax(counts))])


# -- planted structure --------------------------------------------------------------------------
def planted_purity(
    model, cfg, sequences: pa.Table, truth: pa.Table, k: int = 20, min_events: int = 1, device=None
) -> dict:
    """purity@k of user vectors against the planted primary cluster, and the random level."""
    seq = sequences.filter(pc.greater_equal(pc.list_value_length(sequences["item_id"]), min_events))
    t_ids = truth["user_id"].to_numpy()
    order = np.argsort(t_ids)
    pos = np.searchsorted(t_ids, seq["user_id"].to_numpy(), sorter=order)
    labels = truth["primary_cluster"].to_numpy()[order[np.clip(pos, 0, len(order) - 1)]]
    vectors = encode_users(model, cfg, seq, device=device)
    return {
        f"purity{k}": purity(vectors, labels, k),
        f"random_purity{k}": random_purity(labels, k),
        "purity_users": int(seq.num_rows),
    }


def served_hourly(split: Split, every_ms: int = HOUR_MS) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(inputs, targets, as_of) of the test targets as a job that runs every ``every_ms`` serves them: the
    vector of a target at t was computed at as_of = t rounded down to the boundary, from the events before
    as_of (an event at the boundary belongs to the next run). Users with no event before it are left out."""
    if split.test_target_ts is None:
        raise ValueError("served_hourly: the split has no target times (the data has no ts column)")
    as_of = split.test_target_ts // every_ms * every_ms  # (Ut,)
    keep = events_before(split.test, as_of)  # (Ut,)
    served = keep > 0
    return truncate(split.test, keep), split.test_target[served], as_of[served]


def leave_last_out_report(
    model, cfg, split: Split, catalogue: Catalogue, positive_types, device=None, ks=KS
) -> dict:
    """The model and the popularity / bag-of-items baselines on the test split, one metric code.

    Keys: ``hr@K``/``ndcg@K`` (model), ``pop_...`` and ``bag_...`` (baselines), ``test_users``; with real
    time also ``served_hr@K``/``served_ndcg@K`` and ``served_users`` (the model as `served_hourly`
    serves the same targets) and ``pop_served_...`` beside them.
    """
    users = encode_users(model, cfg, split.test, device=device)
    items = item_matrix(model, cfg, catalogue, device=device)
    scorers = {
        "": vector_scores(users, items),
        "pop_": popularity_scores(split.train, catalogue, positive_types),
        "bag_": bag_of_items_scores(split.test, catalogue, items),
    }
    out = {}
    for prefix, score_fn in scorers.items():
        m = leave_last_out_metrics(score_fn, split.test, split.test_target, catalogue, ks)
        out.update({f"{prefix}{k}": v for k, v in m.items() if k != "users"})
        out["test_users"] = m["users"]
    if split.test_target_ts is not None and has_real_time(split.test):
        out.update(_served_report(model, cfg, split, catalogue, items, scorers["pop_"], device, ks))
    return out


def _served_report(model, cfg, split: Split, catalogue: Catalogue, items, popularity, device, ks) -> dict:
    """``served_*`` (the model) and ``pop_served_*`` on the targets as `served_hourly` serves them."""
    inputs, targets, as_of = served_hourly(split)
    if len(targets) == 0:
        return {}
    served = {
        "served_": vector_scores(encode_users(model, cfg, inputs, as_of=as_of, device=device), items),
        "pop_served_": popularity,
    }
    out = {}
    for prefix, score_fn in served.items():
        m = leave_last_out_metrics(score_fn, inputs, targets, catalogue, ks)
        out.update({f"{prefix}{k}": v for k, v in m.items() if k != "users"})
    out["served_users"] = m["users"]
    return out


def evaluate_model(
    layout: Layout,
    train: TrainSettings,
    events: EventSettings,
    version: str,
    sequences: pa.Table,
    *,
    truth: pa.Table | None = None,
    staleness: bool = True,
    save: bool = False,
) -> dict:
    """Every metric family of a published model on ``sequences`` (leave-last-out test split).

    ``train`` gives the device, the positives and ``min_positives``; ``events`` the default positives.
    """
    device = select_device(train.device, strict=train.strict_device, purpose="train").device
    model, cfg, _ = load_model(layout, version, device=device)
    positive_types = train.positive_types(events)
    split = leave_last_out(sequences, positive_types, train.min_positives)
    catalogue = item_catalogue(sequences, cfg.attributes)
    metrics = leave_last_out_report(model, cfg, split, catalogue, positive_types, device=device)
    if staleness and has_real_time(sequences):
        T = busiest_time(sequences, positive_types)
        metrics.update(staleness_metrics(model, cfg, sequences, catalogue, T, positive_types, device=device))
    if truth is not None:
        metrics.update(planted_purity(model, cfg, sequences, truth, device=device))
    if save:
        update_metrics(layout, version, metrics)
    return metrics
