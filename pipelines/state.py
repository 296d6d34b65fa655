"""The layered sequence state in Spark: read the layers, pick users' current rows, decide compaction.

See `core.sequence_state` for the on-disk layout (a base layer plus hourly delta layers; the newest
layer holding a user wins). This module is its Spark side:

* `layer_frames`: one DataFrame per layer of a published snapshot, oldest first;
* `newest_layer`: which layer holds each user's current row (reads only ``user_id`` columns);
* `fetch_current_rows`: the current rows of the interval's active users, read in the executors
  with pyarrow (one task per layer file), filtered there, so only the active users' rows ever
  become Spark rows. The state is only scanned, never shuffled or rewritten;
* `current_rows`: every user's current row (for a compaction), sequences never shuffled;
* `should_compact`: the policy (`sequences.compact_max_layers`, `sequences.compact_delta_ratio`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.contracts import SEQUENCE
from core.sequence_state import DELTA, StateSnapshot
from pipelines.sequences import EV_FIELDS, SEQUENCE_COLUMNS
from pipelines.spark import spark_schema

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession


def layer_frames(spark: SparkSession, snapshot: StateSnapshot) -> list[DataFrame]:
    """One DataFrame of sequence-contract rows per layer, oldest first (an empty layer reads empty)."""
    schema = spark_schema(SEQUENCE.schema)
    frames = []
    for layer in snapshot.layers:
        files = [str(f) for f in snapshot.layer_files(layer)]
        df = spark.read.schema(schema).parquet(*files) if files else spark.createDataFrame([], schema)
        frames.append(df.select(*SEQUENCE_COLUMNS))
    return frames


def _maybe_broadcast(df: DataFrame, broadcast: bool) -> DataFrame:
    from pyspark.sql import functions as F

    return F.broadcast(df) if broadcast else df


def newest_layer(layers: list[DataFrame]) -> DataFrame:
    """(user_id, _layer): the index of the newest layer holding each user.

    Reads only the ``user_id`` column of every layer; the grouping shuffles integers, never sequences.
    """
    from pyspark.sql import functions as F

    tagged = None
    for i, df in enumerate(layers):
        part = df.select("user_id", F.lit(i).alias("_layer"))
        tagged = part if tagged is None else tagged.unionByName(part)
    return tagged.groupBy("user_id").agg(F.max("_layer").alias("_layer"))


def fetch_current_rows(spark: SparkSession, snapshot: StateSnapshot, ids: DataFrame) -> DataFrame:
    """The current rows (sequence-contract lists, no ``as_of``) of the users in ``ids`` (few).

    One Spark task per layer file reads the file with pyarrow in the executor and keeps only the rows
    of the wanted users (``is_in`` against the broadcast ids), so the JVM never decodes the other
    users' sequences; the few rows found are grouped to keep each user's newest layer. The scan is
    columnar and vectorised, but it still reads every layer file: this is the part of an hourly
    update that grows with the number of known users (see docs/pipelines.md).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    wanted = ids.select("user_id").toArrow().column("user_id").to_numpy(zero_copy_only=False)
    shared = spark.sparkContext.broadcast(np.unique(wanted.astype(np.int64)))  # 8 bytes per active user
    # microseconds inside lists: Spark's Arrow bridge takes timestamp[ms] only at the top level
    us = pa.list_(pa.field("element", pa.timestamp("us", tz="UTC")))
    out = pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("_layer", pa.int32(), nullable=False),
            *[
                SEQUENCE.schema.field(c).with_type(us) if c == "ts" else SEQUENCE.schema.field(c)
                for c in EV_FIELDS
            ],
        ]
    )
    columns = ["user_id", *EV_FIELDS]

    def fetch(batches):
        value_set = pa.array(shared.value)
        for batch in batches:
            for layer, path in zip(batch.column("layer").to_pylist(), batch.column("path").to_pylist()):
                for part in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=columns):
                    hit = part.filter(pc.is_in(part.column("user_id"), value_set=value_set))
                    if hit.num_rows:
                        arrays = [hit.column("user_id"), pa.array(np.full(hit.num_rows, layer, np.int32))]
                        arrays += [hit.column(c).cast(out.field(c).type) for c in EV_FIELDS]
                        yield pa.RecordBatch.from_arrays(arrays, schema=out)

    files = [(i, str(path)) for i, path in snapshot.files()]
    if not files:
        return spark.createDataFrame([], spark_schema(out)).drop("_layer")
    paths = spark.sparkContext.parallelize(files, len(files)).toDF("layer int, path string")
    rows = paths.mapInArrow(fetch, spark_schema(out))
    if len(snapshot.layers) == 1:
        return rows.drop("_layer")
    newest = rows.groupBy("user_id").agg(F.max_by(F.struct(*EV_FIELDS), F.col("_layer")).alias("_row"))
    return newest.select("user_id", *[F.col("_row").getField(c).alias(c) for c in EV_FIELDS])


def current_rows(layers: list[DataFrame], broadcast: bool) -> DataFrame:
    """Every user's current row (for a compaction): each layer semi-joined with the users whose newest
    layer it is. Only integers are shuffled; ``broadcast`` when the state's user count allows it."""
    from pyspark.sql import functions as F

    if len(layers) == 1:
        return layers[0]
    where = newest_layer(layers)
    picks = [
        df.join(
            _maybe_broadcast(where.where(F.col("_layer") == i).select("user_id"), broadcast),
            "user_id",
            "left_semi",
        )
        for i, df in enumerate(layers)
    ]
    out = picks[0]
    for df in picks[1:]:
        out = out.unionByName(df)
    return out


def should_compact(
    previous: StateSnapshot | None, new_delta_rows: int, max_layers: int, delta_ratio: float
) -> bool:
    """Write a new base instead of a delta? Always without a previous snapshot (bootstrap).

    Compact when the new delta would make more than ``max_layers`` delta layers, or the delta rows
    (users re-written since the base, counted once per layer) exceed ``delta_ratio`` x the base rows:
    beyond that, scanning the deltas costs about as much as rewriting the base once.
    """
    if previous is None or not previous.layered:
        return True
    deltas = sum(layer.kind == DELTA for layer in previous.layers) + (1 if new_delta_rows else 0)
    return deltas > max_layers or previous.delta_rows + new_delta_rows > delta_ratio * max(
        1, previous.base_rows
    )
