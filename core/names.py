"""The one rule for names that become paths or Redis keys: model versions, namespaces, training sets.

A model version ends up in ``<root>/models/<version>/``, ``embeddings/<version>/``, ``graph/<version>/``,
in Redis keys (``soe:v:<version>:...``) and in the current-model pointer. An unchecked string there is
a path traversal (``../../x``) or a key injection, so every such name goes through `check_name`: 1-128
characters of letters, digits, ``.``, ``_`` and ``-``, not starting with a dot or dash, never ``..``.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: object) -> str:
    """``value`` if it is a safe name, else ValueError naming ``kind`` (never echoing a long value)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:  # fullmatch: no "x\n"
        shown = repr(value) if isinstance(value, str) and len(value) <= 140 else f"<{type(value).__name__}>"
        raise ValueError(
            f"{kind} {shown} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-' and without '..' (it becomes part of paths and Redis keys)"
        )
    return value
