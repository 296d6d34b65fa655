"""Run manifests and failure alerts.

A run manifest (``<root>/manifests/<dag>/as_of=<T>.json``) is the "done" mark of a run: it is
written last, atomically, only after the generation passed validation. It records what ran (the
interval, the model), how long each stage took, the counts each stage reported and the checks.
Re-running an interval rewrites it with the same counts (``attempt`` tells the reruns apart).

An alert (``<root>/manifests/<dag>_alerts/as_of=<T>.json``) is written by the failure callback when
a task fails for good; it is what an on-call pager or a dashboard would watch, and it is never the
done mark.

Both also write the flow's Prometheus textfile (``soe.flows.metrics``), after the JSON and never
failing the run: what the dashboards and alert rules in ``deploy/monitoring/`` read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from core.atomic import write_json_atomic
from core.layout import Layout, stamp, utc

log = logging.getLogger("soe.flows")


@contextmanager
def timed(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Fill ``result["seconds"]`` with the wall time of the block."""
    t0 = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = round(time.perf_counter() - t0, 3)


def read_manifest(layout: Layout, dag: str, as_of: datetime) -> dict[str, Any] | None:
    path = layout.manifest(dag, as_of)
    return json.loads(path.read_text()) if path.is_file() else None


def done_times(layout: Layout, dag: str) -> list[datetime]:
    """The as_of of every run of ``dag`` with a manifest (i.e. marked done), oldest first."""
    parent = layout.manifest(dag, datetime(2000, 1, 1)).parent
    if not parent.is_dir():
        return []
    return sorted(utc(p.name[len("as_of=") : -len(".json")]) for p in parent.glob("as_of=*.json"))


def previous_done(
    layout: Layout, dags: str | tuple[str, ...], as_of: datetime, model_version: str | None = None
) -> dict[str, Any] | None:
    """The manifest of the newest done run of any of ``dags`` before ``as_of`` (of ``model_version``)."""
    dags = (dags,) if isinstance(dags, str) else tuple(dags)
    runs = sorted(((t, d) for d in dags for t in done_times(layout, d) if t < utc(as_of)), reverse=True)
    for t, dag in runs:
        m = read_manifest(layout, dag, t)
        if m and (model_version is None or m.get("model_version") == model_version):
            return m
    return None


def record_run(
    layout: Layout, dag: str, as_of: datetime, payload: dict[str, Any], metrics_dir: Path | None = None
) -> Path:
    """Write the run manifest (the done mark), keeping an attempt counter across reruns; then the run's
    Prometheus textfile (soe.flows.metrics; ``metrics_dir`` = orchestration.metrics_dir)."""
    previous = read_manifest(layout, dag, as_of)
    stages = payload.get("stages", {})
    manifest = {
        "dag": dag,
        "as_of": stamp(as_of),
        "status": "done",
        "attempt": (previous or {}).get("attempt", 0) + 1,
        "recorded_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "total_stage_seconds": round(sum(float(s.get("seconds", 0.0)) for s in stages.values()), 3),
        **payload,
    }
    path = layout.manifest(dag, as_of)
    write_json_atomic(path, manifest)
    log.info("%s as_of=%s done: %s", dag, stamp(as_of), path)
    from soe.flows import metrics

    metrics.safe_export(metrics.export_run, layout, manifest, metrics_dir)
    return path


def alert(
    layout: Layout, dag: str, as_of: datetime, task: str, error: str, metrics_dir: Path | None = None
) -> Path:
    """Record (and log at ERROR) that ``task`` of ``dag`` failed for ``as_of``; then the run's Prometheus
    textfile, marking the run failed (and its generation rejected when a check failed)."""
    path = layout.manifest(f"{dag}_alerts", as_of)
    write_json_atomic(
        path,
        {
            "dag": dag,
            "as_of": stamp(as_of),
            "task": task,
            "error": error,
            "at": datetime.now().astimezone().isoformat(timespec="seconds"),
        },
    )
    log.error("ALERT %s as_of=%s task %s failed: %s (%s)", dag, stamp(as_of), task, error, path)
    from soe.flows import metrics

    metrics.safe_export(metrics.export_failure, layout, dag, as_of, task, error, metrics_dir)
    return path
