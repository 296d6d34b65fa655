"""Prometheus metrics of the batch runs (hourly refresh, training, backfill), from their run manifests.

A batch run is a process that ends, so nothing is there for Prometheus to scrape afterwards. Each
run therefore writes its metrics to ``<metrics_dir>/soe_<flow>.prom`` (``soe_hourly.prom``,
``soe_training.prom``, ``soe_backfill.prom``) for node_exporter's **textfile collector**
(``--collector.textfile.directory=<metrics_dir>``), atomically (a temp file, then a rename), at the
end of the run: from the run manifest when the run is recorded done (`manifest.record_run`), from the
alert when it failed or its generation was rejected (`manifest.alert`). The file always holds the
*last* run of that flow; every series carries ``flow`` and ``model`` labels, so the three files never
hold the same series and a dashboard can tell the flows apart. (Not ``job``: Prometheus sets that
label on the scrape itself.)

Everything is a gauge of the last run, except ``soe_generation_newest_timestamp_seconds`` (the
as_of of the newest validated generation of the model, from every done hourly/backfill manifest)
and ``soe_failed_intervals`` (alert records without a done manifest for the same as_of), which look
back over the flow's history. An age is computed in PromQL (``time() - ...``), never written, so it
keeps growing when runs stop.

The metric names are the contract of ``deploy/monitoring/`` (the dashboard and the alert rules);
``tests/test_metrics.py`` checks both directions.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from core.layout import Layout, utc

log = logging.getLogger("soe.flows")

GENERATION_DAGS = ("soe_hourly", "soe_backfill")  # the flows that publish a generation (vectors + graph)
LABELS = ("flow", "model")  # on every series

# name -> (help, labels beyond LABELS). One table, so the dashboard/rules test can list what exists.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "soe_run_success": ("1 when the last run was recorded done, 0 when it failed or was rejected", ()),
    "soe_run_timestamp_seconds": ("Unix time the last run ended (this file was written)", ()),
    "soe_run_as_of_timestamp_seconds": ("as_of (end of the data interval) of the last run, unix seconds", ()),
    "soe_run_attempt": ("Attempt number of the last run's interval (reruns count up)", ()),
    "soe_run_seconds": ("Sum of the last run's stage seconds", ()),
    "soe_stage_seconds": ("Seconds of one stage of the last run (summed over shards)", ("stage",)),
    "soe_stage_input_rows": ("Rows a stage of the last run read (events, sequences, vectors)", ("stage",)),
    "soe_stage_output_rows": (
        "Rows a stage of the last run produced (active users, vectors, graph users)",
        ("stage",),
    ),
    "soe_quarantine_rows": ("Events of the last run's interval quarantined, per reason", ("reason",)),
    "soe_quarantine_ratio": ("Quarantined / (valid + quarantined) events of the last run's interval", ()),
    "soe_vectors_encoded": ("Vectors the last run encoded", ()),
    "soe_vectors_written": ("Vectors the last run wrote to Redis (new or newer as_of)", ()),
    "soe_vectors_not_written": (
        "Vectors the last run did not write: unchanged, or stale (older as_of)",
        ("reason",),
    ),
    "soe_generation_vectors": ("Vectors in the generation the last run validated", ()),
    "soe_generation_coverage": ("Share of the expected users with a vector (coverage check)", ()),
    "soe_generation_drift_cosine": ("Mean cosine of the same users' old and new vectors (drift check)", ()),
    "soe_generation_bad_norm_rows": ("Vectors with a NaN/inf component or off unit norm (norms check)", ()),
    "soe_generation_graph_recall": ("Graph recall@k against exact search (recall check)", ()),
    "soe_generation_check_passed": (
        "1 when a generation check passed (or was skipped), 0 when it failed",
        ("check",),
    ),
    "soe_generation_check_threshold": ("The threshold a generation check was judged against", ("check",)),
    "soe_generation_validated": ("1 when the last run's generation passed every check", ()),
    "soe_generation_rejected": ("1 when the last run's generation failed a check (not marked done)", ()),
    "soe_generation_newest_timestamp_seconds": (
        "as_of of the newest validated generation of the model, unix seconds (age = time() - this)",
        (),
    ),
    "soe_failed_intervals": ("Intervals with an alert and no done manifest (failed, not repaired)", ()),
    "soe_training_promoted": ("1 when the last training run's gate promoted the candidate", ()),
    "soe_training_eval": (
        "Evaluation metric of the candidate or current model on the trainset split (scorer: model/pop/bag)",
        ("role", "scorer", "metric"),
    ),
}

STAGE_ROWS = {  # stage -> (input key(s), output key) in the stage's manifest entry
    "sequences": (("valid_events", "quarantined"), "active_users"),
    "encode": (("users",), "users"),
    "publish": (("rows",), "written"),
    "graph": (("n_touched",), "n_users"),
    "validate": (("vectors",), "vectors"),
}
REJECTED = re.compile(r"generation (?P<model>\S+) as_of=\S+ rejected: (?P<checks>.*)", re.DOTALL)
NORMS = re.compile(r"norms in \[(?P<lo>[^,\]]+), (?P<hi>[^\]]+)\]")


def flow_name(dag: str) -> str:
    """``soe_hourly`` -> ``hourly``."""
    return dag.removeprefix("soe_")


def textfile_dir(layout: Layout, metrics_dir: Path | str | None = None) -> Path:
    """Where the .prom files go: ``metrics_dir`` when given; else ``orchestration.metrics_dir`` of the
    process configuration (the YAML/env every DAG task loads) when it is for this data root; else
    ``<root>/metrics``."""
    if metrics_dir is not None:
        return Path(metrics_dir)
    try:
        from soe.config import load_settings

        s = load_settings()
        same_root = Path(s.data.root).resolve() == Path(layout.root).resolve()
        if s.orchestration.metrics_dir is not None and same_root:
            return Path(s.orchestration.metrics_dir)
    except (ValueError, OSError) as exc:  # a configuration that does not load here: the default below
        log.debug("metrics_dir: process configuration not loaded (%s)", exc)
    return Path(layout.root) / "metrics"


def textfile_path(layout: Layout, dag: str, metrics_dir: Path | str | None = None) -> Path:
    return textfile_dir(layout, metrics_dir) / f"soe_{flow_name(dag)}.prom"


# -- reading the manifests ------------------------------------------------------------------------
def _ts(text: str | datetime | None) -> float | None:
    if text is None:
        return None
    try:
        return utc(text).timestamp()
    except (TypeError, ValueError):
        return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def quarantine_reasons(layout: Layout, manifest: dict[str, Any]) -> dict[str, int]:
    """Quarantined rows per reason of an hourly run: its sequences stage, else the quarantine marker."""
    seq = manifest.get("stages", {}).get("sequences", {})
    if isinstance(seq.get("reasons"), dict):
        return {str(k): int(v) for k, v in seq["reasons"].items()}
    as_of = manifest.get("as_of")
    if not as_of:
        return {}
    from core.atomic import is_complete, read_marker

    path = layout.quarantine(utc(as_of))
    if not is_complete(path):
        return {}
    marker = read_marker(path)
    counts = marker.get("counts") or marker.get("reasons") or {}
    return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}


def newest_generation(layout: Layout, model: str, dags: Iterable[str] = GENERATION_DAGS) -> datetime | None:
    """as_of of the newest done hourly/backfill run of ``model`` (newest manifests read first)."""
    from soe.flows.manifest import done_times, read_manifest

    best: datetime | None = None
    for dag in dags:
        for t in reversed(done_times(layout, dag)):
            if best is not None and t <= best:
                break
            m = read_manifest(layout, dag, t)
            if m and m.get("model_version") == model:
                best = t
                break
    return best


def failed_intervals(layout: Layout, dag: str) -> int:
    """Alert records of ``dag`` whose as_of has no done manifest (failed and not rerun successfully)."""
    parent = layout.manifest(f"{dag}_alerts", datetime(2000, 1, 1)).parent
    if not parent.is_dir():
        return 0
    return sum(
        1
        for p in parent.glob("as_of=*.json")
        if not layout.manifest(dag, utc(p.name[len("as_of=") : -len(".json")])).is_file()
    )


def check_values(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks if isinstance(c, dict) and "name" in c}


def norm_range(detail: str) -> tuple[float | None, float | None]:
    """(min, max) vector norm from the norms check's sentence (``norms in [lo, hi]``)."""
    m = NORMS.search(detail or "")
    if not m:
        return None, None
    lo, hi = (None if x in ("None", "nan") else float(x) for x in (m["lo"], m["hi"]))
    return lo, hi


def parse_rejection(error: str) -> tuple[str | None, list[str]]:
    """(model, failed check names) of a GenerationRejected message; (None, []) for any other error."""
    m = REJECTED.search(error or "")
    if not m:
        return None, []
    names = [part.split(":", 1)[0].strip() for part in m["checks"].split("; ")]
    return m["model"], [n for n in names if re.fullmatch(r"[a-z_]+", n)]


# -- building the registry ------------------------------------------------------------------------
class _Writer:
    """A fresh registry with every metric of METRICS, each labelled (flow, model, ...)."""

    def __init__(self, flow: str, model: str) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        self.base = {"flow": flow, "model": model}
        self.gauges = {
            name: Gauge(name, help_, [*LABELS, *extra], registry=self.registry)
            for name, (help_, extra) in METRICS.items()
        }

    def set(self, name: str, value: Any, **labels: str) -> None:
        v = _num(value)
        if v is not None:
            self.gauges[name].labels(**self.base, **labels).set(v)

    def done(self):
        """The registry, without the metrics this run has no value for (no empty families in the file)."""
        for g in self.gauges.values():
            if not any(m.samples for m in g.collect()):
                self.registry.unregister(g)
        return self.registry


def _generation(w: _Writer, layout: Layout, dag: str, model: str | None) -> None:
    w.set("soe_failed_intervals", failed_intervals(layout, dag))
    if dag in GENERATION_DAGS and model:
        t = newest_generation(layout, model)
        w.set("soe_generation_newest_timestamp_seconds", _ts(t))


def _stages(w: _Writer, layout: Layout, manifest: dict[str, Any]) -> None:
    stages = manifest.get("stages", {}) or {}
    for name, s in stages.items():
        if not isinstance(s, dict):
            continue
        w.set("soe_stage_seconds", s.get("seconds"), stage=name)
        keys_in, key_out = STAGE_ROWS.get(name, ((), ""))
        present = [v for k in keys_in if (v := _num(s.get(k))) is not None]
        if name == "sequences":  # events read = valid + quarantined
            rows_in = sum(present) if present and len(present) == len(keys_in) else None
        else:
            rows_in = present[0] if present else None
        w.set("soe_stage_input_rows", rows_in, stage=name)
        w.set("soe_stage_output_rows", s.get(key_out) if key_out else None, stage=name)
    seq = stages.get("sequences", {})
    if seq:
        reasons = quarantine_reasons(layout, manifest)
        for reason, n in sorted(reasons.items()):
            w.set("soe_quarantine_rows", n, reason=reason)
        quarantined = _num(seq.get("quarantined"))
        quarantined = float(sum(reasons.values())) if quarantined is None and reasons else quarantined
        valid = _num(seq.get("valid_events"))
        if quarantined is not None and valid is not None:
            w.set("soe_quarantine_ratio", quarantined / (valid + quarantined) if valid + quarantined else 0.0)
    if "encode" in stages:
        w.set("soe_vectors_encoded", stages["encode"].get("users"))
    pub = stages.get("publish", {})
    if pub:
        w.set("soe_vectors_written", pub.get("written"))
        for reason in ("unchanged", "stale"):
            w.set("soe_vectors_not_written", pub.get(reason), reason=reason)
    val = stages.get("validate", {})
    if val:
        w.set("soe_generation_vectors", val.get("vectors"))
        checks = check_values(val.get("checks", []))
        _checks(w, checks)
        ok = bool(val.get("ok", all(c.get("ok") for c in checks.values())))
        w.set("soe_generation_validated", int(ok))
        w.set("soe_generation_rejected", int(not ok))
    gate = stages.get("gate", {})
    if gate:
        w.set("soe_training_promoted", int(bool(gate.get("promote"))))
    ev = stages.get("evaluate", {})
    for role in ("candidate", "current"):
        for key, value in (ev.get(f"{role}_metrics") or {}).items():
            scorer, metric = _scorer(key)
            if "@" in metric:
                w.set("soe_training_eval", value, role=role, scorer=scorer, metric=metric)


def _checks(w: _Writer, checks: dict[str, dict[str, Any]]) -> None:
    for name, c in checks.items():
        w.set("soe_generation_check_passed", int(bool(c.get("ok"))), check=name)
        w.set("soe_generation_check_threshold", c.get("threshold"), check=name)
    named = {
        "coverage": "soe_generation_coverage",
        "drift": "soe_generation_drift_cosine",
        "norms": "soe_generation_bad_norm_rows",
        "recall": "soe_generation_graph_recall",
    }
    for check, metric in named.items():
        if check in checks:
            w.set(metric, checks[check].get("value"))


def _scorer(key: str) -> tuple[str, str]:
    """``pop_ndcg@10`` -> ("pop", "ndcg@10"); ``ndcg@10`` -> ("model", "ndcg@10")."""
    head, _, rest = key.partition("_")
    return (head, rest) if rest and head in ("pop", "bag") else ("model", key)


def run_registry(layout: Layout, manifest: dict[str, Any], now: float | None = None):
    """The registry of a run recorded done (its manifest, as `manifest.record_run` wrote it)."""
    dag = manifest["dag"]
    model = str(manifest.get("model_version") or "")
    w = _Writer(flow_name(dag), model)
    w.set("soe_run_success", 1)
    w.set("soe_run_timestamp_seconds", now if now is not None else time.time())
    w.set("soe_run_as_of_timestamp_seconds", _ts(manifest.get("as_of")))
    w.set("soe_run_attempt", manifest.get("attempt"))
    w.set("soe_run_seconds", manifest.get("total_stage_seconds"))
    _stages(w, layout, manifest)
    _generation(w, layout, dag, model)
    return w.done()


def failure_registry(
    layout: Layout, dag: str, as_of: datetime, task: str, error: str, now: float | None = None
):
    """The registry of a failed run (the alert path): success 0; a rejection names its model and checks."""
    from soe.flows.manifest import done_times, read_manifest

    rejected_model, failed_checks = parse_rejection(error)
    model = rejected_model
    if model is None:  # the model of the flow's newest done run: the one this run most likely used
        done = done_times(layout, dag)
        model = (read_manifest(layout, dag, done[-1]) or {}).get("model_version") if done else None
    w = _Writer(flow_name(dag), str(model or ""))
    w.set("soe_run_success", 0)
    w.set("soe_run_timestamp_seconds", now if now is not None else time.time())
    w.set("soe_run_as_of_timestamp_seconds", _ts(as_of))
    if rejected_model is not None:
        w.set("soe_generation_validated", 0)
        w.set("soe_generation_rejected", 1)
        for name in failed_checks:
            w.set("soe_generation_check_passed", 0, check=name)
    _generation(w, layout, dag, model)
    return w.done()


def write_textfile(path: Path, registry) -> Path:
    """``prometheus_client.write_to_textfile``: a temp file in the same directory, then a rename."""
    from prometheus_client import write_to_textfile

    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


def export_run(layout: Layout, manifest: dict[str, Any], metrics_dir: Path | str | None = None) -> Path:
    """Write ``soe_<flow>.prom`` of a run recorded done."""
    return write_textfile(textfile_path(layout, manifest["dag"], metrics_dir), run_registry(layout, manifest))


def export_failure(
    layout: Layout, dag: str, as_of: datetime, task: str, error: str, metrics_dir: Path | str | None = None
) -> Path:
    """Write ``soe_<flow>.prom`` of a run that failed (task error or rejected generation)."""
    path = textfile_path(layout, dag, metrics_dir)
    return write_textfile(path, failure_registry(layout, dag, as_of, task, error))


def safe_export(fn, *args: Any, **kwargs: Any) -> Path | None:
    """Metrics must never fail a run (nor mask its own error): log and go on."""
    try:
        path = fn(*args, **kwargs)
        log.debug("metrics written: %s", path)
        return path
    except Exception:
        log.exception("could not write the Prometheus textfile (%s)", getattr(fn, "__name__", fn))
        return None
