"""Config sections of the Spark sequence pipeline (owned here, composed in soe.config)."""

from __future__ import annotations

from soe.section import Section


class SparkSettings(Section):
    master: str = "local[*]"  # "local[*]" embedded; "yarn", "k8s://...", "spark://..." on a cluster
    launcher: str = "local"  # "local": in-process PySpark; "spark-submit": SparkSubmitOperator / spark-submit
    app_name: str = "soe"  # Spark application name
    driver_memory: str = "4g"  # only used when the driver JVM is started by us (local launcher)
    shuffle_partitions: int = 8  # spark.sql.shuffle.partitions; raise it on a cluster
    conf: dict[str, str] = {}  # any extra spark.* settings, passed through verbatim


class SequenceSettings(Section):
    max_len: int = 200  # N: events kept per user, newest wins
    num_shards: int = 4  # K: balanced Parquet shards of active users, one encoder worker each
    bootstrap_lookback_hours: int = 24 * 7  # first run without a previous state: history read back this far
