"""Sequence pipeline: hourly incremental update vs full rebuild vs DuckDB, on the same Parquet log.

    python -m bench.sequences [--quick | --size full|dense] [--repeats R]

The synthetic log is generated once and kept under ``data/bench/sequences/<size>/`` so reruns do
not regenerate it. Sizes (`SIZES`): ``full`` (the target size: ~21M events, a week, 2M users, an
hour holding ~0.6 % of the events and ~1 % of the users), ``dense`` (~21.7M events, 48 hours, 200k
users who are all active every few hours: an hour holds 1.3 % of the events but 13 % of the users,
the worst case for an incremental update) and ``quick`` (~0.2M events). Then, in one run:

* **setup** (untimed): `rebuild_state` publishes the state (one base layer) as of ``CHAIN`` hours
  before the end;
* **the chain**: `update_sequences` for each of the last ``CHAIN`` hours in order, with the default
  compaction policy (validate via mapInArrow, dedup, merge into the layered state, write K active
  shards, the quarantine, and the state: a linked delta layer, or a compaction when due).
  ``incremental_s`` is the median hour of the chain (each hour holds ~1.3 % of the history);
  ``incremental_mean_s`` the mean, compactions included (the amortised cost);
* **compaction_s**: the last hour re-run with a forced compaction (a new base layer: what an hour
  costs when the policy says compact);
* **full_rebuild_s**: `rebuild_state` of the same as_of from the whole history (validate every
  event, dedup, last N per user, write the state); its content is checked equal to the state the
  chain ended with (count, events and a hash over every list);
* **duckdb_full_s**: the same last-N build in DuckDB SQL on the same Parquet files (contract
  filters in SQL, DISTINCT, row_number() <= N, ordered list() per user, COPY to Parquet), the peer
  a single-machine user would pick;
* **spark_core_full_s**: Spark doing exactly DuckDB's work (SQL filters instead of the Python
  validator), to separate the engine from the validator.

Ratios: ``incremental_vs_full`` = incremental / full rebuild (target <= 0.2; ``amortised_vs_full``
and ``compaction_vs_full`` beside it), ``spark_vs_duckdb`` =
Spark full rebuild / DuckDB (target <= 2.0). The machine is shared: compare ratios from one run.
"""

from __future__ import annotations

import shutil
import statistics
import time
from datetime import timedelta
from pathlib import Path

from bench.common import emit, machine, median_seconds, parse_args
from core.contracts import ATTRIBUTE_COLUMNS
from core.datasets.events import published_partitions
from core.datasets.synthetic import SyntheticConfig, generate, write_log
from core.layout import HOUR, utc
from soe.config import load_settings

ROOT = Path("data/bench/sequences")
SIZES = {  # name -> generator config
    "quick": SyntheticConfig(n_users=5_000, n_items=20_000, hours=24, base_events_per_user=40.0, seed=1),
    # the target size: a week of history, 2M known users, most of them active in a few hours of it
    # (an hour holds ~0.6 % of the events and ~1 % of the users), as on an ads/feed platform
    "full": SyntheticConfig(
        n_users=2_000_000, n_items=1_000_000, n_clusters=50, hours=168, base_events_per_user=10.0, seed=1
    ),
    # the worst case for an incremental update: 200k users who are all active every few hours
    # (an hour holds 1.3 % of the events but 13 % of the users, and the heaviest ones)
    "dense": SyntheticConfig(
        n_users=200_000, n_items=500_000, n_clusters=50, hours=48, base_events_per_user=105.0, seed=1
    ),
}
CHAIN = {"quick": 3, "full": 6, "dense": 6}  # hourly updates timed in a row, ending at the last hour
FIELDS = ("ts", "event_type", "item_id", *ATTRIBUTE_COLUMNS)


def ensure_log(settings, cfg: SyntheticConfig) -> int:
    """Generate and write the log once; returns its number of events."""
    layout = settings.layout()
    done = layout.ground_truth / "manifest.json"
    if done.is_file() and published_partitions(layout):
        import json

        return json.loads(done.read_text())["n_events"]
    shutil.rmtree(layout.root, ignore_errors=True)
    t0 = time.perf_counter()
    log = generate(cfg)
    write_log(log, layout)
    print(f"  generated {log.events.num_rows:,} events in {time.perf_counter() - t0:.1f}s -> {layout.root}")
    return log.events.num_rows


def duckdb_last_n(settings, as_of, out: Path, threads: int) -> None:
    import duckdb

    n = settings.sequences.max_len
    types = ", ".join(f"'{t}'" for t in settings.events.event_types)
    order = ", ".join(f"{c} NULLS FIRST" for c in FIELDS)
    desc = ", ".join(f"{c} DESC NULLS LAST" for c in FIELDS)
    lists = ", ".join(f"list({c} ORDER BY {order}) AS {c}" for c in FIELDS)
    glob = str(settings.layout().events / "dt=*" / "hour=*" / "*.parquet")
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"""
        COPY (
          WITH ev AS (
            SELECT DISTINCT user_id, ts, event_type, item_id, {", ".join(ATTRIBUTE_COLUMNS)}
            FROM read_parquet('{glob}')
            WHERE user_id IS NOT NULL AND user_id >= 0 AND ts IS NOT NULL AND item_id IS NOT NULL
              AND event_type IN ({types}) AND ts < TIMESTAMPTZ '{as_of.isoformat()}'
          ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY {desc}) AS rn FROM ev
          )
          SELECT user_id, TIMESTAMPTZ '{as_of.isoformat()}' AS as_of, count(*)::INTEGER AS n_events, {lists}
          FROM ranked WHERE rn <= {n} GROUP BY user_id
        ) TO '{out}' (FORMAT parquet)
    """)
    con.close()


def spark_core_last_n(spark, settings, as_of, out: Path) -> None:
    """DuckDB's exact work in Spark: SQL filters, distinct, last N per user, write."""
    from pyspark.sql import functions as F

    from pipelines import sequences as seq

    layout = settings.layout()
    df = spark.read.option("basePath", str(layout.events)).parquet(
        *[str(p) for p in published_partitions(layout)]
    )
    ok = (
        F.col("user_id").isNotNull()
        & (F.col("user_id") >= 0)
        & F.col("ts").isNotNull()
        & F.col("item_id").isNotNull()
        & F.col("event_type").isin(list(settings.events.event_types))
        & (F.col("ts") < F.lit(as_of).cast("timestamp"))
    )
    kept = df.where(ok).repartition("user_id").dropDuplicates(["user_id", *FIELDS])
    seq.build_state(kept, as_of, settings.sequences.max_len).write.mode("overwrite").parquet(str(out))


def fingerprint(path: Path) -> dict:
    """Users, events and an order-sensitive hash of every list: equal fingerprints, equal states."""
    import duckdb

    from core.sequence_state import read_state

    state = read_state(path).select(["user_id", "n_events", *FIELDS])  # noqa: F841 (scanned by DuckDB)
    cols = ", ".join(["user_id", "n_events", "ts::TIMESTAMP[]", *FIELDS[1:]])
    row = duckdb.sql(f"SELECT count(*), sum(n_events), sum(hash({cols}) % 1000000007) FROM state").fetchall()[
        0
    ]
    return {"users": int(row[0]), "events": int(row[1] or 0), "hash": int(row[2] or 0)}


def main() -> None:
    args = parse_args(
        "Spark sequence pipeline: incremental vs full rebuild vs DuckDB",
        lambda p: p.add_argument(
            "--size",
            choices=sorted(SIZES),
            default=None,
            help="data shape (default: full; quick with --quick)",
        ),
    )
    size = args.size or ("quick" if args.quick else "full")
    repeats = args.repeats or 1
    cfg = SIZES[size]
    root = (ROOT / size).resolve()
    env = {
        "SOE_DATA__ROOT": str(root),
        "SOE_SPARK__MASTER": "local[*]",
        "SOE_SPARK__DRIVER_MEMORY": "6g",
        "SOE_SPARK__SHUFFLE_PARTITIONS": "8" if size == "quick" else "16",
        "SOE_SEQUENCES__NUM_SHARDS": "4",
        "SOE_SEQUENCES__BOOTSTRAP_LOOKBACK_HOURS": str(cfg.hours),
    }
    settings = load_settings(environ=env)
    n_events = ensure_log(settings, cfg)
    layout = settings.layout()
    first = utc(cfg.start)
    as_of = first + timedelta(hours=cfg.hours)
    last_hour = as_of - HOUR
    work = root / "_bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    from pipelines.hourly import rebuild_state, update_sequences
    from pipelines.spark import spark_session

    t0 = time.perf_counter()
    spark = spark_session(settings.spark)
    spark_start_s = time.perf_counter() - t0
    for old in (layout.state_root, layout.active(as_of).parent, layout.quarantine(as_of).parent):
        shutil.rmtree(old, ignore_errors=True)
    chain = CHAIN[size]
    first_hour = as_of - chain * HOUR
    t0 = time.perf_counter()
    rebuild_state(
        settings.pipeline(), first_hour, lookback_hours=cfg.hours - chain, spark=spark
    )  # setup: the base
    setup_s = time.perf_counter() - t0

    runs: list[dict] = []
    for k in range(chain):
        start = first_hour + k * HOUR
        runs.append(update_sequences(settings.pipeline(), start, start + HOUR, spark=spark))
    hour_s = [r["seconds"] for r in runs]
    incremental_s, incremental_mean_s = statistics.median(hour_s), statistics.mean(hour_s)
    result = runs[-1]
    final_fp = fingerprint(layout.state(as_of))
    forced = load_settings(environ={**env, "SOE_SEQUENCES__COMPACT_MAX_LAYERS": "0"})
    compaction = update_sequences(
        forced.pipeline(), last_hour, as_of, spark=spark
    )  # same content, written as a base
    compaction_s = compaction["seconds"]
    full_rebuild_s, full_t = median_seconds(
        lambda: rebuild_state(
            settings.pipeline(), as_of, lookback_hours=cfg.hours, spark=spark, out=work / "full"
        ),
        repeats,
    )
    duckdb_s, duck_t = median_seconds(
        lambda: duckdb_last_n(settings, as_of, work / "duck.parquet", 2), repeats
    )
    core_s, core_t = (
        median_seconds(lambda: spark_core_last_n(spark, settings, as_of, work / "core"), repeats)
        if size != "quick"
        else (float("nan"), [])
    )  # quick: skipped to stay within 2 minutes

    inc_fp, full_fp, compacted_fp = final_fp, fingerprint(work / "full"), fingerprint(layout.state(as_of))
    import duckdb

    duck_users, duck_events = duckdb.sql(
        f"SELECT count(*), sum(n_events) FROM '{work / 'duck.parquet'}'"
    ).fetchall()[0]
    hour_events = result["valid_events"] + result["quarantined"]
    emit(
        {
            "bench": "sequences",
            "size": size,
            "events": n_events,
            "users": cfg.n_users,
            "hours": cfg.hours,
            "max_len": settings.sequences.max_len,
            "hour_events": hour_events,
            "hour_share": round(hour_events / max(1, n_events), 4),
            "active_users": result["active_users"],
            "state_users": result["state_users"],
            "incremental_s": round(incremental_s, 2),
            "full_rebuild_s": round(full_rebuild_s, 2),
            "incremental_vs_full": round(incremental_s / full_rebuild_s, 3),
            "incremental_mean_s": round(incremental_mean_s, 2),
            "amortised_vs_full": round(incremental_mean_s / full_rebuild_s, 3),
            "compaction_s": round(compaction_s, 2),
            "compaction_vs_full": round(compaction_s / full_rebuild_s, 3),
            "chain": [
                {
                    "as_of": r["as_of"],
                    "seconds": r["seconds"],
                    "active_users": r["active_users"],
                    "valid_events": r["valid_events"],
                    "compacted": r["compacted"],
                    "state_layers": r["state_layers"],
                    "phases": r["phase_seconds"],
                }
                for r in runs
            ],
            "duckdb_full_s": round(duckdb_s, 2),
            "spark_vs_duckdb": round(full_rebuild_s / duckdb_s, 3),
            "spark_core_full_s": None if core_s != core_s else round(core_s, 2),
            "spark_core_vs_duckdb": None if core_s != core_s else round(core_s / duckdb_s, 3),
            "incremental_phases": result.get("phase_seconds"),
            "events_per_s": round(n_events / full_rebuild_s),
            "incremental_events_per_s": round(hour_events / incremental_s),
            "states_equal": inc_fp == full_fp == compacted_fp,
            "duckdb_equal_counts": (duck_users, duck_events) == (full_fp["users"], full_fp["events"]),
            "fingerprint": full_fp,
            "setup_rebuild_s": round(setup_s, 2),
            "spark_start_s": round(spark_start_s, 2),
            "timings": {"incremental": hour_s, "full": full_t, "duckdb": duck_t, "spark_core": core_t},
            "targets": {"incremental_vs_full": 0.2, "spark_vs_duckdb": 2.0, "min_events_full": 20_000_000},
            "machine": machine(),
        }
    )
    spark.stop()


if __name__ == "__main__":
    main()
