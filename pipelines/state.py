"""The layered sequence state in Spark: read the layers, pick users' current rows, decide compaction.

See `soe.sequence_state` for the on-disk layout (a base layer plus hourly delta layers; the newest
layer holding a user wins). This module is its Spark side:

* `layer_frames`: one DataFrame per layer of a published snapshot, oldest first;
* `current_rows_of`: the current row of each user in ``ids`` (the interval's active users): each
  layer is semi-joined with the (broadcast) ids map-only, and only those few rows are grouped to
  pick the newest layer. The cost follows the active users; the state is only scanned, never
  shuffled or rewritten;
* `current_rows`: every user's current row (for a compaction): each layer anti-joined with the ids
  of the newer layers, so the base is streamed once and never shuffled;
* `should_compact`: the policy (`sequences.compact_max_layers`, `sequences.compact_delta_ratio`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.sequences import SEQUENCE_COLUMNS
from soe.contracts import SEQUENCE
from soe.sequence_state import DELTA, StateSnapshot

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession


def layer_frames(spark: "SparkSession", snapshot: StateSnapshot) -> list["DataFrame"]:
    """One DataFrame of sequence-contract rows per layer, oldest first (an empty layer reads empty)."""
    from pipelines.spark import spark_schema

    schema = spark_schema(SEQUENCE.schema)
    frames = []
    for layer in snapshot.layers:
        files = [str(f) for f in snapshot.layer_files(layer)]
        df = spark.read.schema(schema).parquet(*files) if files else spark.createDataFrame([], schema)
        frames.append(df.select(*SEQUENCE_COLUMNS))
    return frames


def current_rows_of(layers: list["DataFrame"], ids: "DataFrame", broadcast: bool = True) -> "DataFrame":
    """The current (newest-layer) row of every user in ``ids`` that the state knows."""
    from pyspark.sql import functions as F

    ids = F.broadcast(ids) if broadcast else ids
    picked = [df.join(ids, "user_id", "left_semi") for df in layers]
    if len(picked) == 1:
        return picked[0]
    tagged = picked[0].withColumn("_layer", F.lit(0))
    for i, df in enumerate(picked[1:], start=1):
        tagged = tagged.unionByName(df.withColumn("_layer", F.lit(i)))
    row = F.struct(*[F.col(c) for c in SEQUENCE_COLUMNS if c != "user_id"])
    newest = tagged.groupBy("user_id").agg(F.max_by(row, F.col("_layer")).alias("_row"))
    return newest.select("user_id", *[F.col("_row").getField(c).alias(c) for c in SEQUENCE_COLUMNS if c != "user_id"])


def current_rows(layers: list["DataFrame"]) -> "DataFrame":
    """Every user's current row: layer i minus the users of layers i+1.. (Spark's adaptive execution
    broadcasts the newer ids when they are small, which keeps the base map-only)."""
    out = None
    newer_ids = None
    for df in reversed(layers):
        kept = df if newer_ids is None else df.join(newer_ids, "user_id", "left_anti")
        out = kept if out is None else out.unionByName(kept)
        ids = df.select("user_id")
        newer_ids = ids if newer_ids is None else newer_ids.unionByName(ids)
    return out


def should_compact(previous: StateSnapshot | None, new_delta_rows: int, max_layers: int, delta_ratio: float) -> bool:
    """Write a new base instead of a delta? Always without a previous snapshot (bootstrap).

    Compact when the new delta would make more than ``max_layers`` delta layers, or the delta rows
    (users re-written since the base, counted once per layer) exceed ``delta_ratio`` x the base rows:
    beyond that, scanning the deltas costs about as much as rewriting the base once.
    """
    if previous is None or not previous.layered:
        return True
    deltas = sum(layer.kind == DELTA for layer in previous.layers) + (1 if new_delta_rows else 0)
    return deltas > max_layers or previous.delta_rows + new_delta_rows > delta_ratio * max(1, previous.base_rows)
