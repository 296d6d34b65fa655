"""Config sections of model training (owned by the encoder, composed in soe.config)."""

from __future__ import annotations

from soe.section import Section


class TrainSettings(Section):
    seed: int = 0  # every random choice in training derives from this
    epochs: int = 20  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # users per step
    lr: float = 1e-3  # AdamW peak learning rate
