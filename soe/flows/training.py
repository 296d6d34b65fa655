"""The training flow: trainset -> train -> evaluate against the current model -> gate -> backfill.

Steps (one Airflow task each in ``dags/soe_training.py``; `run_training` loops them):

    trainset   pipelines.trainset.build_trainset over the ``flows.trainset_window_hours`` ending at as_of
    train      encoder.train.train_model on it -> a candidate version (deterministic id)
    evaluate   the candidate AND the current model on the same trainset split (so NDCG@10 compare)
    gate       `soe.flows.gate.decide` (NDCG@10 gain, staleness of the current model)
    promote    when the gate says so: the backfill flow (re-encode every user, validate, switch)

A candidate is never made current here: only the backfill switches the pointer, after its
generation validated, so a failure anywhere leaves the old model serving.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from core.layout import parse_interval, stamp, utc
from soe.flows import stages
from soe.flows.backfill import run_backfill
from soe.flows.gate import decide
from soe.flows.manifest import record_run, timed

log = logging.getLogger("soe.flows")
DAG_ID = "soe_training"


def trainset(settings, as_of: datetime) -> dict[str, Any]:
    f = settings.orchestration
    name = f"{f.trainset_kind}-{stamp(as_of)}"
    with timed({"stage": "trainset", "name": name}) as out:
        path = stages.build_trainset(settings, f.trainset_kind, utc(as_of), f.trainset_window_hours, name)
        out["path"] = str(path)
    return out


def train(settings, trainset_path: str) -> dict[str, Any]:
    with timed({"stage": "train"}) as out:
        out["model"] = stages.train_model(settings, Path(trainset_path))
    return out


def model_age_hours(info: dict[str, Any], as_of: datetime) -> float | None:
    """Hours between the end of a model's training window (else its creation) and ``as_of``."""
    window = info.get("train_window")
    end = None
    if isinstance(window, dict):
        end = window.get("end") or window.get("split_time")
    elif isinstance(window, str) and "/" in window:
        end = window.split("/")[1]
    try:
        t = utc(end) if end else utc(info["created_at"]) if info.get("created_at") else None
    except (ValueError, TypeError):
        t = None
    return None if t is None else (utc(as_of) - t).total_seconds() / 3600.0


def evaluate(settings, candidate: str, trainset_path: str, as_of: datetime) -> dict[str, Any]:
    """Metrics of the candidate and of the current model on the same split."""
    with timed({"stage": "evaluate", "candidate": candidate}) as out:
        current = stages.current_model(settings)
        out["current"] = current
        out["candidate_metrics"] = stages.evaluate_model(settings, candidate, Path(trainset_path))
        if current and current != candidate:
            out["current_metrics"] = stages.evaluate_model(settings, current, Path(trainset_path))
            out["current_age_hours"] = model_age_hours(stages.model_info(settings, current), as_of)
        else:
            out["current_metrics"], out["current_age_hours"] = None, None
    return out


def gate(settings, evaluation: dict[str, Any]) -> dict[str, Any]:
    f = settings.orchestration
    if evaluation["current"] is not None and evaluation["current"] == evaluation["candidate"]:
        return {
            "stage": "gate",
            "promote": False,
            "reason": "the candidate is already the current model",
            "candidate_model": evaluation["candidate"],
        }
    d = decide(
        evaluation["candidate_metrics"],
        evaluation["current_metrics"],
        evaluation["current_age_hours"],
        f.min_ndcg_gain,
        f.max_staleness_hours,
        f.stale_tolerance,
    )
    log.info("promotion gate for %s: %s", evaluation["candidate"], d.reason)
    return {"stage": "gate", "candidate_model": evaluation["candidate"], **d.as_dict()}


def record(settings, as_of: datetime, results: list[dict[str, Any]]) -> str:
    stages_out = {r["stage"]: r for r in results}
    model = stages_out.get("train", {}).get("model")
    payload = {"model_version": model, "stages": json.loads(json.dumps(stages_out, default=str))}
    return str(record_run(settings.layout(), DAG_ID, as_of, payload, settings.orchestration.metrics_dir))


def run_training(settings, as_of: datetime, backfill: bool = True) -> dict[str, Any]:
    """All training steps in this process; on promotion, the backfill flow (which switches the pointer)."""
    as_of = utc(as_of)
    ts = trainset(settings, as_of)
    tr = train(settings, ts["path"])
    ev = evaluate(settings, tr["model"], ts["path"], as_of)
    g = gate(settings, ev)
    out = {
        "model": tr["model"],
        "promote": g["promote"],
        "reason": g["reason"],
        "manifest": record(settings, as_of, [ts, tr, ev, g]),
    }
    if g["promote"] and backfill:
        out["backfill"] = run_backfill(settings, tr["model"])
    return out


def parse_as_of(text: str | None, default: datetime) -> datetime:
    """``--as-of`` of the CLI: an ISO time, or START/END (END is used)."""
    if not text:
        return utc(default)
    return parse_interval(text)[1] if "/" in text else utc(text)
