"""Base class of every configuration section: each component owns its sections, `soe.config` composes them."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
