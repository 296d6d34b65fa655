"""The Spark session and the few Spark <-> Arrow helpers every pipeline step shares.

`spark_session` is the one place a SparkSession is built. It uses ``getOrCreate``, so under
``spark-submit`` (cluster launcher) the session the submitter created is reused and only our SQL
settings are applied; in the embedded default it starts ``local[*]`` with the settings below.

Settings that matter for the data contracts, always applied:

* ``spark.sql.session.timeZone=UTC``: timestamps are UTC everywhere (contract ``TS``);
* ``spark.sql.parquet.outputTimestampType=TIMESTAMP_MILLIS``: Spark writes micros by default, the
  contracts say milliseconds; with this the files read back in pyarrow as ``timestamp[ms, UTC]``;
* no Hadoop ``_SUCCESS`` / ``.crc`` files: our own ``_SUCCESS`` marker (soe.atomic) is the only one.

`spark_schema` converts an Arrow contract schema to a Spark schema in one place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.settings import SparkSettings

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

# Always applied (contract-critical or needed for correct local behaviour); `SparkSettings.conf` wins.
BASE_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MILLIS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.hadoop.parquet.enable.summary-metadata": "false",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
}
# Only when we start the JVM ourselves (local launcher): no web UI, local fs without .crc files.
LOCAL_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000",
}


def spark_conf(spark: SparkSettings) -> dict[str, str]:
    """Every spark.* setting this configuration asks for (the settings object is the only input)."""
    conf = dict(BASE_CONF)
    conf["spark.sql.shuffle.partitions"] = str(spark.shuffle_partitions)
    conf["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(spark.arrow_batch_rows)
    if spark.launcher == "local" or spark.master.startswith("local"):
        conf.update(LOCAL_CONF)
        conf["spark.driver.memory"] = spark.driver_memory
    conf.update(spark.conf)
    return conf


def spark_session(spark: SparkSettings) -> "SparkSession":
    """getOrCreate a SparkSession for these settings (the same code runs under spark-submit)."""
    from pyspark.sql import SparkSession

    conf = spark_conf(spark)
    active = SparkSession.getActiveSession()
    if active is None:
        builder = SparkSession.builder.appName(spark.app_name)
        if spark.launcher == "local":  # under spark-submit the master comes from the submitter
            builder = builder.master(spark.master)
            # PySpark picks the worker interpreter from this variable only (the conf key is ignored
            # in-process): workers must run our interpreter, which has pyarrow and soe.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        for key, value in conf.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
    else:
        session = active
    for key, value in conf.items():  # runtime SQL settings also on a reused session
        if key.startswith("spark.sql.") and not key.startswith("spark.sql.sources.parallel"):
            try:
                session.conf.set(key, value)
            except Exception:  # static conf of an existing session: keep the submitter's value
                pass
    return session


def spark_schema(schema: pa.Schema) -> "StructType":
    """Arrow (contract) schema -> Spark schema, including nullability. The one conversion helper."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def write_parquet(df: "DataFrame", path: Path) -> None:
    """Write ``df`` as Parquet files into ``path`` (an unpublished temp dir of soe.atomic.publish_dir)."""
    df.write.mode("overwrite").option("compression", "snappy").parquet(str(path))


def parquet_files(path: Path) -> list[Path]:
    """The data files of a Spark-written directory (ignores markers and hidden files)."""
    return sorted(p for p in Path(path).glob("*.parquet") if not p.name.startswith((".", "_")))
