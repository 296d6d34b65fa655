"""One hourly refresh at production shape: N known users, a share of them active in the hour.

    python -m bench.refresh [--quick | --size default|all-active] [--known N [--active M]]
                            [--hours H] [--data-dir DIR] [--airflow]

Sizes (known users / active in the hour): ``--quick`` 100k / 10k; the default 10M / 1M;
``--size all-active`` 1M / 1M (every known user active: the graph is rebuilt in full).
``--known N`` (active 10 % unless ``--active``) gives the points of the scaling table. ``--hours H``
runs H hours in a row (another draw of active users each; the first is the headline, the others are
summarised in ``later_hours``).

The world (`bench.world`, built once and cached under ``--data-dir``, keyed by every parameter): a
model trained on the same synthetic catalogue, every known user's history as the state snapshot, the
previous generation of vectors, the full graph and the Redis store holding every known user (the
production backfill made them), and the hour's events of the active users. A run checks out its
own copy (hard links + Redis loaded from the saved RDB) and pays only for the hour:

    `soe.flows.hourly.run_interval` (what ``soe refresh`` runs): sequences (Spark, the state's layers
    fetched for the active users) -> reconcile -> encode every shard -> validate -> graph (incremental
    on the previous one) -> publish -> publish_graph -> record -> retention.

Per stage: wall seconds (run manifest), core-seconds and peak RSS of this process tree with Spark's
JVM (`bench.common.StageMeter`; the redis-server is measured apart, ``redis_used_mb``). Baselines from
the same world: the setup's backfill of every known user (what the hour would cost without the state
and the incremental graph), and with ``--airflow`` the same hour rerun through ``airflow dags test``.

Targets (issue 14; 2-core machine, quiet): default size ``validated``, ``graph_recall`` >= 0.95 and
``total_s`` <= 900; all-active ``validated`` and ``total_s`` <= 600.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import StageMeter, emit, machine, parse_args

STAGES = ("sequences", "reconcile", "encode", "validate", "graph", "publish", "publish_graph", "retention")
# what the graph stage reports beside its seconds
GRAPH_DETAIL = (
    "recall_at_k",
    "mode",
    "full_reason",
    "index_s",
    "exact_s",
    "exact_carried",
    "exact_searched",
    "calibrate_s",
    "search_s",
    "forward_search_s",
    "repair_s",
    "n_touched",
    "n_researched",
    "n_thinned",
    "mean_entries",
    "n_repaired",
    "users",
    "search_knob",
    "reverse_search_s",
    "reverse_method",
    "reverse_queries",
    "reverse_found",
)
TARGET_S = {"default": 900, "all-active": 600}
MIN_RECALL = 0.95


def random_model(
    settings, *, seed: int = 0, d_model: int = 64, n_layers: int = 2, label: str = "bench.refresh"
) -> str:
    """Publish a randomly initialised encoder artifact (a benchmark of throughput, not of quality);
    two seeds are two distinct models."""
    import torch

    from encoder.artifact import save_model
    from encoder.model import ModelConfig, UserEncoder

    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=2,
        max_len=settings.sequences.max_len,
        actions=tuple(settings.events.event_types),
    )
    return save_model(
        settings.layout(),
        UserEncoder(cfg).eval(),
        cfg,
        train_window={"bench": f"random init, seed {seed}" if seed else "random init"},
        metrics={},
        card=f"{label}: random weights",
    )


def respare(data: Path, model: str, say=print) -> float | None:
    """With ``graph.spare_neighbours`` (``SOE_GRAPH__SPARE_NEIGHBOURS``) other than the world's previous
    graph's: rebuild that graph in full with it, before the measured hour (lists not published: the
    store's top k are the backfill's), so the hour updates lists of the width it would in steady state
    rather than the first hour after the setting changed. Its seconds, or None when nothing was done."""
    from bench.world import T0, settings_for
    from store.graph.build import build_graph
    from store.graph.snapshot import latest_snapshot

    s = settings_for(data)
    prev = latest_snapshot(s.layout(), model)
    if prev is None or prev.spare == s.graph.spare_neighbours:
        return None
    t0 = time.perf_counter()
    shutil.rmtree(prev.path)
    build_graph(s.graph, s.redis, s.layout(), model, T0, incremental=False, publish_redis=False)
    seconds = round(time.perf_counter() - t0, 1)
    say(f"previous graph rebuilt with spare_neighbours={s.graph.spare_neighbours} ({seconds} s)")
    return seconds


def add_exact_sample(data: Path, model: str, say=print) -> float | None:
    """A world whose previous graph predates the samples' exact lists (store.graph.exact_sample) gets
    them written into that snapshot once (the cached world keeps them), so the measured hour carries
    them as every hour after the first does. Its seconds, or None when nothing was done."""
    from bench.world import settings_for
    from store.graph.build import sample_key
    from store.graph.exact_sample import fresh_exact
    from store.graph.snapshot import latest_snapshot

    s = settings_for(data)
    prev = latest_snapshot(s.layout(), model)
    key = sample_key(s.graph)
    have = prev.exact_sample() if prev is not None else None
    if prev is None or (have is not None and have.key == key):
        return None
    t0 = time.perf_counter()
    fresh_exact(prev.vectors, key).save(prev.path)
    seconds = round(time.perf_counter() - t0, 1)
    say(f"previous graph given its exact sample lists ({seconds} s, once per world)")
    return seconds


def run_hour(world, work: Path, say=print, hours: int = 1) -> dict:
    """The measured hour on a checkout of ``world``: per-stage seconds, core-seconds and peak RSS.
    With ``hours`` > 1 the hours after it run in a row on the same data and Redis (``later_hours``:
    each one's summary), as an hourly deployment runs them."""
    from bench.world import T0, settings_for
    from core.layout import HOUR
    from store import local_server

    exact_added_s = add_exact_sample(world.data, world.model, say)
    data = world.checkout(work, hours)
    respared_s = respare(data, world.model, say)
    t0 = time.perf_counter()
    server = world.start_redis(work)
    load_s = time.perf_counter() - t0
    meter = StageMeter(exclude=tuple(server.pids))
    try:
        s = settings_for(data, server, world.shape.known_users)
        measured = []
        for h in range(hours):
            if h:
                say(f"hour {h}")
            measured.append(measure_hour(s, world.model, T0 + h * HOUR, meter, say))
        redis_mb = server.client().info("memory")["used_memory"] / 2**20
    finally:
        meter.close()
        local_server.stop(work / "redis")
    first = measured[0]
    return {
        **first,
        "later_hours": [later_summary(m) for m in measured[1:]] if hours > 1 else None,
        "redis_load_s": round(load_s, 2),
        "previous_graph_rebuilt_s": respared_s,
        "previous_exact_sample_added_s": exact_added_s,
        "redis_used_mb": round(redis_mb, 1),
        "settings": s,
    }


def measure_hour(s, model: str, start, meter: StageMeter, say=print) -> dict:
    """One hour ``[start, start + 1h)`` through `run_interval`, each stage metered."""
    from core.layout import HOUR
    from soe.flows import hourly
    from soe.flows.checks import GenerationRejected

    per_stage: dict[str, dict] = {}

    def on_stage(r: dict) -> None:
        use = meter.mark()
        acc = per_stage.setdefault(r["stage"], {"seconds": 0.0, "core_s": 0.0, "peak_rss_mb": 0.0})
        acc["seconds"] = round(acc["seconds"] + (r.get("seconds") or 0.0), 2)
        acc["core_s"] = round(acc["core_s"] + use["core_s"], 2)
        acc["peak_rss_mb"] = max(acc["peak_rss_mb"], use["peak_rss_mb"])
        acc.update({k: r[k] for k in GRAPH_DETAIL + ("active_users", "phase_seconds") if k in r})
        say(
            f"  {r['stage']:<14} {r.get('seconds') or 0:8.2f} s  {use['core_s']:8.1f} core-s"
            f"  {use['peak_rss_mb']:8.0f} MB"
        )

    meter.mark()  # the hour starts here (not at the previous hour's last stage)
    t0 = time.perf_counter()
    rejected = None
    try:
        hourly.run_interval(s, start, start + HOUR, model=model, on_stage=on_stage)
    except GenerationRejected as exc:  # still a measurement: every stage ran, the hour is not done
        rejected = str(exc)
    total_s = time.perf_counter() - t0
    graph = per_stage.get("graph", {})
    return {
        "total_s": round(total_s, 2),
        "validated": rejected is None,
        "rejected": rejected,
        "active_users": per_stage.get("sequences", {}).get("active_users"),
        "graph_recall": graph.get("recall_at_k"),
        "graph_mode": graph.get("mode"),
        "graph_full_reason": graph.get("full_reason"),
        "graph_detail": {k: graph[k] for k in GRAPH_DETAIL if k in graph},
        "sequences_phases": per_stage.get("sequences", {}).get("phase_seconds"),  # pipelines.hourly
        "stages": per_stage,
    }


def later_summary(m: dict) -> dict:
    """What a later hour reports: its total, validation, recall and stage seconds."""
    keep = ("total_s", "validated", "rejected", "active_users", "graph_recall", "graph_mode", "graph_detail")
    return {
        **{k: m[k] for k in keep},
        **{f"{k}_s": m["stages"][k]["seconds"] for k in STAGES if k in m["stages"]},
    }


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        extra=lambda p: (
            p.add_argument("--size", choices=("default", "all-active"), default="default"),
            p.add_argument("--known", type=int, default=None, help="known users (scaling points)"),
            p.add_argument("--active", type=int, default=None, help="active users (default: 10 %% of known)"),
            p.add_argument("--data-dir", type=Path, default=Path("data/bench"), help="the world cache"),
            p.add_argument("--airflow", action="store_true", help="rerun the hour through airflow dags test"),
            p.add_argument("--hours", type=int, default=1, help="hours in a row (the first is the headline)"),
        ),
    )
    from bench.world import T0, prepare_world, shape_for
    from core.layout import HOUR

    size = "quick" if args.quick else args.size
    shape = shape_for(size, args.known, args.active)
    t0 = time.perf_counter()
    world = prepare_world(shape, args.data_dir)
    setup_s = time.perf_counter() - t0
    print(f"world {shape.label} ready in {setup_s:.1f} s (cached: {world.root})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="soe-bench-refresh-", dir=world.root.parent))
    try:
        hour = run_hour(world, work, hours=args.hours)
        settings = hour.pop("settings")
        stages = hour.pop("stages")
        target = TARGET_S.get(size) if args.known is None and args.active is None else None
        result = {
            "bench": "refresh",
            "size": size,
            "known_users": shape.known_users,
            "active_users_planned": shape.active_users,
            **hour,
            "hour_events": world.hour_events,
            "target_s": target,
            "targets_met": bool(
                hour["validated"]
                and (hour["graph_recall"] or 0) >= MIN_RECALL
                and (target is None or hour["total_s"] <= target)
            ),
            **{f"{k}_s": stages[k]["seconds"] for k in STAGES if k in stages},
            **{f"{k}_core_s": stages[k]["core_s"] for k in STAGES if k in stages},
            **{f"{k}_peak_rss_mb": stages[k]["peak_rss_mb"] for k in STAGES if k in stages},
            "peak_rss_mb": max(v["peak_rss_mb"] for v in stages.values()),
            "baseline_backfill_s": world.info.get("backfill_s"),
            "baseline_backfill_users": world.info.get("state_users"),
            "hour_over_backfill": round(hour["total_s"] / world.info["backfill_s"], 3)
            if world.info.get("backfill_s")
            else None,
            "setup_s": round(setup_s, 1),
            "model": world.model,
            "world": str(world.root),
            "machine": machine(),
        }
        if args.airflow and hour["validated"]:
            from soe.flows.airflow_run import AirflowHome
            from store import local_server

            server = world.start_redis(work / "airflow-run")
            try:
                from bench.world import settings_for

                s = settings_for(settings.layout().root, server, shape.known_users)
                home = AirflowHome(work / "airflow", s)
                result["airflow_migrate_s"] = home.migrate()
                r = home.dags_test("soe_hourly", T0 + HOUR, conf={"model": world.model})
                if not r.ok:
                    raise RuntimeError(f"airflow dags test failed:\n{r.tail()}")
                result["airflow_total_s"] = r.seconds
                result["airflow_over_inprocess"] = round(r.seconds / hour["total_s"], 3)
            finally:
                local_server.stop(work / "airflow-run" / "redis")
        emit(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
