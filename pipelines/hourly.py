"""The hourly sequence update: validate the new events, merge them into the state, shard the active users.

One run covers the data interval [start, end) and writes three directories for ``as_of = end``,
each published atomically with a ``_SUCCESS`` manifest (core.atomic), in this order:

1. ``quarantine(as_of)``: every rejected row as it arrived, with its reason (QUARANTINE_SCHEMA);
2. ``state(as_of)``: every known user's last N events, as layers (`core.sequence_state`): normally
   the previous snapshot's layers, hard-linked, plus one delta layer holding this interval's active
   shards (hard links too); when the deltas have grown past ``sequences.compact_*``, one new base;
3. ``active(as_of)``: the users with >= 1 new valid event, as K balanced shards
   ``shard=00000.parquet`` ... (sequence contract). Its marker is the commit of the run.

**Cost.** Only the interval's events are validated, deduplicated and grouped. The state is scanned
by one task per layer file that keeps only the active users' previous rows
(`pipelines.state.fetch_current_rows`); it is never shuffled, and rewritten only by a compaction.
What an hour writes is the active users' sequences.

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
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.atomic import publish_dir
from core.forget import DIGEST_KEY, ForgetList, scrub_files
from core.layout import HOUR, check_interval, hours, snapshot_times, stamp, utc
from core.sequence_state import (
    BASE,
    DELTA,
    LAYOUT,
    Layer,
    StateSnapshot,
    data_files,
    data_rows,
    layer_name,
    link_files,
)
from pipelines import events as ev
from pipelines import sequences as seq
from pipelines import state as st
from pipelines.settings import PipelineConfig
from pipelines.shards import write_shards
from pipelines.spark import release_idle_heap, spark_session, write_parquet

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("soe.pipelines")


def previous_state_time(layout, as_of: datetime) -> datetime | None:
    """The newest published state snapshot strictly older than ``as_of`` (None: bootstrap)."""
    older = [t for t in snapshot_times(layout.state_root) if t < utc(as_of)]
    return older[-1] if older else None


def _history_state(
    spark: SparkSession,
    cfg: PipelineConfig,
    start: datetime,
    end: datetime,
    as_of: datetime,
    forget: ForgetList | None = None,
) -> DataFrame:
    """State built from the valid, deduplicated events of arrival hours [start, end) (no forgotten user)."""
    layout = cfg.layout()
    parts = ev.event_partitions(layout, start, end)
    if not parts:
        return seq.empty_state(spark)
    valid = ev.valid_events(
        ev.read_validated(spark, layout, parts, cfg.events, keep_raw=False, forget=forget)
    )
    kept = valid.repartition("user_id").dropDuplicates(list(ev.SEQ_KEY))  # same shuffle serves the grouping
    return seq.build_state(kept, as_of, cfg.sequences.max_len)


def update_sequences(cfg: PipelineConfig, start: datetime, end: datetime, spark=None) -> dict[str, Any]:
    """One hourly update for the data interval [start, end) (as_of = end). Returns the run manifest."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    start, end = check_interval(start, end)
    spark = spark or spark_session(cfg.spark)
    layout, seqs, as_of = cfg.layout(), cfg.sequences, end
    forget = ForgetList.load(layout.root)  # one list for the whole run: validation, state, manifests
    prev_t = previous_state_time(layout, as_of)
    cached: list[DataFrame] = []
    previous: StateSnapshot | None = None
    history: DataFrame | None = None  # bootstrap only: the state before `start`, built from the log
    if prev_t is not None:
        mode, merge_from = "incremental", prev_t
        previous = StateSnapshot(layout.state(prev_t))
    else:
        mode, merge_from = "bootstrap", start
        lookback_start = end - timedelta(hours=seqs.bootstrap_lookback_hours)
        history = _history_state(spark, cfg, lookback_start, start, start, forget)
        history = history.persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(history)

    parts = ev.event_partitions(layout, merge_from, as_of)
    validated = ev.read_validated(spark, layout, parts, cfg.events, forget=forget)
    validated = validated.persist(StorageLevel.MEMORY_AND_DISK)
    # one shuffle by user serves the dedup window (keyed by user first) and the grouping
    kept, repeats = ev.dedup_keep_first(ev.valid_events(validated).repartition("user_id"))
    new = seq.group_new_events(kept).persist(StorageLevel.MEMORY_AND_DISK)
    ids = new.select("user_id")  # users with new events this interval
    old = st.fetch_current_rows(spark, previous, ids) if previous is not None else history
    merged = seq.merge_state(old, new, seqs.max_len).persist(StorageLevel.MEMORY_AND_DISK)
    cached += [validated, new, merged]
    try:
        quarantine = (
            ev.rejected_rows(validated)
            .unionByName(ev.as_quarantine(repeats, "duplicate"))
            .unionByName(ev.as_quarantine(seq.repeat_rows(merged), "duplicate"))
        )
        phases: dict[str, float] = {}
        tick = t0  # the first phase includes reading, validating, deduplicating and fetching old rows

        def phase(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            phases[name] = round(now - tick, 3)
            tick = now

        active_flag = F.col("fresh") > 0
        added = merged.agg(
            F.sum("fresh").alias("events"),
            F.sum(active_flag.cast("long")).alias("users"),
            F.sum((active_flag & ~F.col("known")).cast("long")).alias("new_users"),
        ).collect()[0]
        active_users, new_users = int(added["users"] or 0), int(added["new_users"] or 0)
        phase("validate_merge")
        manifest: dict[str, Any] = {
            "as_of": as_of.isoformat(),
            "interval": [start.isoformat(), end.isoformat()],
            "mode": mode,
            "previous_state": prev_t.isoformat() if prev_t else None,
            "merged_from": merge_from.isoformat(),
            "partitions": [f"{p.parent.name}/{p.name}" for p in parts],
            "valid_events": int(added["events"] or 0),
            "active_users": active_users,
            "max_len": seqs.max_len,
            "num_shards": seqs.num_shards,
            "contract": "sequence/1",
            DIGEST_KEY: forget.digest,  # built honouring this forget list (retention need not scan it)
        }
        quarantine_manifest: dict[str, Any] = {}
        with publish_dir(layout.quarantine(as_of), quarantine_manifest) as tmp:
            write_parquet(quarantine.coalesce(1), tmp)
            reasons = ev.reason_counts(tmp)  # counted from the written file: no second Spark job
            manifest.update(quarantined=sum(reasons.values()), reasons=reasons)
            quarantine_manifest.update(manifest, counts=reasons)
        phase("quarantine")

        compact = st.should_compact(previous, active_users, seqs.compact_max_layers, seqs.compact_delta_ratio)
        active = seq.as_sequence(merged.where(active_flag), as_of)
        with publish_dir(layout.active(as_of), manifest) as active_tmp:
            buckets = max(1, int(spark.conf.get("spark.sql.shuffle.partitions")))
            manifest["shard_sizes"] = write_shards(
                active, active_tmp, seqs.num_shards, buckets, seqs.broadcast_active_ids
            )
            phase("active")
            state_manifest: dict[str, Any] = {}
            with publish_dir(layout.state(as_of), state_manifest) as state_tmp:
                if compact:  # a new base: every user's current row, the merged users replaced
                    ids_join = F.broadcast(ids) if seqs.broadcast_active_ids else ids
                    if previous is None:
                        current = history
                    else:
                        small = previous.base_rows + previous.delta_rows <= seqs.broadcast_max_users
                        current = st.current_rows(st.layer_frames(spark, previous), small)
                    untouched = current.join(ids_join, "user_id", "left_anti")
                    if len(forget):  # forgotten users leave the state even without a new event
                        gone = spark.createDataFrame([(int(i),) for i in forget.ids], "user_id long")
                        untouched = untouched.join(F.broadcast(gone), "user_id", "left_anti")
                    base = untouched.withColumn("as_of", F.lit(as_of).cast("timestamp")).select(
                        *seq.SEQUENCE_COLUMNS
                    )
                    base = base.unionByName(seq.as_sequence(merged, as_of)).coalesce(seqs.state_files)
                    write_parquet(base, state_tmp / layer_name(as_of))
                    state_users = data_rows(state_tmp / layer_name(as_of))
                    out_layers = [Layer(layer_name(as_of), BASE, as_of, state_users)]
                else:  # the previous layers, linked, plus this hour's active shards as a delta layer
                    out_layers = list(previous.layers)
                    for layer in out_layers:
                        link_files(previous.layer_files(layer), state_tmp / layer.name)
                    dropped = 0
                    if len(forget) and not forget.checked(previous.path):
                        # the forget list grew since the previous state: rewrite (not link) the layer
                        # files that hold a forgotten user, without them, even if they had no new event
                        linked = [f for layer in out_layers for f in data_files(state_tmp / layer.name)]
                        per_file = scrub_files(linked, forget)
                        out_layers = [
                            replace(
                                layer,
                                rows=layer.rows
                                - sum(len(v) for f, v in per_file.items() if f.parent.name == layer.name),
                            )
                            for layer in out_layers
                        ]
                        dropped = len(np.unique(np.concatenate(list(per_file.values())))) if per_file else 0
                        manifest["forgotten_dropped"] = dropped
                    if active_users:
                        link_files(data_files(active_tmp), state_tmp / layer_name(as_of))
                        out_layers.append(Layer(layer_name(as_of), DELTA, as_of, active_users))
                    state_users = previous.num_users + new_users - dropped
                manifest.update(state_users=state_users, state_layers=len(out_layers), compacted=compact)
                state_manifest.update(
                    manifest, layout=LAYOUT, layers=[layer.to_json() for layer in out_layers]
                )
            phase("state")
            manifest["phase_seconds"] = phases
            manifest["seconds"] = round(time.perf_counter() - t0, 3)
    finally:
        for df in cached:
            df.unpersist(blocking=True)
        release_idle_heap(spark, cfg.spark)  # the encoder and the graph build follow in this host
    log.info(
        "sequences %s: %s",
        stamp(as_of),
        {k: manifest[k] for k in ("mode", "valid_events", "active_users", "compacted")},
    )
    return manifest


def backfill_sequences(
    cfg: PipelineConfig, start: datetime, end: datetime, spark=None
) -> list[dict[str, Any]]:
    """Hourly updates for every hour of [start, end), in order, in one Spark application."""
    start, end = check_interval(start, end)
    spark = spark or spark_session(cfg.spark)
    return [update_sequences(cfg, h, h + HOUR, spark=spark) for h in hours(start, end)]


def rebuild_state(
    cfg: PipelineConfig,
    as_of: datetime,
    *,
    lookback_hours: int | None = None,
    spark=None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Build the state as of ``as_of`` from the history alone (no previous state), in one shuffle.

    Reads arrival hours [as_of - lookback, as_of) (default: the bootstrap lookback) and publishes
    ``state(as_of)`` (or ``out``). Same content as the chain of hourly updates over those hours,
    except that a re-sent copy of an event that had already dropped out of a user's last N is
    dropped here but re-admitted by the chain.
    """
    t0 = time.perf_counter()
    as_of = check_interval(utc(as_of) - HOUR, as_of)[1]
    spark = spark or spark_session(cfg.spark)
    layout = cfg.layout()
    lookback = cfg.sequences.bootstrap_lookback_hours if lookback_hours is None else lookback_hours
    state = _history_state(
        spark, cfg, as_of - timedelta(hours=lookback), as_of, as_of, ForgetList.load(layout.root)
    )
    manifest: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "mode": "rebuild",
        "lookback_hours": lookback,
        "max_len": cfg.sequences.max_len,
        "contract": "sequence/1",
        "layout": LAYOUT,
    }
    with publish_dir(out or layout.state(as_of), manifest) as tmp:
        write_parquet(state.coalesce(cfg.sequences.state_files), tmp / layer_name(as_of))
        manifest["state_users"] = data_rows(tmp / layer_name(as_of))
        manifest["layers"] = [Layer(layer_name(as_of), BASE, as_of, manifest["state_users"]).to_json()]
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
    return manifest
