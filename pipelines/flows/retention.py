"""Retention: remove snapshots older than ``refresh.hours_to_keep`` before the run's as_of.

Snapshots are the ``as_of=<T>`` children of ``state/``, ``active/``, ``quarantine/``,
``embeddings/<model>/`` and ``graph/<model>/``. Rules, so a reader or the next run never loses what
it needs:

* only published snapshots are candidates, and the **newest published snapshot of every parent is
  always kept** (the next incremental run and a backfill start from the newest state, and the
  newest graph of an idle model stays serving);
* a snapshot is removed by renaming it to a hidden ``.old-`` sibling first (readers then see it
  as absent, never half-deleted), then deleting it;
* leftovers of crashed writers (hidden ``.tmp-``/``.old-`` entries) are removed only when older
  than ``stale_temp_hours``: a concurrent run may be writing the young ones.

Run manifests and the raw event log are not touched (the event log has its own lifecycle).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from soe.atomic import is_complete
from soe.layout import Layout, stamp, utc


def snapshot_parents(layout: Layout) -> list[Path]:
    """Every directory whose ``as_of=`` children are snapshots under retention."""
    root = Path(layout.root)
    parents = [layout.state_root, root / "active", root / "quarantine"]
    for kind in ("embeddings", "graph"):
        if (root / kind).is_dir():
            parents += sorted(p for p in (root / kind).iterdir() if p.is_dir() and not p.name.startswith("."))
    return [p for p in parents if p.is_dir()]


def _snapshots(parent: Path) -> list[tuple[datetime, Path]]:
    out = []
    for child in parent.iterdir():
        if child.name.startswith("as_of=") and is_complete(child):
            try:
                out.append((utc(child.name[len("as_of="):]), child))
            except ValueError:
                continue
    return sorted(out)


def _remove(path: Path) -> None:
    hidden = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def apply_retention(layout: Layout, as_of: datetime, hours_to_keep: int, stale_temp_hours: float = 6.0) -> dict[str, Any]:
    """Remove expired snapshots (see module docstring); returns what was removed and kept."""
    if hours_to_keep < 1:
        raise ValueError(f"refresh.hours_to_keep must be >= 1, got {hours_to_keep}")
    cutoff = utc(as_of) - timedelta(hours=hours_to_keep)
    removed, kept, temps = [], 0, 0
    now = time.time()
    for parent in snapshot_parents(layout):
        snaps = _snapshots(parent)
        for t, path in snaps[:-1]:  # the newest is always kept
            if t < cutoff:
                _remove(path)
                removed.append(str(path.relative_to(layout.root)))
            else:
                kept += 1
        kept += bool(snaps)
        for child in parent.iterdir():
            hidden_leftover = child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name)
            if hidden_leftover and now - child.stat().st_mtime > stale_temp_hours * 3600:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
                temps += 1
    return {"cutoff": stamp(cutoff), "removed": removed, "n_removed": len(removed), "kept": kept, "stale_temps": temps}
