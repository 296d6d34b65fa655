"""`soe` commands of this component (registered by soe.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""
