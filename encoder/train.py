"""Training: `fit` (the loop) and `train_model` (data -> split -> fit -> evaluate -> artifact).

The loop, per step: featurise a batch of users, encode every position causally, pick each
position's target(s) (`encoder.objectives`: next positive and/or a random positive of the future
window), sample at most ``targets_per_batch`` positions per objective, and minimise the in-batch
sampled softmax with logQ correction. AdamW with weight decay on Linear weights only (groups chosen
by module type: `UserEncoder.param_groups`), linear warmup then cosine decay. The device comes from
`encoder.device.select_device` (``train.device``, ``train.strict_device``); bf16 autocast on CUDA,
fp32 on CPU.

Determinism and crash-resume: the epoch permutation and every step's randomness (dropout, target
sampling) derive from (seed, epoch, step), not from a running RNG. A checkpoint (model, optimiser,
scheduler, early-stopping state) is written atomically after each epoch; a rerun of the same run
resumes from it and ends with the same weights as an uninterrupted run. The checkpoint holds only
tensors and plain values and is read with ``weights_only=True``: a pickle planted in its place is
refused (`CheckpointError`), never executed. Early stopping watches validation NDCG@10
(leave-last-out) and keeps the best weights.

Progress: one INFO line per epoch on the ``soe.train`` logger (epoch, loss, validation NDCG@10,
seconds, ETA), whether or not a terminal shows the bar. ``train.time_budget_s`` is checked between
batches, so a run ends within its budget plus one batch (and that epoch's validation). Under a budget
the cosine schedule is re-planned after every epoch to span as many epochs as fit at the pace so far
(`encoder.optim.budget_epochs`): a machine too slow for ``train.epochs`` still ends its budget with the
rate decayed, not cut at a high rate; one fast enough runs the configured schedule unchanged. The per-epoch
history (loss, validation metrics, lr, seconds) goes into the artifact's metrics (``history``), with
the lineage (git commit, data source and window, config hash) in its config and model card; when
``mlflow`` is importable and ``train.mlflow_tracking_uri`` is set, params, metrics and the history are
logged there too.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import pickle
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from core.layout import HOUR_MS, Layout
from core.progress import progress
from core.settings import EventSettings
from encoder.artifact import save_model
from encoder.config import ModelConfig
from encoder.data import (
    Catalogue,
    Split,
    as_sequences,
    chunk_rows,
    has_real_time,
    is_positive,
    item_catalogue,
    leave_last_out,
    positive_counts,
)
from encoder.device import autocast, autocast_dtype, select_device
from encoder.evaluate import leave_last_out_report, model_leave_last_out
from encoder.features import SequenceBatch, featurize, hash_items, hour_of_day, time_buckets, weekday_of
from encoder.inference.loader import prefetch
from encoder.model import UserEncoder
from encoder.objectives import (
    LogQ,
    Negatives,
    choose_loss,
    full_softmax,
    future_window_targets,
    next_positive_targets,
    sampled_softmax,
)
from encoder.optim import budget_epochs, lr_factor
from encoder.settings import TrainSettings

CHECKPOINT_FORMAT = 2  # 2: EncoderOptimizer state, no scheduler (part of the checkpoint key)
# length_group_batches by the data (settings_for_data): sorted groups keep padding low and pay on event
# logs; SASRec files train better on uniformly random batches (docs/encoder.md, tenth pass)
TIMED_GROUP_BATCHES = 16
UNTIMED_GROUP_BATCHES = 1
# train settings that do not change the result
RUNTIME_ONLY = ("threads", "device", "strict_device", "resume", "mlflow_tracking_uri", "prefetch")

log = logging.getLogger("soe.train")


class CheckpointError(RuntimeError):
    """A training checkpoint that is not plain tensors and values (refused unread: it could run code)."""


def result_settings(ts: TrainSettings) -> dict:
    """The train settings that determine the trained weights (version id, checkpoint key)."""
    out = ts.model_dump(exclude=set(RUNTIME_ONLY) | {"model"})
    out["model"] = ts.model_overrides()  # only the fields set: ids stay those of the untyped overrides
    return out


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


@dataclass
class FitResult:
    model: UserEncoder
    best_valid_ndcg10: float
    epochs_run: int
    steps: int
    train_s: float
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = -1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where it was trained


@dataclass
class LossInputs:
    """What the loss of every step needs besides the batch (built once per `fit`)."""

    kind: str  # "full_softmax" or "sampled_softmax" (`encoder.objectives.choose_loss`)
    positive_idx: torch.Tensor  # (P,) action indexes that count as positives
    logq: LogQ | None  # sampled softmax: popularity correction
    catalogue: Catalogue  # full softmax: the items scored
    catalogue_idx: torch.Tensor | None  # full softmax: (I, A, H) catalogue buckets, on the device
    label_smoothing: float  # of the loss trained (`TrainSettings.label_smoothing_for`)


def loss_inputs(cfg: ModelConfig, ts: TrainSettings, train, catalogue: Catalogue, positive_types, device):
    kind = choose_loss(ts.loss, len(catalogue), ts.full_softmax_max_items)
    positive_idx = torch.tensor(
        [cfg.actions.index(p) + 1 for p in positive_types if p in cfg.actions], device=device
    )
    logq = LogQ(*positive_counts(train, positive_types)) if ts.logq and kind == "sampled_softmax" else None
    idx = hash_items(catalogue.ids, cfg, catalogue.attributes).to(device) if kind == "full_softmax" else None
    return LossInputs(kind, positive_idx, logq, catalogue, idx, ts.label_smoothing_for(kind))


def draw_negatives(model, inputs: LossInputs, k: int, rng: np.random.Generator, device) -> Negatives | None:
    """``k`` catalogue items drawn uniformly (with replacement) for one step, or None when ``k`` is 0.

    Only the drawn ids are hashed, per step: a 10^8-item catalogue is never hashed as a whole."""
    cat = inputs.catalogue
    if not k or not len(cat):
        return None
    drawn = rng.integers(0, len(cat), k)  # (K,) catalogue rows
    raw = cat.ids[drawn]  # (K,) raw ids
    idx = hash_items(raw, model.cfg, {name: v[drawn] for name, v in cat.attributes.items()}).to(device)
    ids = torch.from_numpy(raw).to(device)
    log_q = inputs.logq(ids) if inputs.logq is not None else torch.zeros(k, device=device)
    return Negatives(model.item_vectors(idx).float(), ids, log_q, len(cat))  # vectors (K, D)


def last_query_slot(target: torch.Tensor) -> torch.Tensor:
    """(B, T) target index per position (-1: none) -> (B,) the last slot with a target (T-1 if none).

    It is the query a training row shares with inference (whose query is the newest event): the
    model places it at position 0 "from the newest" (`UserEncoder.encode_positions`)."""
    T = target.shape[1]
    slots = torch.arange(T, device=target.device).expand_as(target)  # (B, T)
    last = torch.where(target >= 0, slots, -1).amax(dim=1)  # (B,)
    return torch.where(last >= 0, last, T - 1)


def query_counts(train: pa.Table, positive_types) -> np.ndarray:
    """(rows,) next-positive training queries of each row: the positions before its last positive event."""
    types = train["event_type"].combine_chunks()  # list<string>
    offsets = types.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]  # (rows + 1,) into the flattened events (a sliced array starts above 0)
    at = np.flatnonzero(is_positive(types.flatten(), positive_types))  # flat positions of positive events
    row = np.searchsorted(offsets, at, side="right") - 1  # (P,) their rows
    last = np.zeros(len(types), dtype=np.int64)
    np.maximum.at(last, row, at - offsets[row])  # index of each row's last positive (0: none or first)
    return last


def encode_in_length_buckets(
    model, batch: SequenceBatch, hour, weekday, idle, newest: torch.Tensor, buckets: int
) -> torch.Tensor:
    """(B, T, D) ``model.encode_positions`` of every row, run as ``buckets`` groups of rows sorted by
    length, each trimmed to its own longest row: a random batch, whose longest row would pad every
    other, costs about what a length-sorted one does. Each output equals the one-pass output (left
    padding, masked attention, positions counted from ``newest``); padded positions are zeros, never read.
    """
    if buckets <= 1 or len(batch) < 2:
        return model.encode_positions(batch, hour, weekday, newest=newest, idle=idle)
    B, T = batch.action.shape
    out = None
    for rows in torch.tensor_split(torch.argsort(batch.lengths), min(buckets, B)):
        part = batch.select(rows)  # (b, t) trimmed to its longest row
        t = part.action.shape[1]
        vec = model.encode_positions(
            part,
            hour[rows, T - t :],
            weekday[rows, T - t :],
            newest=newest[rows] - (T - t),
            idle=idle[rows, T - t :],
        )  # (b, t, D)
        if out is None:
            out = vec.new_zeros(B, T, vec.shape[-1])
        out[rows, T - t :] = vec
    return out


def idle_before_next(batch: SequenceBatch, gen: torch.Generator, n_buckets: int) -> torch.Tensor:
    """(B, T) idle-time bucket of each training query: a uniformly random moment between its event and
    the next one, as a vector computed on a schedule is, for a user who comes back. So a query learns
    what follows *an idle time of at least that long*, which is what a vector made ``as_of - newest``
    after the newest event knows at inference. The newest slot has no next event: its own as_of."""
    gap = (batch.ts[:, 1:] - batch.ts[:, :-1]).clamp(min=0)  # (B, T-1) ms to the next event
    u = torch.rand(gap.shape, generator=gen).to(gap.device)  # (B, T-1)
    idle = time_buckets((u * gap).long(), n_buckets)  # (B, T-1)
    return torch.cat([idle, batch.idle_bucket[:, None]], dim=1)  # (B, T)


def _batch_loss(
    model, batch, ts: TrainSettings, inputs: LossInputs, rng, gen, device, targets_per_step: float = 0.0
) -> torch.Tensor:
    """The step's weighted loss over every objective; with ``targets_per_step`` (the epoch's mean next-item
    targets per step) scaled by this step's targets over it, so that each target weighs the same."""
    positive = torch.isin(batch.action, inputs.positive_idx) & batch.valid  # (B, T)
    hour, weekday = hour_of_day(batch.ts), weekday_of(batch.ts)  # (B, T) each position's query time
    if model.cfg.uses_idle:  # (B, T) drawn only where used: the other draws stay as they were
        idle = idle_before_next(batch, gen, model.cfg.n_time_buckets)
    else:
        idle = batch.idle_bucket[:, None].expand_as(batch.action)
    next_target = next_positive_targets(positive)  # (B, T) every objective's queries are a subset
    newest = last_query_slot(next_target)  # (B,)
    user = encode_in_length_buckets(
        model, batch, hour, weekday, idle, newest, ts.forward_length_buckets
    )  # (B, T, D)
    T = user.shape[1]
    picked = []  # (weight, b, t, raw target item) per objective
    for name, weight in ts.objectives.items():
        if not weight:
            continue
        if name == "next_positive":
            target = next_target
        else:
            window_ms = None if ts.window_hours is None else int(ts.window_hours * HOUR_MS)
            target = future_window_targets(positive, batch.ts, window_ms, gen, ts.window_events)
        b, t = torch.nonzero((target >= 0) & batch.valid, as_tuple=True)
        if len(b) == 0:
            continue
        if len(b) > ts.targets_per_batch:
            keep = torch.from_numpy(rng.choice(len(b), ts.targets_per_batch, replace=False)).to(b.device)
            b, t = b[keep], t[keep]
        picked.append((weight, b, t, target[b, t]))
    loss = torch.zeros((), device=device)
    if not picked:
        return loss
    scale = 1.0  # equal target weight: this step's next-item targets over the epoch's mean per step
    if targets_per_step:  # a tensor: no host sync per step on a GPU
        scale = ((next_target >= 0) & batch.valid).sum() / targets_per_step
    if inputs.kind == "full_softmax":  # one (positions x catalogue) pass shared by every objective
        every_item = model.item_vectors(inputs.catalogue_idx).float()  # (I, D)
        flat = torch.cat([b * T + t for _, b, t, _ in picked])  # (ΣN,) positions of all objectives
        positions, where = torch.unique(flat, return_inverse=True)  # (U,), (ΣN,)
        sets, weights, lo = [], [], 0
        for weight, b, _, j in picked:
            items = batch.item_id[b, j]  # (N,) raw ids
            rows = torch.from_numpy(inputs.catalogue.index(items.cpu().numpy())).to(device)  # (N,)
            ok = rows >= 0
            if ok.any():
                sets.append((where[lo : lo + len(b)][ok], rows[ok]))
                weights.append(weight)
            lo += len(b)
        user_rows = user.reshape(-1, user.shape[-1])[positions].float()  # (U, D)
        for weight, ce in zip(
            weights,
            full_softmax(user_rows, every_item, sets, ts.temperature, inputs.label_smoothing),
            strict=True,
        ):
            loss = loss + weight * ce
        return loss * scale
    negatives = draw_negatives(model, inputs, ts.negatives, rng, device)  # shared by every objective
    for weight, b, t, j in picked:
        items = batch.item_id[b, j]  # (N,) raw ids
        vec = model.item_vectors(batch.attrs[b, j])  # (N, D)
        log_q = inputs.logq(items) if inputs.logq is not None else None
        loss = loss + weight * sampled_softmax(
            user[b, t].float(),
            vec.float(),
            items,
            log_q,
            ts.temperature,
            negatives,
            ts.in_batch_negatives,
            inputs.label_smoothing,
        )
    return loss * scale


def length_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_batches: int
) -> list[np.ndarray]:
    """Shuffled batches of similar lengths (little padding): shuffled groups of ``group_batches`` batches,
    each sorted by length and cut into batches. ``group_batches=1``: uniformly random batches."""
    order = rng.permutation(len(lengths))
    group = batch_size * group_batches
    batches = []
    for lo in range(0, len(order), group):
        g = order[lo : lo + group]
        g = g[np.argsort(lengths[g], kind="stable")]
        batches += [np.sort(g[i : i + batch_size]) for i in range(0, len(g), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write a checkpoint of tensors and plain values only (loadable with weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by `_save_checkpoint`. Only tensors and plain values are unpickled
    (``weights_only=True``): a planted pickle under cache/train/ is refused, never executed."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds more than tensors and plain values; refusing to unpickle it "
            "(it could run code). Delete it to train from scratch."
        ) from exc


def fit(
    cfg: ModelConfig,
    ts: TrainSettings,
    split: Split,
    catalogue: Catalogue,
    positive_types,
    checkpoint: Path | None = None,
    show_progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train a UserEncoder on ``split.train`` with early stopping on ``split.valid``."""
    if ts.threads:
        torch.set_num_threads(ts.threads)
    device = select_device(ts.device, strict=ts.strict_device, purpose="train").device
    torch.manual_seed(_seed(ts.seed, 0))
    model = UserEncoder(cfg).to(device)
    train = chunk_rows(split.train, cfg.max_len)  # long histories become several training rows
    lengths = pc.list_value_length(train["item_id"]).to_numpy()
    steps_per_epoch = max(math.ceil(train.num_rows / ts.batch_size), 1)
    warmup = int(ts.warmup_frac * steps_per_epoch * ts.epochs)  # fixed: a budget re-plans only the decay
    inputs = loss_inputs(cfg, ts, train, catalogue, positive_types, device)
    group_batches = ts.length_group_batches or TIMED_GROUP_BATCHES  # None (not resolved by the data): 16
    targets_per_step = (  # equal_target_weight None (not resolved by settings_for_data): off
        query_counts(train, positive_types).sum() / steps_per_epoch if ts.equal_target_weight else 0.0
    )
    opt = model.configure_optimizer(
        ts.lr, ts.weight_decay, table_lr_scale=ts.table_lr_scale_for(inputs.kind)
    )  # encoder.optim
    vsel = np.random.default_rng(_seed(ts.seed, 1)).permutation(split.valid.num_rows)[: ts.eval_users]
    valid_in, valid_tg = split.valid.take(pa.array(np.sort(vsel))), split.valid_target[np.sort(vsel)]
    amp_dtype = autocast_dtype(device, "bf16")  # bf16 on a GPU, plain fp32 on the CPU
    pinned = device.type == "cuda"
    ahead = ts.prefetch_for(device.type)  # featurise the next batch while the device runs this one

    def host_batch(idx: np.ndarray) -> SequenceBatch:
        """The featurised rows ``idx``, in page-locked memory for a GPU (its copy then runs async)."""
        batch = featurize(train.take(pa.array(idx)), cfg)
        return batch.pin_memory() if pinned else batch

    state = {
        "epoch": -1,
        "best": -1.0,
        "best_state": None,
        "bad": 0,
        "history": [],
        "elapsed": 0.0,
        "step": 0,
        "planned_epochs": ts.epochs,  # the schedule's length (shorter when the time budget needs it)
    }
    resumed = -1
    if checkpoint is not None and ts.resume and checkpoint.is_file():
        saved = load_checkpoint(checkpoint, device)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = {"planned_epochs": ts.epochs, **saved["state"]}  # checkpoints before the budget plan
        resumed = state["epoch"]
    t0 = time.perf_counter() - state["elapsed"]
    budget = ts.time_budget_s or 0.0
    stopped = False
    bar = None
    if show_progress:
        bar = progress(steps_per_epoch * state["planned_epochs"], "train", "step")
        bar.update(state["step"])
    for epoch in range(state["epoch"] + 1, ts.epochs):
        if state["bad"] >= ts.patience or epoch >= state["planned_epochs"]:
            break
        total = steps_per_epoch * state["planned_epochs"]  # the cosine ends with the planned epochs
        model.train()
        rng = np.random.default_rng(_seed(ts.seed, 2, epoch))
        batches = length_batches(lengths, ts.batch_size, rng, group_batches)
        losses, seen = [], 0
        t_epoch = time.perf_counter()
        featurised = map(host_batch, batches)  # lazily, in order
        host_batches = prefetch(featurised, depth=2, name="soe-train-loader") if ahead else featurised
        for step, idx in enumerate(batches):
            if budget and time.perf_counter() - t0 > budget:  # between batches: at most one batch over
                stopped = True
                break
            torch.manual_seed(_seed(ts.seed, 3, epoch, step))  # dropout
            rng = np.random.default_rng(_seed(ts.seed, 4, epoch, step))  # target subsampling
            gen = torch.Generator().manual_seed(_seed(ts.seed, 5, epoch, step))  # future-window draws
            batch = next(host_batches).to(device, non_blocking=pinned)  # pinned: an asynchronous copy
            opt.set_lr(lr_factor(state["step"], total, warmup))
            with autocast(device, amp_dtype):
                loss = _batch_loss(model, batch, ts, inputs, rng, gen, device, targets_per_step)
            opt.zero_grad()
            if loss.requires_grad:
                loss.backward()
                opt.clip_grad_norm(1.0)
                opt.step()
            state["step"] += 1
            losses.append(loss.detach())  # on the device: no host sync per step
            seen += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{float(losses[-1]):.3f}", rows_s=f"{seen / (time.perf_counter() - t_epoch):.0f}"
                )
        if ahead:  # a budget stop leaves batches in flight: stop the loader thread
            host_batches.close()
        metrics = model_leave_last_out(model, cfg, valid_in, valid_tg, catalogue, device=device, ks=(10,))
        ndcg = metrics["ndcg@10"]
        record = {
            "epoch": epoch,
            "loss": float(torch.stack(losses).float().mean()) if losses else float("nan"),
            "valid_ndcg10": ndcg,
            "valid_hr10": metrics["hr@10"],
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t_epoch,  # this epoch, validation included
            "s": time.perf_counter() - t0,  # since the start of training
        }
        if stopped:
            record["stopped"] = "time_budget"
        state["history"].append(record)
        if ndcg > state["best"]:
            state["best"], state["bad"] = ndcg, 0
            state["best_state"] = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        else:
            state["bad"] += 1
        state["epoch"], state["elapsed"] = epoch, time.perf_counter() - t0
        state["planned_epochs"] = budget_epochs(ts.epochs, budget, state["elapsed"], epoch + 1)
        record["planned_epochs"] = state["planned_epochs"]
        if bar is not None:
            bar.total = steps_per_epoch * state["planned_epochs"]  # tqdm reads its total on each update
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "state": state,
                },
            )
        _log_epoch(record, ts, state, budget)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if stopped or (budget and state["elapsed"] > budget):
            break
    if bar is not None:
        bar.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return FitResult(
        model.eval(),
        state["best"],
        state["epoch"] + 1,
        state["step"],
        state["elapsed"],
        state["history"],
        resumed,
        device,
    )


def _log_epoch(record: dict, ts: TrainSettings, state: dict, budget: float) -> None:
    """One INFO line per epoch (the progress of a run that no terminal watches)."""
    history = state["history"]
    mean_s = sum(h.get("seconds", 0.0) for h in history) / len(history)  # older checkpoints: no seconds
    planned = state["planned_epochs"]
    left = max(planned - record["epoch"] - 1, 0) * mean_s
    if budget:
        left = min(left, max(budget - record["s"], 0.0))
    if record.get("stopped") or state["bad"] >= ts.patience:
        left = 0.0
    log.info(
        "epoch %d/%d: loss %.4f, valid NDCG@10 %.4f (best %.4f), %.1f s, ETA %.1f s%s",
        record["epoch"] + 1,
        planned,
        record["loss"],
        record["valid_ndcg10"],
        state["best"],
        record["seconds"],
        left,
        f" (time budget {budget:g} s reached: stopping)" if record.get("stopped") else "",
    )


# -- lineage and optional experiment tracking -----------------------------------------------------
def git_commit(where: Path | None = None) -> dict:
    """``{"git_commit": sha, "git_dirty": bool}`` of the code's checkout (empty when not a git checkout)."""
    cwd = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": sha, "git_dirty": dirty} if sha else {}


def _finite(values: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def log_to_mlflow(uri: str | None, version: str, params: dict, metrics: dict, history: list[dict]) -> bool:
    """Log a run to MLflow at ``uri`` when ``mlflow`` is importable (an optional extra, never required).

    Returns whether it logged; an MLflow failure is a warning, never a failed training."""
    if not uri or importlib.util.find_spec("mlflow") is None:
        return False
    mlflow = importlib.import_module("mlflow")
    try:
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_name=version):
            flat = {k: v for k, v in params.items() if v is not None}
            mlflow.log_params(
                {k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for k, v in flat.items()}
            )
            mlflow.log_metrics(_finite({k.replace("@", "_at_"): v for k, v in metrics.items()}))
            for h in history:
                step = int(h["epoch"])
                mlflow.log_metrics(_finite({k: v for k, v in h.items() if k != "epoch"}), step=step)
    except Exception as exc:  # tracking is best effort
        log.warning("MLflow logging to %s failed: %s", uri, exc)
        return False
    return True


# -- from data to an artifact -------------------------------------------------------------------
def model_config(
    train: TrainSettings,
    events: EventSettings,
    sequences: pa.Table,
    *,
    max_len: int,
    overrides: dict | None = None,
) -> ModelConfig:
    """ModelConfig from ``train.model`` + ``overrides``; the action vocabulary from ``events``.

    ``max_len`` is the sequences' N (the pipeline's ``sequences.max_len``), unless ``train.model``
    or ``overrides`` set it. SASRec text files carry no time, event types or attributes (schema
    metadata ``soe.features=item_only``): every feature but the item id is switched off for them.
    """
    fields = {"actions": tuple(events.event_types), "max_len": max_len}
    fields.update(train.model_overrides())
    fields.update(overrides or {})
    if not has_real_time(sequences):
        fields.update(use_action=False, use_time=False, use_context=False, use_attributes=False)
    return ModelConfig(**fields)


def settings_for_data(train: TrainSettings, sequences: pa.Table) -> TrainSettings:
    """``train`` adapted to what the data carries. Without real time (SASRec files) a window in hours
    means nothing, so the future-window objective counts its window in events (one of the next
    ``window_events`` items) at weight ``untimed_window_weight`` (0: next_positive only).
    ``equal_target_weight: None`` becomes True without a clock and False with one, and
    ``length_group_batches: None`` random batches (1) without a clock and sorted groups (16) with one,
    where each was measured to pay (docs/encoder.md, ninth and tenth passes).
    """
    timed = has_real_time(sequences)
    update: dict = {}
    if train.equal_target_weight is None:
        update["equal_target_weight"] = not timed
    if train.length_group_batches is None:
        update["length_group_batches"] = TIMED_GROUP_BATCHES if timed else UNTIMED_GROUP_BATCHES
    if not timed and "future_window" in train.objectives:
        objectives = {k: v for k, v in train.objectives.items() if k != "future_window"}
        if not objectives:
            raise ValueError(
                "the data has no timestamps (a SASRec file): train.objectives needs next_positive"
            )
        if train.untimed_window_weight:
            objectives["future_window"] = train.untimed_window_weight
        log.info(
            "no timestamps in the data: future_window counts the next %d events at weight %g",
            train.window_events,
            train.untimed_window_weight,
        )
        update.update(objectives=objectives, window_hours=None)
    return train.model_copy(update=update) if update else train


def train_window(sequences: pa.Table) -> dict:
    flat = sequences["ts"].combine_chunks().flatten()
    lo, hi = pc.min(flat).as_py(), pc.max(flat).as_py()
    return {
        "start": str(lo),
        "end": str(hi),
        "users": sequences.num_rows,
        "events": int(pc.sum(pc.list_value_length(sequences["item_id"])).as_py() or 0),
    }


def checkpoint_path(layout: Layout, cfg: ModelConfig, ts: TrainSettings, window: dict) -> Path:
    key = hashlib.sha256(
        json.dumps(
            [CHECKPOINT_FORMAT, cfg.to_dict(), result_settings(ts), window], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:16]
    return Path(layout.cache) / "train" / key / "checkpoint.pt"


def train_model(
    layout: Layout,
    train: TrainSettings,
    events: EventSettings,
    source,
    *,
    max_len: int,
    overrides: dict | None = None,
    show_progress: bool = True,
    card: str | None = None,
    source_name: str | None = None,
) -> str:
    """Events / sequences / trainset path -> trained, evaluated model version published under ``layout``.

    ``max_len``: the sequences' N (see `model_config`). ``source_name`` names the data in the lineage
    (default: the path, when ``source`` is one).
    """
    sequences = as_sequences(source)
    train = settings_for_data(train, sequences)
    positive_types = train.positive_types(events)
    cfg = model_config(train, events, sequences, max_len=max_len, overrides=overrides)
    split = leave_last_out(sequences, positive_types, train.min_positives)
    if split.valid.num_rows == 0:
        raise ValueError(
            f"no user has {train.min_positives}+ positive events ({positive_types}): nothing to validate on"
        )
    catalogue = item_catalogue(sequences, cfg.attributes)
    window = train_window(split.train)
    ckpt = checkpoint_path(layout, cfg, train, window)
    result = fit(cfg, train, split, catalogue, positive_types, ckpt, show_progress)
    metrics = leave_last_out_report(result.model, cfg, split, catalogue, positive_types, device=result.device)
    metrics.update(
        train_s=result.train_s,
        epochs=result.epochs_run,
        best_valid_ndcg10=result.best_valid_ndcg10,
        history=result.history,
    )
    if source_name is None and isinstance(source, (str, Path)):
        source_name = str(source)
    lineage = {**git_commit(), "source": source_name, "device": str(result.device)}
    version = save_model(
        layout,
        result.model,
        cfg,
        train_window=window,
        metrics=metrics,
        card=card,
        train_settings=result_settings(train),
        lineage=lineage,
    )
    ckpt.unlink(missing_ok=True)
    params = {**result_settings(train), "model": cfg.to_dict(), "train_window": window, **lineage}
    log_to_mlflow(
        train.mlflow_tracking_uri,
        version,
        params,
        {k: v for k, v in metrics.items() if k != "history"},
        result.history,
    )
    return version
