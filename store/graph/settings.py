"""Config section of the user-similarity graph (composed in soe.config as `graph`)."""

from __future__ import annotations

from soe.section import Section


class GraphSettings(Section):
    k: int = 20  # neighbours per user
