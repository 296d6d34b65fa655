"""Config sections of model training (owned by the encoder, composed in soe.config). No torch here.

Every closed choice is a ``Literal`` and every section forbids unknown keys, so a typo fails when
the configuration is loaded, with the field's path (``train.model.d_modle: Extra inputs are not
permitted``), not as a traceback in the middle of training.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import Field, StringConstraints, create_model, field_validator, model_validator

from core.section import Section
from core.settings import EventSettings
from encoder.config import ModelConfig

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
DeviceName = Annotated[str, StringConstraints(pattern=DEVICE_PATTERN)]  # "auto", "cpu", "cuda", "cuda:<i>"
GpuDtype = Literal["auto", "bf16", "fp16", "fp32"]  # GPU autocast dtype; "auto": bf16 if supported, else fp16
Objective = Literal["next_positive", "future_window"]  # see encoder.objectives
OBJECTIVES: tuple[str, ...] = get_args(Objective)
Loss = Literal["auto", "full_softmax", "sampled_softmax"]  # see encoder.objectives; "auto": by catalogue size
# The hashed tables' learning rate over the dense layers' by the loss trained (lazy Adam moves a row only on
# the steps that touch its id). Sampled: a row is touched when its item is in the step, so rare items lag
# (Sports: 16 > 8, 32 > 4, docs/encoder.md rows 34-36). Full softmax: the output side touches every row
# every step, so the lag is smaller and 4 (the earlier default) stays (ML-100K, 3 seeds: 4 gives 0.0900 ±
# 0.0053, 16 gives 0.0865 ± 0.0019: no gain from 16 there).
TABLE_LR_SCALE: dict[str, float] = {"sampled_softmax": 16.0, "full_softmax": 4.0}
# Label smoothing by the loss trained: it pays where the smoothed mass spreads over every item (full softmax:
# ML-100K +2.5 % NDCG@10 with timestamps over 6 seeds, +2.5 % as a SASRec file over 3) and not over the
# sampled candidates (Sports: -1.0 % over 2 seeds, +0.7 % in the 3-seed bench; synthetic -0.2 % over 3;
# docs/encoder.md, fourteenth pass)
LABEL_SMOOTHING: dict[str, float] = {"sampled_softmax": 0.0, "full_softmax": 0.1}


def _model_overrides() -> type[Section]:
    """A section with every `ModelConfig` field, each optional (None = keep the default), same types."""
    hints = get_type_hints(ModelConfig)
    spec: dict[str, Any] = {f.name: (hints[f.name] | None, None) for f in fields(ModelConfig)}
    model = create_model("ModelOverrides", __base__=Section, __module__=__name__, **spec)
    model.__doc__ = "Overrides of encoder.config.ModelConfig fields (None: default); unknown keys are errors."
    return model


ModelOverrides = _model_overrides()


class TrainSettings(Section):
    seed: int = 0  # every random choice in training derives from this
    epochs: int = 30  # upper bound and the cosine schedule's length (Sports: 30 > 12 epochs; 60 no better)
    batch_size: int = 128  # users per step
    length_group_batches: int | None = Field(None, ge=1)  # batches per length-sorted group; 1: uniformly
    # random batches. None: by the data (settings_for_data): 1 without a clock (beside equal_target_weight,
    # 3 seeds: Sports +0.8 %, ML-100K +1.2 %, both within the spread; the plain-SASRec configuration
    # +13 %), 16 on event logs (ML-100K with timestamps: 1 gives -3.4 % over 6 seeds)
    forward_length_buckets: int = Field(4, ge=1)  # a step's rows run through the model in this many groups
    # of similar length, each trimmed to its longest row (random batches at sorted batches' padding cost)
    equal_target_weight: bool | None = None  # True: a step's loss scales with its next-item targets, so
    # each target weighs the same whatever batch it lands in (an epoch-wide per-target mean); False: per
    # batch. None: by the data (settings_for_data): on without a clock (SASRec files: Sports +4.0 %, ML-100K
    # +1.8 %, 3 seeds), off on event logs (ML-100K with timestamps: -3.6 % over 6 seeds; docs/encoder.md)
    lr: float = 1e-3  # AdamW peak learning rate
    table_lr_scale: float | None = None  # hashed tables' lr = lr x this; None: by the loss (TABLE_LR_SCALE)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (Linear weights only: UserEncoder.param_groups)
    warmup_frac: float = 0.05  # share of all steps spent in linear warmup, then cosine decay to 0
    temperature: float = 0.1  # softmax temperature on cosine scores (Sports sweep: 0.1 best of 0.02-0.5)
    label_smoothing: float | None = Field(None, ge=0.0, lt=1.0)  # share of each target's mass spread evenly
    # over its candidates (every item, or the sampled ones); None: by the loss (LABEL_SMOOTHING)
    objectives: dict[Objective, float] = Field(  # objective -> loss weight
        default_factory=lambda: {"next_positive": 1.0, "future_window": 1.0}
    )
    window_hours: float | None = 24.0 * 7  # future_window: targets are positives this many hours after a
    # position; None on data without a clock (settings_for_data): the next `window_events` events instead
    window_events: int = Field(2, ge=1)  # future_window without a clock: one of the next this many events
    untimed_window_weight: float = Field(0.3, ge=0.0)  # its weight there (0: next item only)
    targets_per_batch: int = 4096  # positions sampled per objective and step (bounds the (N, M) logits)
    loss: Loss = "auto"  # "full_softmax" (CE over every item), "sampled_softmax" (in-batch + logQ), "auto"
    full_softmax_max_items: int = 4096  # auto: full softmax up to this many items (~4x negatives)
    negatives: int = 1024  # sampled softmax: items drawn uniformly per step beside the in-batch ones
    logq: bool = True  # sampled softmax: subtract log(sampling probability) of in-batch negatives
    in_batch_negatives: bool = True  # sampled softmax: other rows' targets are negatives (False: draws only)
    positive_event_types: list[str] | None = None  # None: events.positive_event_types
    min_positives: int = 3  # leave-last-out: users with fewer positives only train
    patience: int = 10  # early stopping: epochs without validation NDCG@10 improvement (it is noisy)
    eval_users: int = 2000  # validation users scored per epoch (a fixed sample)
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    device: DeviceName = "auto"  # "auto" (cuda when present), "cpu", "cuda", "cuda:1"
    strict_device: bool = False  # True: a requested GPU that is absent is an error, not a CPU fallback
    time_budget_s: float = 0.0  # stop after this many seconds of training; the schedule fits it (0: none)
    prefetch: bool | None = None  # featurise the next batch in a worker thread (None: on a GPU only)
    resume: bool = True  # resume from the run's checkpoint after a crash
    mlflow_tracking_uri: str | None = None  # MLflow URI for params/metrics/history (if mlflow is installed)
    model: ModelOverrides = Field(default_factory=ModelOverrides)  # type: ignore[valid-type]  # e.g. {"d_model": 128}

    @field_validator("objectives")
    @classmethod
    def _some_objective(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError(f"name at least one objective of {OBJECTIVES}")
        return v

    @model_validator(mode="after")
    def _some_negatives(self) -> TrainSettings:
        if not self.in_batch_negatives and self.negatives < 1:
            raise ValueError("in_batch_negatives=false needs negatives >= 1 (the only negatives then)")
        return self

    def label_smoothing_for(self, loss: str) -> float:
        """The label smoothing of ``loss`` (a chosen one, not "auto")."""
        return self.label_smoothing if self.label_smoothing is not None else LABEL_SMOOTHING[loss]

    def table_lr_scale_for(self, loss: str) -> float:
        """The hashed tables' lr over ``lr`` when training with ``loss`` (a chosen one, not "auto")."""
        return self.table_lr_scale if self.table_lr_scale is not None else TABLE_LR_SCALE[loss]

    def prefetch_for(self, device_type: str) -> bool:
        """Whether batches are featurised one step ahead: ``prefetch``, else only on a GPU (on a small
        CPU the worker thread would take the cores the step itself uses)."""
        return self.prefetch if self.prefetch is not None else device_type == "cuda"

    def model_overrides(self) -> dict[str, Any]:
        """The `ModelConfig` fields set in ``train.model`` (unset ones keep their defaults)."""
        return self.model.model_dump(exclude_none=True)

    def positive_types(self, events: EventSettings) -> list[str]:
        """The event types that count as positives: ``positive_event_types``, else the events section's."""
        return list(self.positive_event_types or events.positive_event_types)
