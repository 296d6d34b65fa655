"""The config sections the shared base owns: where the data lives and what an event may be.

Every section derives from `core.section.Section` (unknown keys are errors). The composed settings
(`soe.config.Settings`) hold these beside the components' own sections.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from core.layout import Layout
from core.section import Section


class DataSettings(Section):
    root: Path = Path("data")  # every local path lives under this one root (see core.layout)

    def layout(self) -> Layout:
        """The on-disk layout of this data root."""
        return Layout(self.root)


class EventSettings(Section):
    event_types: list[str] = ["impression", "click", "conversion", "view", "search"]  # the vocabulary
    positive_event_types: list[str] = ["click", "conversion"]  # engagements that count as positives
    max_lateness_hours: int = 72  # events older than interval start minus this are quarantined
    max_attribute_id: int = 2**62  # ids above this (or negative) are "absurd" and quarantined
    # The accepted user ids, both ends included; outside: quarantined as absurd_value:user_id. The
    # defaults refuse 0 and 2^63-1, the usual "no user"/"unknown" sentinels, and nothing else.
    min_user_id: int = 1
    max_user_id: int = 2**63 - 2

    @model_validator(mode="after")
    def _user_id_range(self) -> EventSettings:
        if not 0 <= self.min_user_id <= self.max_user_id <= 2**63 - 1:
            raise ValueError(
                f"events: need 0 <= min_user_id <= max_user_id <= 2^63-1, got "
                f"min_user_id={self.min_user_id}, max_user_id={self.max_user_id}"
            )
        return self
