"""Progress bars for long batch steps: one helper, used by the CLI, training and inference."""

from __future__ import annotations

import sys


def progress(total: int | None, desc: str, unit: str = "it"):
    """A tqdm progress bar on stderr, silent when stderr is not a terminal and SOE_PROGRESS is unset."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, disable=None, leave=False
    )
