"""Retention: remove snapshots older than ``orchestration.hours_to_keep`` before the run's as_of.

Snapshots are the ``as_of=<T>`` children of ``state/``, ``active/``, ``quarantine/``,
``embeddings/<model>/`` and ``graph/<model>/``. Rules, so a reader or the next run never loses what
it needs:

* only published snapshots are candidates, and the **newest published snapshot of every parent is
  always kept** (the next incremental run and a backfill start from the newest state, and the
  newest graph of an idle model stays serving);
* an expired **embedding** snapshot is removed only when every user in it has a vector in a newer
  snapshot of the same model: the graph is built over every user's newest vector across snapshots
  (`core.embeddings.latest_ids` / `latest_vectors_of`), so a user idle for longer than the window
  keeps their last vector on disk (the backfill snapshot of a model typically stays for that);
* a snapshot is removed by renaming it to a hidden ``.old-`` sibling first (readers then see it
  as absent, never half-deleted), then deleting it;
* leftovers of crashed writers (hidden ``.tmp-``/``.old-`` entries) are removed only when older
  than ``stale_temp_hours``: a concurrent run may be writing the young ones.

**Forget** (`scrub_forgotten`, run first): every snapshot that still holds a user on the forget list
(`core.forget`) is rewritten without them, whatever its age: state layers and active shards (in one
pass, so files hard-linked across snapshots are rewritten once and stay shared), embedding shards,
graph snapshots (`store.graph.snapshot.scrub_snapshot`: rows, vectors, index entries, and every list
that named one searched again), training sets, and the quarantine (the rows are kept for the counts,
with every value nulled). A rejected generation (``rejected/``) that holds one is removed. Each
checked snapshot records the list's digest in its marker and is not read again until the list grows.
So a forgotten user survives on disk at most until the end of the next hourly run that completes.

Run manifests and the raw event log are not touched (the event log has its own lifecycle; every
read of it drops a forgotten user's events, see docs/operations.md "Forget").
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pyarrow import ArrowException

from core.atomic import clean_temp, is_complete, read_marker, write_marker
from core.forget import DIGEST_KEY, ForgetList, scrub_files, scrub_state
from core.layout import Layout, stamp, utc

log = logging.getLogger("soe.flows")


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
                out.append((utc(child.name[len("as_of=") :]), child))
            except ValueError:
                continue
    return sorted(out)


def _user_ids(snapshot: Path) -> np.ndarray:
    """The users of a snapshot; an unreadable file is left out with a warning (retention must never
    block an hour: a corrupt older snapshot is kept, and reported, until someone restores it)."""
    files = sorted(snapshot.glob("shard=*/*.parquet")) or sorted(snapshot.glob("*.parquet"))
    ids = []
    for f in files:
        try:
            ids.append(pq.read_table(f, columns=["user_id"]).column("user_id").to_numpy())
        except (OSError, ArrowException) as exc:
            log.warning(
                "retention: %s is unreadable (%s): its users count as not covered", f, type(exc).__name__
            )
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)


def _remove(path: Path) -> None:
    hidden = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _mark_checked(path: Path, forget: ForgetList, **extra: Any) -> None:
    write_marker(path, {**read_marker(path), DIGEST_KEY: forget.digest, **extra})


def scrub_forgotten(layout: Layout, forget: ForgetList | None = None) -> dict[str, int]:
    """Rewrite every snapshot on disk that still holds a forgotten user (see module docstring).

    Returns per kind the number of snapshots rewritten (rejected: removed)."""
    from core.sequence_state import StateSnapshot
    from store.graph.snapshot import scrub_snapshot

    forget = forget if forget is not None else ForgetList.load(layout.root)
    out = dict.fromkeys(("state", "active", "quarantine", "embeddings", "graph", "trainsets", "rejected"), 0)
    if not len(forget):
        return out
    root = Path(layout.root)

    def unchecked(parent: Path) -> list[Path]:
        return [p for _, p in _snapshots(parent) if not forget.checked(p)] if parent.is_dir() else []

    states, actives = unchecked(layout.state_root), unchecked(root / "active")
    state_files = {s: [f for _, f in StateSnapshot(s).files()] for s in states}
    active_files = {a: sorted(a.glob("shard=*.parquet")) for a in actives}
    per_file = scrub_files([f for fs in (*state_files.values(), *active_files.values()) for f in fs], forget)
    for s in states:
        out["state"] += scrub_state(s, forget, per_file)["files"] > 0
    for a, files in active_files.items():
        hit = [f for f in files if f in per_file]
        out["active"] += bool(hit)
        _mark_checked(a, forget)
    for q in unchecked(root / "quarantine"):
        keep = ("reason", "source_file", "rows", "detail")
        out["quarantine"] += bool(scrub_files(sorted(q.rglob("*.parquet")), forget, null_keep=keep))
        _mark_checked(q, forget)
    for kind in ("embeddings", "graph"):
        models = sorted(p for p in (root / kind).iterdir() if p.is_dir()) if (root / kind).is_dir() else []
        for model_dir in (m for m in models if not m.name.startswith(".")):
            for snap in unchecked(model_dir):
                if kind == "graph":
                    out["graph"] += scrub_snapshot(snap, forget)["rewritten"]
                    continue
                out["embeddings"] += bool(scrub_files(sorted(snap.glob("shard=*/*.parquet")), forget))
                _mark_checked(snap, forget)
    trainsets = root / "trainsets"
    for ts in sorted(p for p in trainsets.iterdir() if p.is_dir()) if trainsets.is_dir() else []:
        if ts.name.startswith(".") or forget.checked(ts):
            continue
        out["trainsets"] += bool(scrub_files(sorted(ts.rglob("*.parquet")), forget))
        if is_complete(ts):
            _mark_checked(ts, forget)
    for gen in sorted((root / "rejected").glob("*/as_of=*")) if (root / "rejected").is_dir() else []:
        ids = [np.load(f) for f in gen.rglob("ids.npy")]
        ids += [
            pq.read_table(f, columns=["user_id"]).column("user_id").to_numpy()
            for f in gen.rglob("*.parquet")
            if "user_id" in pq.ParquetFile(f).schema_arrow.names
        ]
        if any(forget.mask(i).any() for i in ids):
            _remove(gen)
            out["rejected"] += 1
    return out


def apply_retention(
    layout: Layout, as_of: datetime, hours_to_keep: int, stale_temp_hours: float = 6.0
) -> dict[str, Any]:
    """Remove expired snapshots, then rewrite every remaining one that holds a forgotten user (see
    module docstring); returns what was removed, kept and rewritten."""
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
    forgotten = scrub_forgotten(layout)  # after the removals: only what is kept is rewritten
    temps = clean_temp(
        Path(layout.root), older_than_s=stale_temp_hours * 3600
    )  # crash leftovers, at any depth
    return {
        "cutoff": stamp(cutoff),
        "removed": removed,
        "n_removed": len(removed),
        "kept": kept,
        "stale_temps": temps,
        "forget_rewritten": forgotten,
    }
