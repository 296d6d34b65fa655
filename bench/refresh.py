"""One hourly refresh end to end at scale: per-stage seconds, and Airflow's overhead on the same hour.

    python -m bench.refresh [--quick] [--users U] [--no-airflow]

The world: a synthetic log of U users over one hour (so every user is active in the measured
interval, ~10 events each), a randomly initialised encoder (d = 64, 2 layers, 2 heads: the weights
do not change the work), a local redis-server on a free port, Spark ``local[*]``, faiss-cpu.

* **in-process** (the baseline): `soe.flows.hourly.run_interval`, what `soe refresh` runs:
  sequences (Spark, bootstrap of the first state) -> encode every shard -> publish every shard ->
  graph -> validate -> record -> retention. Per-stage seconds come from the run manifest.
* **airflow**: the same interval again through ``airflow dags test soe_hourly`` (an idempotent rerun:
  the same work, except that Redis accepts 0 vectors). ``airflow_over_inprocess`` = its wall time /
  the in-process wall time: what the Airflow launcher costs (process start, DAG parse, one task per
  step, Spark/torch start in the task process).

Goal (issue 9): 1M active users in <= 15 min on this machine (``goal_met``). The machine is shared
with other work: quote medians and ratios from one run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import emit, machine, parse_args

GOAL_S = 15 * 60
STAGES = ("sequences", "encode", "publish", "graph", "validate", "retention")


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


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        extra=lambda p: (
            p.add_argument("--users", type=int, default=None),
            p.add_argument("--no-airflow", action="store_true", help="skip the airflow dags test rerun"),
        ),
    )
    users = args.users or (10_000 if args.quick else 1_000_000)

    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from core.layout import HOUR, utc
    from soe.config import load_settings
    from soe.flows import hourly
    from soe.flows.airflow_run import AirflowHome
    from soe.flows.checks import GenerationRejected
    from soe.flows.manifest import read_manifest
    from store import local_server

    work = Path(tempfile.mkdtemp(prefix="soe-bench-refresh-"))
    server = local_server.start_single(work / "redis")
    try:
        s = load_settings(environ={"SOE_DATA__ROOT": str(work / "data")})
        s.redis = server.redis_settings(buckets=max(64, users // 64))
        s.orchestration.min_drift_cosine = -1.0  # a first hour has no previous generation anyway
        start = utc("2026-01-01T00:00Z")
        t0 = time.perf_counter()
        log = generate(
            SyntheticConfig(
                n_users=users,
                n_items=max(10_000, users // 5),
                n_clusters=50,
                hours=1,
                start=str(start),
                base_events_per_user=8.0,
                seed=0,
            )
        )
        write_log(log, s.layout())
        gen_s = time.perf_counter() - t0
        n_events = log.manifest["n_events"]
        del log
        model = random_model(s)
        print(f"{users} users, {n_events} events generated in {gen_s:.1f}s; model {model}", flush=True)

        seen: dict[str, dict] = {}  # stage -> summed result (per-shard stages add up)

        def on_stage(r: dict) -> None:
            print(f"  {r['stage']:<10} {r.get('seconds', 0):8.2f} s", flush=True)
            acc = seen.setdefault(r["stage"], {"seconds": 0.0, "users": 0})
            acc["seconds"] += r.get("seconds") or 0.0
            acc["users"] += r.get("users", 0) if isinstance(r.get("users"), int) else 0
            acc.update({k: v for k, v in r.items() if k in ("recall_at_k", "mode", "active_users")})

        t0 = time.perf_counter()
        rejected = None
        try:
            hourly.run_interval(s, start, start + HOUR, model=model, on_stage=on_stage)
        except (
            GenerationRejected
        ) as exc:  # still a measurement: every stage ran, the hour was not marked done
            rejected = str(exc)
        inproc_s = time.perf_counter() - t0
        result = {
            "bench": "refresh",
            "quick": args.quick,
            "users": users,
            "events": n_events,
            "active_users": seen["sequences"].get("active_users"),
            "encoded": seen["encode"]["users"],
            "total_s": round(inproc_s, 2),
            "goal_s": GOAL_S,
            "goal_met": inproc_s <= GOAL_S,
            **{f"{k}_s": round(seen[k]["seconds"], 2) if k in seen else None for k in STAGES},
            "graph_recall": seen["graph"].get("recall_at_k"),
            "graph_mode": seen["graph"].get("mode"),
            "validated": rejected is None,
            "rejected": rejected,
            "users_per_s": round(users / inproc_s, 1),
            "generate_s": round(gen_s, 2),
            "machine": machine(),
        }
        if not args.no_airflow and rejected is None:
            home = AirflowHome(work / "airflow", s)
            result["airflow_migrate_s"] = home.migrate()
            r = home.dags_test("soe_hourly", start + HOUR, conf={"model": model})
            if not r.ok:
                raise RuntimeError(f"airflow dags test failed:\n{r.tail()}")
            result["airflow_total_s"] = r.seconds
            result["airflow_over_inprocess"] = round(r.seconds / inproc_s, 3)
            rerun = read_manifest(s.layout(), "soe_hourly", start + HOUR)["stages"]
            result["airflow_stage_s"] = {
                k: rerun.get(k, {}).get("seconds") for k in STAGES if k != "retention"
            }
            result["airflow_rerun_written"] = rerun["publish"].get("written")
        emit(result)
    finally:
        local_server.stop(work / "redis")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
