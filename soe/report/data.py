"""What a run report shows, read from disk only: the run manifests, the alerts and the model artifact.

No Redis, no Spark: the manifests (``<root>/manifests/<dag>/as_of=T.json``) hold per-stage seconds,
counts and the generation checks; the alerts hold the failures; ``models/<version>/`` holds the
model's config, metrics (with its baselines) and, when the trainer saved it, a per-epoch history.
The quarantine reasons come from the manifest when it has them, else from the quarantine snapshot's
marker (kept ``orchestration.hours_to_keep`` hours).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.layout import Layout, stamp, utc
from soe.flows.manifest import done_times, read_manifest
from soe.flows.metrics import check_values, norm_range, quarantine_reasons

HOURLY, BACKFILL, TRAINING = "soe_hourly", "soe_backfill", "soe_training"
STAGE_ORDER = ("sequences", "encode", "publish", "graph", "validate", "retention", "switch")


@dataclass
class Run:
    """One done hourly or backfill run of the model, flattened for the tables and plots."""

    dag: str
    as_of: datetime
    attempt: int
    stage_seconds: dict[str, float]
    counts: dict[str, float | None]  # valid_events, quarantined, active_users, encoded, written, vectors ...
    checks: dict[str, dict[str, Any]]  # name -> {ok, value, threshold, detail}
    quarantine: dict[str, int]  # reason -> rows
    norms: tuple[float | None, float | None]  # (min, max) vector norm
    graph_mode: str | None

    def value(self, check: str) -> float | None:
        c = self.checks.get(check)
        return None if c is None or c.get("value") is None else float(c["value"])

    def threshold(self, check: str) -> float | None:
        c = self.checks.get(check)
        return None if c is None or c.get("threshold") is None else float(c["threshold"])

    def rate(self, rows: str, stage: str) -> float | None:
        n, s = self.counts.get(rows), self.stage_seconds.get(stage)
        return n / s if n is not None and s else None


@dataclass
class ReportData:
    model: str
    start: datetime
    end: datetime
    runs: list[Run] = field(default_factory=list)  # hourly runs of the model, oldest first
    backfills: list[Run] = field(default_factory=list)
    trainings: list[dict[str, Any]] = field(default_factory=list)  # the training runs that made the model
    alerts: list[dict[str, Any]] = field(default_factory=list)  # hourly/backfill failures in range
    artifact: dict[str, Any] = field(default_factory=dict)  # config.json, metrics.json, history


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def to_run(layout: Layout, m: dict[str, Any]) -> Run:
    st = {k: v for k, v in (m.get("stages") or {}).items() if isinstance(v, dict)}
    names = ("sequences", "encode", "publish", "graph", "validate")
    seq, enc, pub, graph, val = (st.get(k, {}) for k in names)
    checks = check_values(val.get("checks", []))
    counts = {
        "valid_events": _num(seq.get("valid_events")),
        "quarantined": _num(seq.get("quarantined")),
        "active_users": _num(seq.get("active_users")),
        "encoded": _num(enc.get("users")),
        "published": _num(pub.get("rows")),
        "written": _num(pub.get("written")),
        "vectors": _num(val.get("vectors")),
        "graph_users": _num(graph.get("n_users")),
    }
    return Run(
        dag=m["dag"],
        as_of=utc(m["as_of"]),
        attempt=int(m.get("attempt", 1)),
        stage_seconds={k: float(v["seconds"]) for k, v in st.items() if _num(v.get("seconds")) is not None},
        counts=counts,
        checks=checks,
        quarantine=quarantine_reasons(layout, m) if seq else {},
        norms=norm_range(checks.get("norms", {}).get("detail", "")),
        graph_mode=graph.get("mode"),
    )


def _in_range(t: datetime, start: datetime, end: datetime) -> bool:
    """A run's data interval ends at its as_of: the runs of [start, end) have start < as_of <= end."""
    return start < t <= end


def manifests(layout: Layout, dag: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    out = []
    for t in done_times(layout, dag):
        if _in_range(t, start, end):
            m = read_manifest(layout, dag, t)
            if m:
                out.append(m)
    return out


def alerts(layout: Layout, dags: tuple[str, ...], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Alert records in range, each with ``repaired``: a done manifest exists for the same as_of."""
    out = []
    for dag in dags:
        parent = layout.manifest(f"{dag}_alerts", start).parent
        for p in sorted(parent.glob("as_of=*.json")) if parent.is_dir() else []:
            a = json.loads(p.read_text())
            t = utc(a.get("as_of") or p.name[len("as_of=") : -len(".json")])
            if _in_range(t, start, end):
                repaired = layout.manifest(dag, t).is_file()
                out.append({**a, "dag": dag, "as_of": stamp(t), "repaired": repaired})
    return sorted(out, key=lambda a: a["as_of"])


def artifact(layout: Layout, model: str) -> dict[str, Any]:
    """config.json, metrics.json and the per-epoch history (metrics["history"] or history.json) of a model."""
    path = Path(layout.model(model))
    out: dict[str, Any] = {"path": str(path), "found": path.is_dir()}
    for name in ("config", "metrics", "history"):
        f = path / f"{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
    metrics = out.get("metrics") or {}
    history = out.get("history")
    if isinstance(history, dict):
        history = history.get("history") or history.get("epochs")
    if history is None:
        history = metrics.get("history") or metrics.get("epoch_history")
    out["history"] = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    return out


def default_model(layout: Layout) -> str | None:
    """The model of the newest done hourly run (else backfill): what readers were served last."""
    for dag in (HOURLY, BACKFILL):
        times = done_times(layout, dag)
        if times:
            m = read_manifest(layout, dag, times[-1]) or {}
            if m.get("model_version"):
                return str(m["model_version"])
    return None


def default_interval(layout: Layout, model: str) -> tuple[datetime, datetime]:
    """Every done hourly/backfill run of ``model``: from just before the first to the last as_of."""
    times = [
        t
        for dag in (HOURLY, BACKFILL)
        for t in done_times(layout, dag)
        if (read_manifest(layout, dag, t) or {}).get("model_version") == model
    ]
    if not times:
        raise LookupError(f"no done hourly or backfill run of model {model!r} under {layout.root}/manifests")
    from core.layout import HOUR

    return min(times) - HOUR, max(times)


def collect(layout: Layout, model: str, start: datetime, end: datetime) -> ReportData:
    start, end = utc(start), utc(end)
    data = ReportData(model=model, start=start, end=end, artifact=artifact(layout, model))
    data.runs = [
        to_run(layout, m) for m in manifests(layout, HOURLY, start, end) if m.get("model_version") == model
    ]
    data.backfills = [
        to_run(layout, m) for m in manifests(layout, BACKFILL, start, end) if m.get("model_version") == model
    ]
    data.trainings = [
        m
        for t in done_times(layout, TRAINING)
        if (m := read_manifest(layout, TRAINING, t)) and m.get("model_version") == model
    ]
    data.alerts = alerts(layout, (HOURLY, BACKFILL), start, end)
    return data
