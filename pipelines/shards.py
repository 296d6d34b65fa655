"""K balanced Parquet shards of the active users' sequences, one file per shard.

Every active user gets a global rank without a single-partition window: users are hashed into
buckets, ranked by user_id inside their bucket (a window per bucket, in parallel), and the bucket
sizes (one small number per bucket, the only thing the driver sees) give each bucket's offset.
``shard = rank % K`` then makes the shards equal to within one user, deterministically.

Spark writes one directory per shard (``partitionBy``; every shard's rows are in one task, so one
file); the files are then renamed to ``shard=00000.parquet`` ... inside the unpublished temp dir.
A shard with no users is written as an empty Parquet file with the sequence schema, so every one of
the K shards always exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from core.contracts import SEQUENCE
from core.sequence_state import data_files

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame


def shard_file(directory: Path, shard: int) -> Path:
    """Same spelling as `core.layout.Layout.active_shard`, inside any directory."""
    return Path(directory) / f"shard={shard:05d}.parquet"


def balanced_shards(df: DataFrame, num_shards: int, buckets: int, broadcast_map: bool = True) -> DataFrame:
    """``df`` (one row per user) with an int column ``shard`` in [0, K), sizes equal within one user.

    The ranking runs on the user ids alone; the (user_id -> shard) map is then joined back (broadcast
    when ``broadcast_map``), so the wide sequence rows are shuffled only once, by the final write.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ids = df.select("user_id").withColumn(
        "_bucket", F.pmod(F.xxhash64("user_id"), F.lit(buckets)).cast("int")
    )
    ranked = ids.withColumn(
        "_rank", F.row_number().over(Window.partitionBy("_bucket").orderBy("user_id")) - 1
    )
    sizes = {
        r["_bucket"]: r["count"] for r in ids.groupBy("_bucket").count().collect()
    }  # <= `buckets` numbers
    offsets, total = [], 0
    for i in range(buckets):
        offsets.append(total)
        total += sizes.get(i, 0)
    offset = F.element_at(F.array(*[F.lit(o) for o in offsets]), F.col("_bucket") + 1)
    shard_map = ranked.select(
        "user_id", F.pmod(offset + F.col("_rank"), F.lit(num_shards)).cast("int").alias("shard")
    )
    return df.join(F.broadcast(shard_map) if broadcast_map else shard_map, "user_id")


def write_shards(
    df: DataFrame, out_dir: Path, num_shards: int, buckets: int = 64, broadcast_map: bool = True
) -> list[int]:
    """Write ``df`` (sequence contract columns) as ``shard=iiiii.parquet`` files; returns the sizes."""
    out_dir = Path(out_dir)
    staging = out_dir / "_spark"
    sharded = balanced_shards(df, num_shards, buckets, broadcast_map)
    (
        sharded.repartition(num_shards, "shard")
        .sortWithinPartitions("shard", "user_id")  # the writer needs shard order first, or it re-sorts
        .write.mode("overwrite")
        .partitionBy("shard")
        .parquet(str(staging))
    )
    sizes = []
    for i in range(num_shards):
        files = data_files(staging / f"shard={i}")
        target = shard_file(out_dir, i)
        if not files:
            pq.write_table(SEQUENCE.schema.empty_table(), target)
        elif len(files) == 1:
            files[0].rename(target)
        else:  # more than one file (maxRecordsPerFile): concatenate into the one shard file
            import pyarrow as pa

            pq.write_table(pa.concat_tables([pq.read_table(f) for f in files]), target)
        sizes.append(pq.ParquetFile(target).metadata.num_rows)
    shutil.rmtree(staging)
    return sizes
