"""Config sections of model training (owned by the encoder, composed in soe.config)."""

from __future__ import annotations

from typing import Any

from core.section import Section


class TrainSettings(Section):
    seed: int = 0  # every random choice in training derives from this
    epochs: int = 20  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # users per step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on embeddings / norms)
    warmup_frac: float = 0.05  # share of all steps spent in linear warmup, then cosine decay to 0
    temperature: float = 0.05  # softmax temperature on cosine scores
    objectives: dict[str, float] = {"next_positive": 1.0, "future_window": 1.0}  # objective -> loss weight
    window_hours: float = 24.0 * 7  # future_window: targets are positives within this many hours after a position
    targets_per_batch: int = 4096  # positions sampled per objective and step (bounds the (N, M) logits)
    logq: bool = True  # subtract log(sampling probability) of in-batch negatives (popularity correction)
    positive_event_types: list[str] | None = None  # None: settings.events.positive_event_types
    min_positives: int = 3  # leave-last-out: users with fewer positives only train
    patience: int = 3  # early stopping: epochs without validation NDCG@10 improvement
    eval_users: int = 2000  # validation users scored per epoch (a fixed sample)
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1"
    time_budget_s: float = 0.0  # stop after this many seconds of training (0: no limit)
    resume: bool = True  # resume from the run's checkpoint after a crash
    model: dict[str, Any] = {}  # overrides of encoder.model.ModelConfig fields, e.g. {"d_model": 128}
