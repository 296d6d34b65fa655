"""The backfill flow of a new model: every known user re-encoded, validated, then the pointer switched.

Steps (one Airflow task each in ``dags/soe_backfill.py``; `run_backfill` loops them):

    plan           the newest published state snapshot (its as_of) and K = ``orchestration.backfill_shards``
    encode[i]      part i of K of the state (source "state") into embeddings/<new model>/as_of=<state as_of>
    validate       coverage of *every* known user, norms/NaN (no drift: a new model's vectors live in
                   another space), judged on disk before anything is published
    graph          the new model's user-similarity graph, built unaccepted; its recall judged
    publish[i]     upsert into the store under the new model's namespace (readers still use the old one)
    publish_graph  neighbour lists and positives, the graph accepted, a lookup sample read back
    switch         the atomic current-model pointer switch, last; then the run manifest

A failure before `switch` leaves the old model serving and its namespace untouched; a rerun repeats
the idempotent steps. Hourly runs that finish meanwhile keep encoding with the old model until the
switch; the new namespace then holds every user as of the state snapshot, and the next hourly runs
bring the active users up to date.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from core.layout import stamp, utc
from soe.flows import hourly, stages
from soe.flows.manifest import timed

log = logging.getLogger("soe.flows")
DAG_ID = "soe_backfill"


def plan(settings, model: str, as_of: datetime | None = None) -> dict[str, Any]:
    """The state snapshot to re-encode from (newest, or newest at/before ``as_of``) and the shards."""
    stages.model_info(settings, model)  # a clear error when the model is not published
    state_as_of = stages.newest_state(settings, as_of)
    n = settings.orchestration.backfill_shards
    return {"model": model, "as_of": stamp(state_as_of), "num_shards": n, "shards": list(range(n))}


def encode(settings, model: str, as_of: datetime, shard: int, num_shards: int) -> dict[str, Any]:
    return hourly.encode(settings, model, as_of, shard, num_shards, source="state")


def validate(settings, model: str, as_of: datetime, num_shards: int) -> dict[str, Any]:
    """Every known user must get a vector; no drift check (a new model's vectors live in another space)."""
    expected = stages.state_user_ids(settings, as_of)
    return hourly.validate_vectors(
        settings, model, as_of, num_shards, expected_ids=expected, drift_against=None
    )


def publish_graph(settings, model: str, as_of: datetime) -> dict[str, Any]:
    return hourly.publish_graph(settings, model, as_of, expected_ids=stages.state_user_ids(settings, as_of))


def switch(settings, model: str, as_of: datetime, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Point readers at ``model`` (atomic), then write the backfill manifest."""
    with timed({"stage": "switch"}) as out:
        previous = stages.current_model(settings)
        stages.switch_current(settings, model)
        out.update({"previous": previous, "current": model})
    path = hourly.record(settings, as_of, as_of, model, [*results, out], dag=DAG_ID)
    log.info("current model switched %s -> %s (backfill as_of=%s)", previous, model, stamp(as_of))
    return {**out, "manifest": path}


def run_backfill(settings, model: str, as_of: datetime | None = None) -> dict[str, Any]:
    """Every backfill step in this process (the DAG runs the same functions as tasks)."""
    p = plan(settings, model, as_of)
    t = utc(p["as_of"])
    results = [encode(settings, model, t, i, p["num_shards"]) for i in p["shards"]]
    results.append(validate(settings, model, t, p["num_shards"]))  # judged before anything is published
    results.append(hourly.graph(settings, model, t))
    results += [hourly.publish(settings, model, t, i) for i in p["shards"]]
    results.append(publish_graph(settings, model, t))
    sw = switch(settings, model, t, results)
    return {
        "model": model,
        "as_of": p["as_of"],
        "previous": sw["previous"],
        "manifest": sw["manifest"],
        "users": sum(r.get("users", 0) for r in results if r["stage"] == "encode"),
    }
