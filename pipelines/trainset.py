"""Training sets from the event log, built with Spark: inputs in the sequence contract plus targets.

Two kinds (`KINDS`), both from the valid, deduplicated events of every published partition; time
always comes from the data (event ``ts``), never from the wall clock:

* ``time_split``: a split time T (given, or the newest event time minus the window, on the hour).
  Input = each user's last N events with ``ts <= T``; targets = the user's positive events
  (``events.positive_event_types``) with ``T < ts <= T + window``. ``as_of = T``. Users with no
  input or no target are left out.
* ``leave_last_out``: target = each user's last positive event; input = the last N events that
  come before it in sequence order. ``as_of`` = the ts of the last input event, so the input's
  time gaps say nothing about when the target happened.

Output (``trainsets/<name>/``, Parquet, published with a ``_SUCCESS`` manifest): the sequence
contract columns for the input, plus ``target_ts``, ``target_event_type``, ``target_item_id`` and
``target_<attribute>`` lists (oldest -> newest) and ``n_targets``. No target is ever in its input:
for ``time_split`` every input ts <= T < every target ts; for ``leave_last_out`` every input event
sorts strictly before the target.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import publish_dir
from core.datasets.events import published_partitions
from core.layout import floor_hour, stamp, utc
from core.sequence_state import data_rows
from pipelines import events as ev
from pipelines import sequences as seq
from pipelines.settings import PipelineConfig
from pipelines.spark import spark_session, write_parquet

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame

KINDS = ("time_split", "leave_last_out")


def _targets(col: Column) -> list[Column]:
    from pyspark.sql import functions as F

    return [F.size(col).cast("int").alias("n_targets")] + [
        col.getField(c).alias(f"target_{c}") for c in seq.EV_FIELDS
    ]


def _inputs(events: Column, as_of: Column) -> list[Column]:
    from pyspark.sql import functions as F

    return [
        F.col("user_id"),
        as_of.cast("timestamp").alias("as_of"),
        F.size(events).cast("int").alias("n_events"),
    ] + [events.getField(c).alias(c) for c in seq.EV_FIELDS]


def _time_split(events: DataFrame, split: datetime, window_hours: int, positives: list[str], max_len: int):
    from pyspark.sql import functions as F

    t, t_end = F.lit(split).cast("timestamp"), F.lit(split + timedelta(hours=window_hours)).cast("timestamp")
    is_target = (F.col("ts") > t) & (F.col("ts") <= t_end) & F.col("event_type").isin(positives)
    grouped = (
        events.groupBy("user_id")
        .agg(
            F.sort_array(F.collect_list(F.when(F.col("ts") <= t, seq.ev_struct()))).alias("inp"),
            F.collect_list(F.when(is_target, seq.ev_struct())).alias("tgt"),
        )
        .where((F.size("inp") > 0) & (F.size("tgt") > 0))
    )
    rows = grouped.select(
        "user_id", seq.last_n(F.col("inp"), max_len).alias("inp"), F.sort_array("tgt").alias("tgt")
    )
    return rows.select(*_inputs(F.col("inp"), t), *_targets(F.col("tgt")))


def _leave_last_out(events: DataFrame, positives: list[str], max_len: int):
    from pyspark.sql import functions as F

    grouped = events.groupBy("user_id").agg(F.sort_array(F.collect_list(seq.ev_struct())).alias("all"))
    pos = F.filter(F.col("all"), lambda x: x.getField("event_type").isin(positives))
    with_target = grouped.select("user_id", "all", F.try_element_at(pos, F.lit(-1)).alias("target")).where(
        F.col("target").isNotNull()
    )
    idx = F.array_position(F.col("all"), F.col("target"))  # 1-based; events are distinct after dedup
    n_in = F.least(idx - 1, F.lit(max_len))
    rows = with_target.select(
        "user_id",
        F.slice(F.col("all"), F.greatest(idx - n_in, F.lit(1)), n_in).alias("inp"),
        F.array(F.col("target")).alias("tgt"),
    ).where(F.size("inp") > 0)
    return rows.select(
        *_inputs(F.col("inp"), F.try_element_at(F.col("inp"), F.lit(-1)).getField("ts")),
        *_targets(F.col("tgt")),
    )


def build_trainset(
    cfg: PipelineConfig,
    kind: str,
    *,
    split_time: datetime | None = None,
    window_hours: int = 24,
    name: str | None = None,
    spark=None,
) -> Path:
    """Build a training set of ``kind`` (see module doc) and publish it under ``trainsets/<name>``."""
    from pyspark.sql import functions as F

    if kind not in KINDS:
        raise ValueError(f"unknown training-set kind {kind!r}; choose one of {list(KINDS)}")
    if window_hours <= 0:
        raise ValueError(f"window_hours must be positive, got {window_hours}")
    layout = cfg.layout()
    parts = published_partitions(layout)
    if not parts:
        raise FileNotFoundError(
            f"no published event partitions under {layout.events}: run `soe generate` first"
        )
    spark = spark or spark_session(cfg.spark)
    valid = ev.valid_events(ev.read_validated(spark, layout, parts, cfg.events, keep_raw=False))
    events = valid.repartition("user_id").dropDuplicates(list(ev.SEQ_KEY)).drop("arrival_hour")
    positives = list(cfg.events.positive_event_types)
    max_len = cfg.sequences.max_len
    manifest: dict[str, Any] = {
        "kind": kind,
        "max_len": max_len,
        "positive_event_types": positives,
        "partitions": len(parts),
        "contract": "sequence/1+targets",
    }
    if kind == "time_split":
        if split_time is None:  # from the data: the newest event minus the window, on the hour
            newest = events.agg(F.max("ts").alias("t")).collect()[0]["t"]
            if newest is None:
                raise ValueError("the event log holds no valid event: nothing to split")
            split_time = floor_hour(utc(newest) - timedelta(hours=window_hours))
        split_time = utc(split_time)
        rows = _time_split(events, split_time, window_hours, positives, max_len)
        manifest.update(split_time=split_time.isoformat(), window_hours=window_hours)
        name = name or f"time_split-{stamp(split_time)}-{window_hours}h"
    else:
        rows = _leave_last_out(events, positives, max_len)
        name = name or "leave_last_out"
    target = layout.trainset(name)
    with publish_dir(target, manifest) as tmp:
        write_parquet(rows.coalesce(max(1, cfg.sequences.state_files)), tmp)
        manifest["users"] = data_rows(tmp)
        manifest["name"] = name
    return target
