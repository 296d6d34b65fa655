"""Batch-run history on disk, written by the flows' own functions, for the metrics and report tests.

A real hourly run needs Spark, Redis and a trained model (minutes); these tests need what such runs
*leave behind*. So every record goes through the code the flows call: `soe.flows.training.record`,
`soe.flows.hourly.record` (hourly and backfill, which call `manifest.record_run` and so write the
Prometheus textfiles), `soe.flows.checks.judge` on real vectors for the generation checks,
`core.atomic.publish_dir` for the quarantine snapshot and the model artifact, and `manifest.alert`
with the exception's repr (what the Airflow failure callback passes) for a rejected hour. The step
results have the keys the real steps return (compare a manifest of `soe demo`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.atomic import publish_dir
from core.layout import HOUR, stamp
from soe.flows import hourly, training
from soe.flows.checks import GenerationRejected, Thresholds, judge
from soe.flows.manifest import alert

MODEL = "v-0123456789ab"
T0 = datetime(2026, 1, 1, 8, tzinfo=UTC)  # backfill / training as_of; hourly runs follow
REASONS = ("duplicate", "null_user_id", "unknown_event_type", "ts_before_lateness_window")


@dataclass
class History:
    model: str
    hours: list[datetime]  # as_of of the hourly runs, oldest first (the last one rejected when asked)
    rejected: datetime | None
    quarantine: dict[datetime, dict[str, int]] = field(default_factory=dict)


def unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_artifact(layout, model: str = MODEL, history: bool = True) -> None:
    """models/<model>/ as encoder.artifact.save_model lays it out (config, metrics with baselines)."""
    metrics: dict[str, Any] = {"test_users": 120, "epochs": 4, "train_s": 31.5, "best_valid_ndcg10": 0.21}
    for prefix, scale in (("", 1.0), ("pop_", 0.55), ("bag_", 0.8)):
        for k, hr in ((10, 0.32), (20, 0.41), (50, 0.55)):
            metrics[f"{prefix}hr@{k}"] = hr * scale
            metrics[f"{prefix}ndcg@{k}"] = hr * scale * 0.55
    if history:
        metrics["history"] = [
            {
                "epoch": e,
                "loss": 6.1 - 0.9 * e + 0.05 * e * e,
                "valid_ndcg10": 0.08 + 0.035 * e,
                "valid_hr10": 0.15 + 0.05 * e,
                "s": 8.0 * (e + 1),
            }
            for e in range(4)
        ]
    config = {
        "version": model,
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_len": 200},
        "train": {},
        "train_window": {
            "start": "2026-01-01 00:00:00",
            "end": "2026-01-01 07:59:00",
            "users": 400,
            "events": 9194,
        },
    }
    marker = {"version": model, "created_at": "2026-01-01T08:05:00+00:00"}
    with publish_dir(layout.model(model), marker) as tmp:
        (tmp / "config.json").write_text(json.dumps(config))
        (tmp / "metrics.json").write_text(json.dumps(metrics))


def _validate(t: Thresholds, rng, ids, vecs, previous, recall, seconds=0.05) -> tuple[dict[str, Any], Any]:
    report = judge(t, ids, ids, vecs, previous, recall, (min(len(ids), 50), min(len(ids), 50)))
    return {"stage": "validate", "seconds": seconds, **report.as_dict(), "vectors": int(len(ids))}, report


def _graph(n_users: int, touched: int, recall: float) -> dict[str, Any]:
    return {
        "stage": "graph",
        "seconds": 0.4,
        "mode": "incremental" if touched < n_users else "full",
        "n_users": n_users,
        "n_touched": touched,
        "recall_at_k": recall,
        "k": 20,
        "positives_users": touched,
    }


def _shards(model: str, users: int, shards: int = 2) -> list[dict[str, Any]]:
    part = users // shards
    out = [{"stage": "encode", "shard": i, "seconds": 1.5 + 0.1 * i, "users": part} for i in range(shards)]
    out += [
        {
            "stage": "publish",
            "shard": i,
            "seconds": 0.02,
            "model": model,
            "rows": part,
            "written": part,
            "unchanged": 0,
            "stale": 0,
            "duplicates": 0,
            "vectors_per_s": part / 0.02,
        }
        for i in range(shards)
    ]
    return out


def write_history(settings, hours: int = 6, reject_last: bool = True, seed: int = 0) -> History:
    """Training (promoted) + backfill at T0, then ``hours`` hourly runs; the last is rejected (recall)."""
    layout = settings.layout()
    rng = np.random.default_rng(seed)
    t = Thresholds.from_settings(settings)
    write_artifact(layout)
    # -- training: trainset -> train -> evaluate -> gate, recorded as tasks.gate does it --------------------
    with open(layout.model(MODEL) / "metrics.json") as f:
        cand = {k: v for k, v in json.load(f).items() if "@" in k or k == "test_users"}
    training.record(
        settings,
        T0,
        [
            {
                "stage": "trainset",
                "name": f"state-{stamp(T0)}",
                "path": str(layout.state(T0)),
                "seconds": 0.01,
            },
            {"stage": "train", "model": MODEL, "seconds": 95.2},
            {
                "stage": "evaluate",
                "candidate": MODEL,
                "current": None,
                "candidate_metrics": cand,
                "current_metrics": None,
                "current_age_hours": None,
                "seconds": 3.7,
            },
            {"stage": "gate", "candidate_model": MODEL, "promote": True, "reason": "no current model"},
        ],
    )
    # -- backfill of every known user, then the switch ------------------------------------------------------
    known = np.arange(10_000_000, 10_000_400, dtype=np.int64)
    vecs = {int(u): v for u, v in zip(known, unit(rng, len(known)))}
    val, _ = _validate(t, rng, known, np.stack([vecs[int(u)] for u in known]), None, 1.0)
    hourly.record(
        settings,
        T0,
        T0,
        MODEL,
        [
            *_shards(MODEL, 400),
            _graph(400, 400, 1.0),
            val,
            {"stage": "switch", "seconds": 0.04, "current": MODEL},
        ],
        dag="soe_backfill",
    )
    # -- hourly runs --------------------------------------------------------------------------------------
    out = History(MODEL, [], None)
    previous = (known, np.stack([vecs[int(u)] for u in known]))
    for h in range(1, hours + 1):
        as_of = T0 + HOUR * h
        active = np.sort(rng.choice(known, size=150 + 10 * h, replace=False))
        new = unit(rng, len(active))
        for u, v in zip(active, new):  # users move a little: a high drift cosine
            old = vecs[int(u)]
            vecs[int(u)] = (0.85 * old + 0.15 * v) / np.linalg.norm(0.85 * old + 0.15 * v)
        now = np.stack([vecs[int(u)] for u in active])
        spike = h == hours - 1  # an hour with many duplicates
        reasons = {r: int(rng.integers(1, 6)) * (3 if spike and r == "duplicate" else 1) for r in REASONS}
        out.quarantine[as_of] = reasons
        with publish_dir(layout.quarantine(as_of), {"counts": reasons, "quarantined": sum(reasons.values())}):
            pass  # the rows themselves do not matter here; the marker holds the counts per reason
        valid = 2900 + 150 * h
        seq = {
            "stage": "sequences",
            "seconds": 24.0 + h,
            "mode": "incremental",
            "valid_events": valid,
            "active_users": len(active),
            "num_shards": 2,
            "quarantined": sum(reasons.values()),
            "reasons": reasons,
            "compacted": h % 3 == 0,
        }
        rejected = reject_last and h == hours
        recall = 0.85 if rejected else 0.97 - 0.004 * h
        val, report = _validate(t, rng, active, now, previous, recall)
        results = [seq, *_shards(MODEL, len(active)), _graph(400, len(active), recall), val]
        if rejected:
            try:
                report.raise_if_failed(f"generation {MODEL} as_of={stamp(as_of)}")
            except GenerationRejected as exc:  # what Airflow's failure callback records
                alert(layout, "soe_hourly", as_of, "validate", repr(exc))
            out.rejected = as_of
        else:
            hourly.record(settings, as_of, as_of - HOUR, MODEL, results)
            previous = (active, now)
        out.hours.append(as_of)
    return out
