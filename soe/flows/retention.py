"""Retention: remove snapshots older than ``orchestration.hours_to_keep`` before the run's as_of.

Snapshots are the ``as_of=<T>`` children of ``state/``, ``active/``, ``quarantine/``,
``embeddings/<model>/`` and ``graph/<model>/``. Rules, so a reader or the next run never loses what
it needs:

* only published snapshots are candidates, and the **newest published snapshot of every parent is
  always kept** (the next incremental run and a backfill start from the newest state, and the
  newest graph of an idle model stays serving);
* an expired **embedding** snapshot is removed only when every user in it has a vector in a newer
  snapshot of the same model: the graph is built over every user's newest vector across snapshots
  (`core.embeddings.latest_embeddings`), so a user idle for longer than the window
  keeps their last vector on disk (the backfill snapshot of a model typically stays for that);
* a snapshot is removed by renaming it to a hidden ``.old-`` sibling first (readers then see it
  as absent, never half-deleted), then deleting it;
* leftovers of crashed writers (hidden ``.tmp-``/``.old-`` entries) are removed only when older
  than ``stale_temp_hours``: a concurrent run may be writing the young ones.

Run manifests and the raw event log are not touched (the event log has its own lifecycle).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from core.atomic import clean_temp, is_complete
from core.layout import Layout, stamp, utc


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


def _user_ids(snapshot: Path) -> np.ndarray:
    files = sorted(snapshot.glob("shard=*/*.parquet")) or sorted(snapshot.glob("*.parquet"))
    ids = [pq.read_table(f, columns=["user_id"]).column("user_id").to_numpy() for f in files]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


def _remove(path: Path) -> None:
    hidden = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def apply_retention(layout: Layout, as_of: datetime, hours_to_keep: int, stale_temp_hours: float = 6.0) -> dict[str, Any]:
    """Remove expired snapshots (see module docstring); returns what was removed and kept."""
    if hours_to_keep < 1:
        raise ValueError(f"orchestration.hours_to_keep must be >= 1, got {hours_to_keep}")
    cutoff = utc(as_of) - timedelta(hours=hours_to_keep)
    removed, kept = [], 0
    embeddings = Path(layout.root) / "embeddings"
    for parent in snapshot_parents(layout):
        snaps = _snapshots(parent)
        per_user = parent.parent == embeddings
        covered = np.zeros(0, dtype=np.int64)  # users with a vector in a newer kept snapshot
        for t, path in reversed(snaps):
            ids = _user_ids(path) if per_user else None
            newest = path == snaps[-1][1]
            if not newest and t < cutoff and (not per_user or np.isin(ids, covered).all()):
                _remove(path)
                removed.append(str(path.relative_to(layout.root)))
                continue
            kept += 1
            if per_user:
                covered = np.union1d(covered, ids)
    temps = clean_temp(Path(layout.root), older_than_s=stale_temp_hours * 3600)  # crash leftovers, at any depth
    return {"cutoff": stamp(cutoff), "removed": removed, "n_removed": len(removed), "kept": kept, "stale_temps": temps}
