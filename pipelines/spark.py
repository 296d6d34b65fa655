"""The Spark session and the few Spark <-> Arrow helpers every pipeline step shares.

`spark_session` is the one place a SparkSession is built. It uses ``getOrCreate``, so under
``spark-submit`` (cluster launcher) the session the submitter created is reused and only our SQL
settings are applied; in the embedded default it starts ``local[*]`` with the settings below.

Settings that matter for the data contracts, always applied:

* ``spark.sql.session.timeZone=UTC``: timestamps are UTC everywhere (contract ``TS``);
* ``spark.sql.parquet.outputTimestampType=TIMESTAMP_MILLIS``: Spark writes micros by default, the
  contracts say milliseconds; with this the files read back in pyarrow as ``timestamp[ms, UTC]``;
* no Hadoop ``_SUCCESS`` / ``.crc`` files: our own ``_SUCCESS`` marker (core.atomic) is the only one.

`spark_schema` converts an Arrow contract schema to a Spark schema in one place.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
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
    "spark.hadoop.parquet.summary.metadata.level": "NONE",  # no _metadata/_common_metadata summary files
    "spark.sql.sources.partitionColumnTypeInference.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
    # the data root is a posix path (local disk or a shared mount): no .crc files, no listing job
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000",
}
# Only when we start the JVM ourselves (local launcher): no web UI. Under spark-submit the UI is the
# submitter's business (whatever `spark.master` says: that key is ignored there).
LOG4J2 = Path(__file__).with_name("log4j2.properties")  # WARN and above, one line each, on stderr
# The local driver shares its host with the encoder and the graph build, which run after the Spark
# stages: G1 gives the heap it no longer uses back to the OS once the JVM is idle (a concurrent cycle
# every 10 s without a GC, JEP 346) and keeps at most 30 % of the committed heap free.
RETURN_IDLE_HEAP = (
    "-XX:+UseG1GC -XX:G1PeriodicGCInterval=10000 -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30"
)
LOCAL_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2.as_uri()} {RETURN_IDLE_HEAP}",
}


# The SoE settings that size the job. Under spark-submit a value the submitter set (``--conf``, its
# properties file, the cluster's spark-defaults.conf) wins over SoE's *default*; a value set in the SoE
# configuration (YAML / ``SOE_SPARK__*``) still wins over the submitter's.
SIZING: dict[str, str] = {
    "shuffle_partitions": "spark.sql.shuffle.partitions",
    "arrow_batch_rows": "spark.sql.execution.arrow.maxRecordsPerBatch",
}


def spark_conf(spark: SparkSettings, submitted: Collection[str] = ()) -> dict[str, str]:
    """Every spark.* setting this configuration asks for.

    ``submitted``: the spark.* keys the spark-submit caller already set; a `SIZING` key among them is
    left to the submitter unless the SoE configuration sets that field explicitly.
    """
    conf = dict(BASE_CONF)
    for field, key in SIZING.items():
        if key not in submitted or field in spark.model_fields_set:
            conf[key] = str(getattr(spark, field))
    if spark.launcher == "local":
        conf.update(LOCAL_CONF)
        conf["spark.driver.memory"] = local_driver_memory(spark.driver_memory)
    conf.update(spark.conf)
    return conf


def local_driver_memory(setting: str, host_bytes: int | None = None) -> str:
    """The local driver JVM's heap: ``setting`` as given, or for "auto" half the host's physical memory,
    clamped to 2g-32g (the local driver runs every task, so its heap is the job's memory)."""
    if setting != "auto":
        return setting
    if host_bytes is None:
        host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(2048, min(32 * 1024, host_bytes // 2 // 2**20))}m"


def spark_session(spark: SparkSettings) -> SparkSession:
    """getOrCreate a SparkSession for these settings (the same code runs under spark-submit)."""
    from pyspark.sql import SparkSession

    local = spark.launcher == "local"
    active = SparkSession.getActiveSession()
    if active is None:
        builder = SparkSession.builder.appName(spark.app_name)
        if local:  # under spark-submit the master comes from the submitter
            builder = builder.master(spark.master)
            # PySpark picks the worker interpreter from this variable only (the conf key is ignored
            # in-process): workers must run our interpreter, which has pyarrow and soe.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # under spark-submit the sizing keys are decided below, once the submitter's conf is known
        for key, value in spark_conf(spark, submitted=() if local else SIZING.values()).items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
    else:
        session = active
    submitter = session.sparkContext.getConf()
    submitted = () if local else [key for key in SIZING.values() if submitter.contains(key)]
    for key, value in spark_conf(spark, submitted).items():  # runtime SQL settings also on a reused session
        if key.startswith("spark.sql.") and not key.startswith("spark.sql.sources.parallel"):
            try:
                session.conf.set(key, value)
            except Exception:  # static conf of an existing session: keep the submitter's value
                pass
    return session


def release_idle_heap(session: SparkSession, spark: SparkSettings) -> None:
    """Give the local driver's unused heap back to the OS now that a job is done: one full GC, after
    which G1 keeps at most 30 % of the committed heap free (`RETURN_IDLE_HEAP`). The periodic GC alone
    waits for 10 s without any GC, which the idle JVM's own small allocations can keep postponing (the
    slow-lane test once saw no fall in 45 s). Under spark-submit the driver is not ours: nothing."""
    if spark.launcher == "local":
        session._jvm.java.lang.System.gc()  # type: ignore[union-attr]


def spark_schema(schema: pa.Schema) -> StructType:
    """Arrow (contract) schema -> Spark schema, including nullability. The one conversion helper."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def write_parquet(df: DataFrame, path: Path) -> None:
    """Write ``df`` as Parquet files into ``path`` (an unpublished temp dir of core.atomic.publish_dir)."""
    df.write.mode("overwrite").option("compression", "snappy").parquet(str(path))
