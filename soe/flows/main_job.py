"""The main job: the README's first command, end to end on the embedded defaults.

    scripts/main_job.sh        (= python -m soe.flows.main_job [--users N --hours H --runs R])

1. start a local redis-server on a free port (store.local_server), under ``<root>/redis``;
2. generate a demo event log (synthetic, planted interest clusters) unless one is published;
3. if Redis has no current model: build the sequences of the first hours, train a small model,
   promote and backfill it (the training flow; a model already on disk is only backfilled);
4. run the hourly DAG with ``airflow dags test`` for ``--runs`` consecutive hours;
5. print a readable summary: per-stage seconds of every hour, users encoded, vectors in Redis,
   graph recall, one sample lookup and one sample lookalike audience (scored against the
   generator's planted clusters).

Demo scale is a `DemoConfig` (users, hours, a small model) applied on top of the loaded Settings.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets.events import published_partitions
from core.datasets.synthetic import SyntheticConfig, generate, write_log
from core.layout import HOUR, stamp, utc
from soe.config import load_settings
from soe.flows import backfill, hourly, stages, training
from soe.flows.airflow_run import AirflowHome
from soe.flows.manifest import read_manifest
from store import local_server

log = logging.getLogger("soe.main_job")


@dataclass
class DemoConfig:
    users: int = 3000  # users in the synthetic log
    items: int = 20_000  # items in the catalogue
    clusters: int = 10  # planted interest clusters
    bootstrap_hours: int = 24  # history before the first hourly run (the first state and the trainset)
    runs: int = 3  # consecutive hourly runs through `airflow dags test`
    start: str = "2026-01-01T00:00:00Z"  # first hour of the log
    epochs: int = 4  # training epochs of the small demo model
    train_budget_s: float = 120.0  # stop training after this long (the machine may be busy)
    d_model: int = 64  # width of the demo model
    num_shards: int = 2  # K: active-user shards (mapped encode tasks) per hour
    airflow: bool = True  # False: run the hours with `soe refresh` logic in-process instead
    seed: int = 0  # generator seed

    @property
    def first_as_of(self) -> datetime:
        return utc(self.start) + HOUR * self.bootstrap_hours


def apply_demo(settings, demo: DemoConfig):
    """Demo-scale knobs on top of the loaded Settings (a copy; the caller's object is untouched)."""
    s = settings.model_copy(deep=True)
    s.train.epochs = demo.epochs
    s.train.time_budget_s = demo.train_budget_s
    s.train.model = {"d_model": demo.d_model, "n_layers": 2, "n_heads": 2, **s.train.model_overrides()}
    s.sequences.num_shards = demo.num_shards
    s.sequences.bootstrap_lookback_hours = max(s.sequences.bootstrap_lookback_hours, demo.bootstrap_hours)
    s.spark.shuffle_partitions = min(s.spark.shuffle_partitions, 4)
    s.redis.buckets = min(s.redis.buckets, 256)
    return s


def ensure_redis(settings, work_dir: Path) -> local_server.LocalRedis | None:
    """Use the configured Redis when it answers; else start a persistent one on the configured port.

    Returns the server this run started (to stop at the end), or None when it uses one it found: a
    server the user started (`soe redis start`) is never stopped, and a started one keeps its data
    (append-only file under ``work_dir``), so the next demo run finds the vectors and the model again.
    """
    r = settings.redis
    if r.mode == "memory" or local_server.ping(r.host, r.port):
        print(f"redis: using the configured server {r.host}:{r.port} ({r.mode})", flush=True)
        return None
    if r.mode != "single" or r.host not in ("127.0.0.1", "localhost"):
        raise ConnectionError(
            f"the configured Redis {r.host}:{r.port} ({r.mode}) does not answer; start it first"
        )
    server = local_server.start_single(work_dir, port=r.port, persist=True)
    settings.redis = server.redis_settings(buckets=r.buckets, namespace=r.namespace)
    print(f"redis: started a local server on port {r.port} (data kept in {work_dir})", flush=True)
    return server


def ensure_events(settings, demo: DemoConfig) -> dict[str, Any]:
    layout = settings.layout()
    parts = published_partitions(layout)
    if parts:
        return {"generated": False, "partitions": len(parts)}
    cfg = SyntheticConfig(
        n_users=demo.users,
        n_items=demo.items,
        n_clusters=demo.clusters,
        hours=demo.bootstrap_hours + demo.runs,
        start=demo.start,
        seed=demo.seed,
    )
    generated = generate(cfg)
    write_log(generated, layout)
    return {
        "generated": True,
        "partitions": demo.bootstrap_hours + demo.runs,
        "events": generated.manifest["n_events"],
    }


def ensure_model(settings, demo: DemoConfig) -> dict[str, Any]:
    """A current model in Redis: reuse it, backfill the newest one on disk, or train one."""
    current = stages.current_model(settings)
    if current:
        return {"model": current, "action": "reused the current model"}
    t0 = time.perf_counter()
    as_of = demo.first_as_of
    if not settings.layout().state(as_of).exists():
        hourly.sequences(settings, as_of - HOUR, as_of)  # bootstrap: the state from the history
    models = stages.list_models(settings)
    if models:
        backfill.run_backfill(settings, models[0]["version"], as_of)
        return {
            "model": models[0]["version"],
            "action": "backfilled the newest model on disk",
            "seconds": round(time.perf_counter() - t0, 1),
        }
    out = training.run_training(settings, as_of)
    if not out["promote"]:
        raise RuntimeError(f"the demo model was not promoted: {out['reason']}")
    return {
        "model": out["model"],
        "action": "trained, promoted and backfilled a small model",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_hours(settings, demo: DemoConfig, work: Path) -> list[dict[str, Any]]:
    as_ofs = [demo.first_as_of + HOUR * (i + 1) for i in range(demo.runs)]
    out = []
    if not demo.airflow:
        for t in as_ofs:
            t0 = time.perf_counter()
            hourly.run_interval(settings, t - HOUR, t)
            out.append({"as_of": stamp(t), "state": "success", "seconds": round(time.perf_counter() - t0, 1)})
        return out
    home = AirflowHome(work / "airflow", settings)
    migrate_s = home.migrate()
    for t in as_ofs:
        r = home.dags_test("soe_hourly", t)
        out.append(
            {
                "as_of": stamp(t),
                "state": r.state,
                "seconds": r.seconds,
                "log": str(r.log),
                "migrate_s": migrate_s,
            }
        )
        if not r.ok:
            raise RuntimeError(
                f"airflow dags test soe_hourly {r.logical_date} ended {r.state}; log {r.log}:\n{r.tail()}"
            )
    return out


def summary(settings, demo: DemoConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    layout = settings.layout()
    model = stages.current_model(settings)
    rows = []
    for r in runs:
        m = read_manifest(layout, "soe_hourly", utc(r["as_of"])) or {}
        st = m.get("stages", {})
        rows.append(
            {
                "as_of": r["as_of"],
                "airflow_s": r["seconds"],
                **{
                    k: st.get(k, {}).get("seconds")
                    for k in ("sequences", "encode", "publish", "graph", "validate")
                },
                "active": st.get("sequences", {}).get("active_users"),
                "encoded": st.get("encode", {}).get("users"),
                "recall": st.get("graph", {}).get("recall_at_k"),
            }
        )
    last = utc(runs[-1]["as_of"])
    known = stages.state_user_ids(settings, stages.newest_state(settings, last))
    in_redis = stages.vectors_found(settings, model, known)
    sample = int(stages.active_user_ids(settings, last)[0])
    current, vec, found = stages.lookup(settings, [sample])
    nbrs = stages.neighbours(settings, model, [sample])[0]
    out = {
        "model": current,
        "hours": rows,
        "known_users": int(len(known)),
        "vectors_in_redis": in_redis,
        "lookup": {
            "user_id": sample,
            "found": bool(found[0]),
            "dim": int(vec.shape[1]),
            "vector_head": [round(float(x), 3) for x in vec[0][:6]],
            "neighbours": [] if nbrs is None else [int(x) for x in nbrs[0][:5]],
        },
    }
    out["lookalike"] = sample_lookalike(settings, model)
    return out


def sample_lookalike(settings, model: str, n_seeds: int = 20, size: int = 100) -> dict[str, Any]:
    """Seeds from one planted cluster; the audience's precision = share of it in that cluster."""
    import pyarrow.parquet as pq

    truth_path = settings.layout().ground_truth / "users.parquet"
    if not truth_path.is_file():
        return {"skipped": "no planted ground truth (not a synthetic log)"}
    truth = pq.read_table(truth_path, columns=["user_id", "primary_cluster"])
    uid, cluster = truth["user_id"].to_numpy(), truth["primary_cluster"].to_numpy()
    c = int(np.bincount(cluster).argmax())
    seeds = uid[cluster == c][:n_seeds]
    audience, _ = stages.lookalike(settings, model, seeds, size)
    same = np.isin(audience, uid[cluster == c]).mean() if len(audience) else 0.0
    return {
        "cluster": c,
        "seeds": int(len(seeds)),
        "audience": int(len(audience)),
        "top": [int(x) for x in audience[:5]],
        "precision_same_cluster": round(float(same), 3),
        "cluster_share_of_users": round(float((cluster == c).mean()), 3),
    }


def print_summary(out: dict[str, Any], timings: dict[str, float]) -> None:
    p = print
    p("\n=== SoE main job: summary ===")
    p(f"model: {out['model']}")
    for k, v in timings.items():
        p(f"  {k:<28} {v:8.1f} s")
    p("\nhourly runs (airflow dags test soe_hourly), seconds per stage:")
    cols = [
        "as_of",
        "airflow_s",
        "sequences",
        "encode",
        "publish",
        "graph",
        "validate",
        "active",
        "encoded",
        "recall",
    ]
    p("  " + " ".join(f"{c:>10}" for c in cols))
    for r in out["hours"]:
        p(
            "  "
            + " ".join(
                f"{(r.get(c) if r.get(c) is not None else '-'):>10}"
                if not isinstance(r.get(c), float)
                else f"{r[c]:>10.2f}"
                for c in cols
            )
        )
    p(
        f"\nusers known: {out['known_users']}, "
        f"vectors of the current model in Redis: {out['vectors_in_redis']}"
    )
    lk = out["lookup"]
    p(
        f"lookup user {lk['user_id']}: found={lk['found']} dim={lk['dim']} vector[:6]={lk['vector_head']} "
        f"neighbours[:5]={lk['neighbours']}"
    )
    la = out["lookalike"]
    if "skipped" in la:
        p(f"lookalike: {la['skipped']}")
    else:
        p(
            f"lookalike of {la['seeds']} seeds from planted cluster {la['cluster']}: "
            f"{la['audience']} users, top {la['top']}, "
            f"{la['precision_same_cluster']:.0%} in the seeds' cluster "
            f"(cluster is {la['cluster_share_of_users']:.0%} of users)"
        )


def main(argv: list[str] | None = None) -> int:
    d = DemoConfig()
    ap = argparse.ArgumentParser(
        description="SoE main job: local Redis, demo events, a model, hourly DAG runs, summary"
    )
    ap.add_argument("--users", type=int, default=d.users)
    ap.add_argument("--runs", type=int, default=d.runs, help="consecutive hourly DAG runs")
    ap.add_argument("--bootstrap-hours", type=int, default=d.bootstrap_hours)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument(
        "--no-airflow", action="store_true", help="run the hours in-process (soe refresh) instead"
    )
    ap.add_argument(
        "--keep-redis", action="store_true", help="leave the local redis-server running at the end"
    )
    args = ap.parse_args(argv)
    demo = DemoConfig(
        users=args.users,
        runs=args.runs,
        bootstrap_hours=args.bootstrap_hours,
        epochs=args.epochs,
        airflow=not args.no_airflow,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below (stop redis) on kill
    settings = apply_demo(load_settings(), demo)
    root = Path(settings.data.root).resolve()
    settings.data.root = root
    print(f"SoE main job: data root {root}; demo {asdict(demo)}", flush=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    started = ensure_redis(settings, root / "redis")
    timings["start redis"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        print(f"events: {ensure_events(settings, demo)}", flush=True)
        timings["generate events"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        print(f"model: {ensure_model(settings, demo)}", flush=True)
        timings["bootstrap + train + backfill"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = run_hours(settings, demo, root)
        timings[f"{len(runs)} hourly DAG runs"] = time.perf_counter() - t0
        out = summary(settings, demo, runs)
        timings["total"] = time.perf_counter() - t_all
        print_summary(out, timings)
    finally:
        if (
            started is not None and not args.keep_redis
        ):  # only a server this run started; its data stays on disk
            local_server.stop(started.work_dir)
        elif started is not None:
            print(f"redis left running on port {started.ports[0]} (stop: soe redis stop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
