"""The hourly sequence update: validate the new events, merge them into the state, shard the active users.

One run covers the data interval [start, end) and writes three directories for ``as_of = end``,
each published atomically with a ``_SUCCESS`` manifest (soe.atomic), in this order:

1. ``quarantine(as_of)``: every rejected row as it arrived, with its reason (QUARANTINE_SCHEMA);
2. ``state(as_of)``: one row per known user, the last N events (sequence contract);
3. ``active(as_of)``: the users with >= 1 new valid event, as K balanced shards
   ``shard=00000.parquet`` ... (sequence contract). Its marker is the commit of the run.

**Which previous state.** The newest *published* state strictly older than ``as_of``. The run then
merges every arrival hour from that state's time up to ``as_of``, so a skipped hour is caught up
rather than lost, and re-running an older interval reads the same previous state as the first run
did and rewrites only its own ``as_of``: newer snapshots are never touched (they stay what they
were; re-run the later hours too if the older one's input changed). Without any previous state the
run bootstraps: the state before ``start`` is rebuilt from ``sequences.bootstrap_lookback_hours``
of history and the interval is merged into it exactly like an hourly run.

**Idempotent.** Nothing depends on the wall clock or on the order rows arrive in Spark: the same
inputs give the same rows (sequence order and the N cut are fixed by `pipelines.sequences`).

`backfill_sequences` runs the hours of a range one after the other in one Spark application;
`rebuild_state` builds a state from the whole history in one shuffle (repair, benchmarks).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from pipelines import events as ev
from pipelines import sequences as seq
from pipelines.shards import write_shards
from pipelines.spark import parquet_files, spark_session, write_parquet
from soe.atomic import publish_dir
from soe.layout import HOUR, floor_hour, hours, snapshot_times, stamp, utc

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("soe.pipelines")


def check_interval(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """UTC, hour-aligned, non-empty: the only intervals the hourly partitions can answer."""
    start, end = utc(start), utc(end)
    if floor_hour(start) != start or floor_hour(end) != end:
        raise ValueError(f"interval {start.isoformat()}/{end.isoformat()} must start and end on whole hours (UTC)")
    if end <= start:
        raise ValueError(f"interval {start.isoformat()}/{end.isoformat()}: END must be after START")
    return start, end


def previous_state_time(layout, as_of: datetime) -> datetime | None:
    """The newest published state snapshot strictly older than ``as_of`` (None: bootstrap)."""
    older = [t for t in snapshot_times(layout.state_root) if t < utc(as_of)]
    return older[-1] if older else None


def _history_state(spark: "SparkSession", settings, start: datetime, end: datetime, as_of: datetime) -> "DataFrame":
    """State built from the valid, deduplicated events of arrival hours [start, end)."""
    layout = settings.layout()
    parts = ev.event_partitions(layout, start, end)
    if not parts:
        return seq.empty_state(spark)
    valid = ev.valid_events(ev.read_validated(spark, layout, parts, settings.events, keep_raw=False))
    kept = valid.repartition("user_id").dropDuplicates(list(ev.SEQ_KEY))  # same shuffle serves the grouping
    return seq.build_state(kept, as_of, settings.sequences.max_len)


def _rows(directory: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(directory))


def update_sequences(settings, start: datetime, end: datetime, spark=None) -> dict[str, Any]:
    """One hourly update for the data interval [start, end) (as_of = end). Returns the run manifest."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    start, end = check_interval(start, end)
    spark = spark or spark_session(settings.spark)
    layout, cfg, as_of = settings.layout(), settings.sequences, end
    prev_t = previous_state_time(layout, as_of)
    cached: list["DataFrame"] = []
    if prev_t is not None:
        mode, merge_from = "incremental", prev_t
        previous = spark.read.parquet(str(layout.state(prev_t)))
    else:
        mode, merge_from = "bootstrap", start
        lookback_start = end - timedelta(hours=cfg.bootstrap_lookback_hours)
        previous = _history_state(spark, settings, lookback_start, start, start).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(previous)

    parts = ev.event_partitions(layout, merge_from, as_of)
    validated = ev.read_validated(spark, layout, parts, settings.events).persist(StorageLevel.MEMORY_AND_DISK)
    kept, repeats = ev.dedup_keep_first(ev.valid_events(validated))
    kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
    untouched, merged = seq.merge_state(previous, kept, as_of, cfg.max_len, cfg.broadcast_active_ids)
    merged = merged.persist(StorageLevel.MEMORY_AND_DISK)
    cached += [validated, kept, merged]
    try:
        quarantine = (
            ev.rejected_rows(validated)
            .unionByName(ev.as_quarantine(repeats, "duplicate"))
            .unionByName(ev.as_quarantine(seq.repeat_rows(merged), "duplicate"))
        )
        phases: dict[str, float] = {}
        tick = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            phases[name] = round(now - tick, 3)
            tick = now

        reasons = {r["reason"]: int(r["count"]) for r in quarantine.groupBy("reason").count().collect()}
        totals = merged.agg(F.sum("fresh").alias("events"), F.sum((F.col("fresh") > 0).cast("long")).alias("users"))
        added = totals.collect()[0]
        phase("validate_merge")
        manifest: dict[str, Any] = {
            "as_of": as_of.isoformat(),
            "interval": [start.isoformat(), end.isoformat()],
            "mode": mode,
            "previous_state": prev_t.isoformat() if prev_t else None,
            "merged_from": merge_from.isoformat(),
            "partitions": [f"{p.parent.name}/{p.name}" for p in parts],
            "valid_events": int(added["events"] or 0),
            "quarantined": sum(reasons.values()),
            "reasons": dict(sorted(reasons.items())),
            "active_users": int(added["users"] or 0),
            "max_len": cfg.max_len,
            "num_shards": cfg.num_shards,
            "contract": "sequence/1",
        }
        with publish_dir(layout.quarantine(as_of), {**manifest, "counts": manifest["reasons"]}) as tmp:
            write_parquet(quarantine.coalesce(1), tmp)
        phase("quarantine")

        state = untouched.unionByName(seq.to_sequence(merged, "events", as_of)).coalesce(cfg.state_files)
        with publish_dir(layout.state(as_of), manifest) as tmp:
            write_parquet(state, tmp)
            manifest["state_users"] = _rows(tmp)
        phase("state")

        active = seq.to_sequence(merged.where(F.col("fresh") > 0), "events", as_of)
        with publish_dir(layout.active(as_of), manifest) as tmp:
            buckets = max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
            manifest["shard_sizes"] = write_shards(active, tmp, cfg.num_shards, buckets, cfg.broadcast_active_ids)
            phase("active")
            manifest["phase_seconds"] = phases
            manifest["seconds"] = round(time.perf_counter() - t0, 3)
    finally:
        for df in cached:
            df.unpersist()
    log.info("sequences %s: %s", stamp(as_of), {k: manifest[k] for k in ("mode", "valid_events", "active_users")})
    return manifest


def backfill_sequences(settings, start: datetime, end: datetime, spark=None) -> list[dict[str, Any]]:
    """Hourly updates for every hour of [start, end), in order, in one Spark application."""
    start, end = check_interval(start, end)
    spark = spark or spark_session(settings.spark)
    return [update_sequences(settings, h, h + HOUR, spark=spark) for h in hours(start, end)]


def rebuild_state(settings, as_of: datetime, *, lookback_hours: int | None = None, spark=None,
                  out: Path | None = None) -> dict[str, Any]:
    """Build the state as of ``as_of`` from the history alone (no previous state), in one shuffle.

    Reads arrival hours [as_of - lookback, as_of) (default: the bootstrap lookback) and publishes
    ``state(as_of)`` (or ``out``). Same content as the chain of hourly updates over those hours,
    except that a re-sent copy of an event that had already dropped out of a user's last N is
    dropped here but re-admitted by the chain.
    """
    t0 = time.perf_counter()
    as_of = check_interval(utc(as_of) - HOUR, as_of)[1]
    spark = spark or spark_session(settings.spark)
    layout = settings.layout()
    lookback = settings.sequences.bootstrap_lookback_hours if lookback_hours is None else lookback_hours
    state = _history_state(spark, settings, as_of - timedelta(hours=lookback), as_of, as_of)
    manifest: dict[str, Any] = {"as_of": as_of.isoformat(), "mode": "rebuild", "lookback_hours": lookback,
                                "max_len": settings.sequences.max_len, "contract": "sequence/1"}
    with publish_dir(out or layout.state(as_of), manifest) as tmp:
        write_parquet(state.coalesce(settings.sequences.state_files), tmp)
        manifest["state_users"] = _rows(tmp)
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
    return manifest
