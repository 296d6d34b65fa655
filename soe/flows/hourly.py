"""The hourly refresh as steps: one function per Airflow task, and `run_hourly` that loops them.

For the data interval ``[start, end)`` (``as_of = end``)::

    partitions_ready  every hour's event partition has its _SUCCESS marker   (sensor)
    sequences         Spark: state(as_of) + K active shards           (one task; local or spark-submit)
    plan              the model to encode with (the current pointer, read once) and the shard list
    encode[i]         one task per shard: embeddings/<model>/as_of=T/shard=i  (dynamic task mapping)
    publish[i]        one task per shard: upsert into Redis, never over a newer as_of
    graph             mark the embedding snapshot complete, rebuild the user-similarity graph
    validate          coverage, norms/NaN, drift, recall, lookup sample; raises GenerationRejected
    record            the run manifest: the done mark, written only after validate passed
    retention         remove snapshots older than refresh.hours_to_keep

Every step is idempotent for its interval: it republishes the same outputs atomically, and the
store never lets an older as_of overwrite a newer vector. `publish` runs only after *every* shard
is encoded (in Airflow it expands over the encode results), so a failing shard leaves Redis on the
previous complete state; a rerun of the interval repairs it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from pyarrow import ArrowException

from core.atomic import is_complete
from core.layout import HOUR, check_interval, hours, stamp, utc
from soe.flows import stages
from soe.flows.checks import (
    Check,
    GenerationRejected,
    GenerationReport,
    Thresholds,
    judge_graph,
    judge_lookup,
    judge_vectors,
)
from soe.flows.manifest import alert, previous_done, record_run, timed
from soe.flows.reconcile import reconcile
from soe.flows.retention import apply_retention
from store.graph.tune import RecallUnreachable

log = logging.getLogger("soe.flows")
DAG_ID = "soe_hourly"
GENERATIONS = (DAG_ID, "soe_backfill")  # the done runs whose vectors a new hour's drift is measured against
SUMMED = ("users", "rows", "written", "unchanged", "stale", "duplicates")  # per-shard counts that add up


def missing_partitions(settings, start: datetime, end: datetime) -> list[str]:
    """The event partitions of [start, end) that are not published yet (empty = ready)."""
    layout = settings.layout()
    return [
        str(layout.event_partition(h))
        for h in hours(start, end)
        if not is_complete(layout.event_partition(h))
    ]


def sequences(settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Spark step: the local launcher calls this in-process; spark-submit runs soe/flows/spark_submit.py,
    which calls
    the same pipelines.hourly.update_sequences on the cluster."""
    start, end = check_interval(start, end)
    with timed({"stage": "sequences"}) as out:
        out.update(stages.update_sequences(settings, start, end))
    return out


def resolve_model(settings, requested: str | None = None) -> str:
    """The model of this run: the requested one, else the store's current pointer."""
    model = requested or stages.current_model(settings)
    if not model:
        raise LookupError(
            "no current model in the store: train and promote one first "
            "(the soe_training DAG, or `soe demo` which trains a small one)"
        )
    return model


def submitted_sequences(settings, as_of: datetime) -> dict[str, Any]:
    """The sequences step's result when spark-submit ran it (no XCom): its published manifest."""
    out = {"stage": "sequences", "seconds": None, "launcher": "spark-submit"}
    m = stages.active_manifest(settings, as_of)
    out.update({k: v for k, v in m.items() if isinstance(v, (int, float, str))})
    return out


def plan(settings, as_of: datetime, model: str | None = None) -> dict[str, Any]:
    """Which model encodes this as_of, and the shard list read from the published active manifest."""
    manifest = stages.active_manifest(settings, as_of)
    n = int(manifest["num_shards"])
    return {
        "model": resolve_model(settings, model),
        "num_shards": n,
        "shards": list(range(n)),
        "active_users": int(manifest.get("active_users", -1)),
    }


class DrillFailure(RuntimeError):
    """Raised on purpose by a failure drill (the DAG param ``drill_fail_shards``)."""


def encode(
    settings,
    model: str,
    as_of: datetime,
    shard: int,
    num_shards: int | None = None,
    source: str = "active",
    drill_fail: bool = False,
) -> dict[str, Any]:
    if drill_fail:
        raise DrillFailure(
            f"failure drill: encoder shard {shard} of {model} as_of={stamp(as_of)} fails on purpose"
        )
    with timed({"stage": "encode", "shard": int(shard)}) as out:
        m = stages.encode_shard(settings, model, as_of, shard, num_shards=num_shards, source=source)
        out["users"] = int(m.get("users", 0))
    return out


def publish(settings, model: str, as_of: datetime, shard: int) -> dict[str, Any]:
    with timed({"stage": "publish", "shard": int(shard)}) as out:
        m = stages.publish_shard(settings, model, as_of, shard)
        out.update({k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k != "seconds"})
    return out


def validate_vectors(
    settings,
    model: str,
    as_of: datetime,
    num_shards: int,
    expected_ids: np.ndarray | None = None,
    drift_against: tuple[str, ...] | None = GENERATIONS,
) -> dict[str, Any]:
    """Mark the embedding snapshot complete and judge its vectors, before anything is published.

    Coverage of the expected users (the interval's active users; a backfill passes every known user),
    norms, and drift against the previous done generation (``drift_against=None``: a new model's
    vectors live in another space). A failure rejects the generation (see `reject`).
    """
    with timed({"stage": "validate"}) as out:
        stages.mark_embeddings(settings, model, as_of, num_shards)
        expected = stages.active_user_ids(settings, as_of) if expected_ids is None else expected_ids
        ids, vecs = stages.read_vectors(settings, model, as_of)
        previous = None
        prev = previous_done(settings.layout(), drift_against, as_of, model) if drift_against else None
        if prev is not None:
            try:
                previous = stages.read_vectors(settings, model, utc(prev["as_of"]))
            except FileNotFoundError:  # expired by retention
                previous = None
            except (OSError, ArrowException) as exc:  # a corrupt done shard must not block every later hour
                log.warning("drift not judged: the previous generation %s as_of=%s is unreadable (%s); "
                            "restore its embedding shards from a copy, or backfill", model, prev["as_of"],
                            exc)
                previous = None
        report = judge_vectors(Thresholds.from_settings(settings), expected, ids, vecs, previous)
        out.update(report.as_dict())
        out["vectors"] = int(len(ids))
    reject_if_failed(settings, model, as_of, report)
    return out


def graph(settings, model: str, as_of: datetime) -> dict[str, Any]:
    """Build the graph on disk, unaccepted (no reader sees it); judge its recall before lists are written."""
    t = Thresholds.from_settings(settings)
    with timed({"stage": "graph"}) as out:
        try:
            m = stages.build_graph(settings, model, as_of, accept=False)
        except RecallUnreachable as exc:  # calibration's early verdict: no setting reaches the target
            report = GenerationReport([Check("recall", False, None, t.min_graph_recall, str(exc))])
        else:
            # not the snapshot's build-time "accepted" (always false here): publish_graph reports acceptance
            skip = ("seconds", "accepted")
            out.update({k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k not in skip})
            report = judge_graph(t, m.get("recall_at_k"))
        out.update(report.as_dict())
    reject_if_failed(settings, model, as_of, report)
    return out


def publish_graph(
    settings, model: str, as_of: datetime, expected_ids: np.ndarray | None = None
) -> dict[str, Any]:
    """After the vectors: the graph's changed neighbour lists and the recent positives to the store, the
    graph accepted (now served), and a sample of the expected users read back through the lookup client."""
    with timed({"stage": "publish_graph"}) as out:
        out["lists"] = stages.publish_lists(settings, model, as_of)["lists"]
        out["positives_users"] = stages.publish_recent_positives(settings, as_of).get("users")
        out["graph_accepted"] = bool(stages.accept_graph(settings, model, as_of)["accepted"])
        expected = stages.active_user_ids(settings, as_of) if expected_ids is None else expected_ids
        sample_n = min(settings.orchestration.lookup_sample, len(np.unique(expected)))
        rng = np.random.default_rng(int(utc(as_of).timestamp()))
        sample = rng.choice(np.unique(expected), size=sample_n, replace=False) if sample_n else expected[:0]
        report = (
            judge_lookup(*stages.lookup_found(settings, model, sample)) if sample_n else GenerationReport()
        )
        out.update(report.as_dict())
    report.raise_if_failed(
        f"generation {model} as_of={stamp(as_of)}"
    )  # published: a store fault, not a rejection
    return out


def reject_if_failed(settings, model: str, as_of: datetime, report: GenerationReport) -> None:
    """A failed check rejects the generation: its embeddings and graph move to ``rejected/`` (no later
    graph build or reader sees them; kept for inspection) and GenerationRejected is raised."""
    if report.ok:
        return
    layout = settings.layout()
    target = layout.rejected(model, as_of)
    for kind, path in (
        ("embeddings", layout.embeddings(model, as_of)),
        ("graph", layout.graph(model, as_of)),
    ):
        if path.exists():
            (target / kind).parent.mkdir(parents=True, exist_ok=True)
            if (target / kind).exists():
                shutil.rmtree(target / kind)
            os.replace(path, target / kind)
    report.raise_if_failed(f"generation {model} as_of={stamp(as_of)}")


def record(
    settings, as_of: datetime, start: datetime, model: str, results: list[dict[str, Any]], dag: str = DAG_ID
) -> str:
    """Write the run manifest from the step results (per-stage seconds summed over shards)."""
    payload = {"interval": [stamp(start), stamp(as_of)], "model_version": model, "stages": summarise(results)}
    return str(record_run(settings.layout(), dag, as_of, payload, settings.orchestration.metrics_dir))


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Step results -> one entry per stage: seconds and counts summed over shards, other values kept."""
    stages_out: dict[str, dict[str, Any]] = {}
    checks: list[dict[str, Any]] = []  # every generation check, whichever step judged it
    for r in results:
        checks += r.get("checks") or []
        s = stages_out.setdefault(r["stage"], {"seconds": 0.0})
        s["seconds"] = round(s["seconds"] + float(r.get("seconds") or 0.0), 3)
        for k, v in r.items():
            if k in ("stage", "seconds", "shard", "shards", "checks", "ok"):  # shards: counted; checks: below
                continue
            if k in SUMMED and isinstance(v, (int, float)):
                s[k] = s.get(k, 0) + v  # per-shard counts add up
            elif isinstance(v, (int, float, str, bool)) or k in (
                "checks",
                "reasons",
            ):  # reasons: quarantine counts
                s[k] = v
        if "shard" in r:
            s["shards"] = s.get("shards", 0) + 1
    if checks:
        v = stages_out.setdefault("validate", {"seconds": 0.0})
        v["checks"], v["ok"] = checks, all(c.get("ok") for c in checks)
    return stages_out


def retention(settings, as_of: datetime) -> dict[str, Any]:
    with timed({"stage": "retention"}) as out:
        out.update(apply_retention(settings.layout(), as_of, settings.orchestration.hours_to_keep))
    return out


def run_interval(
    settings,
    start: datetime,
    end: datetime,
    model: str | None = None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """All steps of one data interval in this process (what the DAG runs, minus Airflow)."""
    start, end = check_interval(start, end)
    as_of = end
    missing = missing_partitions(settings, start, end)
    if missing:
        raise FileNotFoundError(f"event partitions not published yet: {missing}")
    results: list[dict[str, Any]] = []

    def step(result: dict[str, Any]) -> dict[str, Any]:
        results.append(result)
        if on_stage:
            on_stage(result)
        return result

    step(sequences(settings, start, end))
    step(reconcile(settings))
    p = plan(settings, as_of, model)
    try:
        for shard in p["shards"]:  # every shard encoded and judged before anything is published
            step(encode(settings, p["model"], as_of, shard, p["num_shards"]))
        step(validate_vectors(settings, p["model"], as_of, p["num_shards"]))
        step(graph(settings, p["model"], as_of))
        for shard in p["shards"]:
            step(publish(settings, p["model"], as_of, shard))
        step(publish_graph(settings, p["model"], as_of))
    except GenerationRejected as exc:  # what the Airflow failure callback does for the DAG
        alert(settings.layout(), DAG_ID, as_of, "validate", str(exc), settings.orchestration.metrics_dir)
        raise
    path = record(settings, as_of, start, p["model"], results)
    step(retention(settings, as_of))
    return {
        "as_of": stamp(as_of),
        "model": p["model"],
        "manifest": path,
        "active_users": p["active_users"],
        "stages": summarise(results),
    }


class PreconditionFailed(LookupError):
    """A refresh cannot start; the message says, per problem, what to do (no Spark was started)."""


def preflight(settings, start: datetime, end: datetime, model: str | None = None) -> str:
    """Check what a refresh needs before starting Spark: events, Redis, a current (or given) model.

    Returns the model the refresh will encode with; raises PreconditionFailed listing every problem.
    """
    problems = []
    missing = missing_partitions(settings, start, end)
    if missing:
        problems.append(
            f"{len(missing)} hour(s) of the interval have no published events (first: {missing[0]}): "
            "land them, or `soe generate` demo events"
        )
    chosen = model
    try:
        chosen = model or stages.current_model(settings)
    except Exception as exc:  # any client error means the same thing to the user: Redis is not usable
        r = settings.redis
        problems.append(
            f"Redis {r.host}:{r.port} is not reachable ({type(exc).__name__}): "
            "start it (`soe redis start`) or fix redis.host / redis.port"
        )
    else:
        if not chosen:
            problems.append(
                "no current model: train one and make it current with `soe train --promote` "
                "(or `soe backfill --model VERSION` for a model that `soe models list` shows)"
            )
        elif model and not any(m.get("version") == model for m in stages.list_models(settings)):
            problems.append(
                f"model {model!r} is not published under {settings.layout().models}: see `soe models list`"
            )
    if problems:
        raise PreconditionFailed("cannot refresh: " + "; ".join(problems))
    return str(chosen)


def run_hourly(
    settings,
    start: datetime,
    end: datetime,
    model: str | None = None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """`soe refresh --interval START/END`: each whole hour of [start, end) in turn, oldest first.

    The preconditions are checked first, so a missing model or Redis is one clear line, not a
    failure after a minute of Spark."""
    start, end = check_interval(start, end)
    preflight(settings, start, end, model)
    return [run_interval(settings, h, h + HOUR, model, on_stage) for h in hours(start, end)]
