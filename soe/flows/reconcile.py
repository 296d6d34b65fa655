"""Reconcile the store with what is done on disk, first thing in every hourly run.

The embedding shards on disk are the source of truth; the store is a copy readers query. A store can
lose writes (a ``kill -9`` inside AOF's one-second fsync window, a restore from an older snapshot, a
flushed replica promoted), and then an hour marked done on disk is silently missing, or older, in
the store. So every hourly run first compares, for the current model:

* **the pointer**: when the store has no current model but a backfill on disk switched to one, the
  pointer is restored to the newest switched model — last, once its namespace is republished;
* **each done hour** (``manifests/soe_hourly`` and ``soe_backfill`` of that model, oldest first, whose
  embedding shards are still on disk) against the store's publish manifests
  (``<ns>:manifests:<model>``, field ``<as_of>/<shard>``): an hour without one is republished from its
  shards (the conditional upsert keeps newer vectors), with its recent positives;
* **the neighbour lists** of the newest accepted graph, written again in full when any hour was
  republished (the lists are as old as the vectors they were lost with).

What was repaired goes into the run manifest (``stages.reconcile``) and the metrics.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pyarrow import ArrowException

from core.layout import stamp
from soe.flows import stages
from soe.flows.manifest import done_times, read_manifest, timed

log = logging.getLogger("soe.flows")
GENERATION_DAGS = ("soe_hourly", "soe_backfill")  # runs whose vectors live in the store


def switched_model(settings) -> str | None:
    """The model the newest done backfill switched readers to (None: never switched)."""
    layout = settings.layout()
    for t in reversed(done_times(layout, "soe_backfill")):
        m = read_manifest(layout, "soe_backfill", t) or {}
        current = (m.get("stages") or {}).get("switch", {}).get("current")
        if current:
            return str(current)
    return None


def done_hours(settings, model: str) -> list[datetime]:
    """The as_of of every done generation of ``model`` whose embedding shards are still on disk."""
    layout = settings.layout()
    out = set()
    for dag in GENERATION_DAGS:
        for t in done_times(layout, dag):
            m = read_manifest(layout, dag, t) or {}
            if m.get("model_version") == model and stages.has_embeddings(settings, model, t):
                out.add(t)
    return sorted(out)


def reconcile(settings) -> dict[str, Any]:
    """Repair the store from disk (see module doc); returns what was repaired."""
    with timed({"stage": "reconcile"}) as out:
        current = stages.current_model(settings)
        restore = None
        if current is None:
            current = restore = switched_model(settings)
        repaired: list[str] = []
        unrepairable: list[str] = []  # done hours whose shards on disk can no longer be read
        if current is not None:
            present = stages.published_hours(settings, current)
            for t in done_hours(settings, current):
                if stamp(t) in present:
                    continue
                try:
                    stages.publish_shard(settings, current, t, None)
                except (OSError, ArrowException, ValueError) as exc:  # a corrupt shard: never block the hour
                    log.warning(
                        "reconcile: cannot republish %s of %s from disk (%s): %s",
                        stamp(t),
                        current,
                        type(exc).__name__,
                        exc,
                    )
                    unrepairable.append(stamp(t))
                    continue
                try:
                    stages.publish_recent_positives(settings, t)
                except (
                    FileNotFoundError
                ):  # the hour's active shards expired: its positives are not repairable
                    pass
                repaired.append(stamp(t))
            if repaired:
                newest = stages.newest_graph_time(settings, current)
                if newest is not None:
                    out["lists"] = stages.publish_lists(settings, current, newest, every_list=True)["lists"]
                log.warning(
                    "reconcile: republished %d done hour(s) of %s that the store had lost: %s",
                    len(repaired),
                    current,
                    ", ".join(repaired),
                )
        if restore is not None:  # last: readers switch only once the namespace holds the vectors again
            stages.switch_current(settings, restore)
            log.warning("reconcile: the store had no current model; restored the pointer to %s", restore)
            out["pointer_restored"] = restore
        out["republished_hours"] = len(repaired)
        if unrepairable:
            out["unrepairable"] = ",".join(unrepairable)
        if repaired:
            out["republished"] = ",".join(repaired)
    return out
