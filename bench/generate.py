"""Synthetic event generation speed: `python -m bench.generate [--quick]`.

Times generation alone and generation + writing hour-partitioned Parquet, against a naive baseline
measured in the same run: a row-by-row Python generator writing the same columns with the same
Parquet writer (timed on 200k events). Target: >= 1M events/s end to end on this machine.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from datetime import UTC
from pathlib import Path

from bench.common import emit, machine, median_seconds, parse_args
from core.datasets.synthetic import SyntheticConfig, generate, write_log
from core.layout import Layout


def naive_events_per_s(out: Path, n_events: int = 200_000) -> float:
    """Row-by-row Python, end to end: what a first, loop-based generator would do.

    Same columns and the same Parquet writer; popularity sampled by bisect, interests and funnel
    by per-event branches. Timed on ``n_events`` events.
    """
    import bisect
    from datetime import datetime, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.contracts import EVENT

    rng = random.Random(0)
    n_items, n_clusters = 200_000, 50
    cum, acc = [], 0.0
    for r in range(n_items):
        acc += 1.0 / (r + 1) ** 1.05
        cum.append(acc)
    t0 = time.perf_counter()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    while len(rows) < n_events:
        user = rng.randrange(400_000)
        interests = {user % n_clusters, (user * 7) % n_clusters}
        item = bisect.bisect(cum, rng.random() * acc)
        ts = start + timedelta(seconds=rng.randrange(86_400))
        row = {
            "user_id": user,
            "ts": ts,
            "event_type": "impression",
            "item_id": item,
            "category_id": item % 250,
            "advertiser_id": item % 5000,
            "campaign_id": item % 20000,
            "device": "ios",
            "country": "US",
        }
        rows.append(row)
        if rng.random() < (0.06 if item % n_clusters in interests else 0.008):
            rows.append({**row, "event_type": "click", "ts": ts + timedelta(seconds=5)})
    rows.sort(key=lambda r: r["ts"].hour)
    table = pa.Table.from_pylist(rows, schema=EVENT.schema)
    for hour in range(24):
        part = table.filter(pa.compute.equal(pa.compute.hour(table["ts"]), hour))
        (out / f"hour={hour:02d}").mkdir(parents=True, exist_ok=True)
        pq.write_table(part, out / f"hour={hour:02d}" / "part-00000.parquet")
    return len(rows) / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    users = 100_000 if args.quick else 400_000
    repeats = args.repeats or 3
    cfg = SyntheticConfig(n_users=users, n_items=200_000, n_clusters=50, hours=24, seed=1)
    n_events = generate(cfg).events.num_rows  # warm-up, and the size
    gen_s, _ = median_seconds(lambda: generate(cfg), repeats)

    tmp = Path(tempfile.mkdtemp(prefix="soe-bench-gen-"))

    def generate_and_write() -> None:
        shutil.rmtree(tmp / "data", ignore_errors=True)
        write_log(generate(cfg), Layout(tmp / "data"))

    total_s, _ = median_seconds(generate_and_write, repeats)
    naive = naive_events_per_s(tmp / "naive")
    shutil.rmtree(tmp, ignore_errors=True)
    emit(
        {
            "bench": "generate",
            "machine": machine(),
            "quick": args.quick,
            "events": n_events,
            "generate_s": round(gen_s, 3),
            "generate_and_write_s": round(total_s, 3),
            "events_per_s": round(n_events / total_s),
            "generate_only_events_per_s": round(n_events / gen_s),
            "naive_events_per_s": round(naive),
            "speedup_vs_naive": round(n_events / total_s / naive, 1),
        }
    )


if __name__ == "__main__":
    main()
