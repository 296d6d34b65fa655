"""Config sections of the Spark sequence pipeline (owned here, composed in soe.config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.layout import Layout
from core.section import Section
from core.settings import DataSettings, EventSettings


class SparkSettings(Section):
    master: str = "local[*]"  # "local[*]" embedded; "yarn", "k8s://...", "spark://..." on a cluster
    launcher: Literal["local", "spark-submit"] = (
        "local"  # local: in-process PySpark; spark-submit: SparkSubmitOperator
    )
    app_name: str = "soe"  # Spark application name
    # local launcher only (the driver JVM we start, which also runs the tasks): "auto" = half the host's
    # memory, 2g-32g (1M active users of 1M known needed more than 4g); or a JVM size like "4g"
    driver_memory: str = "auto"
    shuffle_partitions: int = 8  # spark.sql.shuffle.partitions; raise it on a cluster
    arrow_batch_rows: int = 100_000  # rows per Arrow batch handed to the validator in the executors
    conf: dict[str, str] = {}  # any extra spark.* settings, passed through verbatim


class SequenceSettings(Section):
    max_len: int = 200  # N: events kept per user, newest wins
    num_shards: int = 4  # K: balanced Parquet shards of active users, one encoder worker each
    bootstrap_lookback_hours: int = 24 * 7  # first run without a previous state: history read back this far
    state_files: int = 8  # Parquet files of a state base layer (a rebuild or compaction coalesces to this)
    compact_max_layers: int = 24  # a state holds at most this many hourly delta layers before a compaction
    compact_delta_ratio: float = 1.0  # ... and compacts earlier when delta rows exceed this x the base rows
    broadcast_max_users: int = 20_000_000  # a compaction broadcasts per-layer user-id sets up to this size
    broadcast_active_ids: bool = True  # broadcast the interval's active user ids: the state is read map-only;
    # turn off when one interval's active ids no longer fit in executor memory (Spark then shuffles the state)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the Spark stage reads: its own sections and the base ones (composed in soe.config)."""

    data: DataSettings  # where the event log, state and shards live
    events: EventSettings  # the event vocabulary and validation limits
    spark: SparkSettings  # the Spark session
    sequences: SequenceSettings  # last-N state and active shards

    def layout(self) -> Layout:
        return self.data.layout()
