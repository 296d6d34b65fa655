"""Config section of batch inference (composed in soe.config as `inference`)."""

from __future__ import annotations

from soe.section import Section


class InferenceSettings(Section):
    device: str = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:1"
    max_batch_tokens: int = 65536  # upper bound of tokens per inference batch (adapted to free memory)
    compile: bool = False  # torch.compile on CPU where it pays (measured in bench.inference)
