"""The ``orchestration`` config section: every knob of the DAGs and of `soe refresh` that no stage owns.

The shape of the DAGs (schedule, retries, pools, queues, sensor) is read when a DAG file is parsed;
the generation checks, retention and the promotion gate are read when a task runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.section import Section


class OrchestrationSettings(Section):
    # -- hourly DAG shape (read when the DAG file is parsed; everything else is read at run time) --
    schedule: str = "0 * * * *"  # cron of the hourly refresh; its data interval is [start, end), as_of = end
    catchup: bool = False  # run missed hours on deploy (True for a replay of history)
    start_date: datetime = datetime(2026, 1, 1, tzinfo=UTC)  # start of the first data interval of every DAG
    end_date: datetime | None = None  # no hourly run with an interval starting later (bounds a catch-up)
    max_active_runs: int = 2  # concurrent hourly runs
    retries: int = 2  # Airflow task retries (exponential backoff)
    retry_delay_s: int = 30  # first retry delay
    retry_max_delay_s: int = 900  # cap of the exponential retry backoff
    sensor_poke_s: int = 60  # seconds between checks for the hour's event partition marker
    sensor_timeout_s: int = 6 * 3600  # give up waiting for the partition after this long
    sensor_mode: Literal["reschedule", "poke"] = (
        "reschedule"  # reschedule frees the worker slot between pokes
    )
    encode_pool: str = "default_pool"  # Airflow pool of encoder tasks (e.g. "soe_gpu" with slots = GPUs)
    encode_queue: str = "default"  # executor queue of encoder tasks (e.g. "gpu" for GPU Celery workers)
    spark_conn_id: str = (
        "spark_default"  # Airflow connection of SparkSubmitOperator (launcher "spark-submit")
    )
    spark_pool: str = "default_pool"  # Airflow pool of the Spark step
    # -- failure drill of runs without conf (scheduled, backfill; read when the task runs) --
    drill_fail_shards: list[int] = []  # encode raises on these shards when the run's conf names none
    drill_fail_as_of: list[datetime] = []  # ... only in the hourly runs with these as_of; empty = every run
    drill_fail_tries: int = 0  # a drilled shard fails its first N tries, then a retry succeeds; 0 = every try
    # -- generation checks (a generation that fails one is not marked done) --
    min_coverage: float = 0.999  # share of active users that must get a vector
    min_drift_cosine: float = 0.2  # mean cosine of the same users' old vs new vector
    min_drift_users: int = 10  # drift is only judged when this many users have an old and a new vector
    min_graph_recall: float = 0.9  # graph recall@k against exact search
    lookup_sample: int = 1000  # users whose vectors are read back through the lookup client
    norm_tolerance: float = 0.02  # |‖v‖ - 1| allowed for the float16 L2-normalised vectors
    # -- retention --
    hours_to_keep: int = 48  # state/active/embedding snapshots older than this are removed
    # -- training / promotion --
    training_schedule: str | None = "@daily"  # cron of the training DAG; None = manual only
    trainset_window_hours: int = 24  # training window length, ending at the run's as_of
    trainset_kind: Literal["state", "time_split", "leave_last_out"] = (
        "state"  # state: the newest state snapshot
    )
    min_ndcg_gain: float = 0.0  # promote when candidate NDCG@10 >= current + this (strictly better if 0)
    max_staleness_hours: int = 7 * 24  # a current model older than this is stale: a not-worse candidate wins
    stale_tolerance: float = 0.005  # "not worse" for a stale current model: NDCG@10 >= current - this
    backfill_shards: int = 4  # shards of the full re-encode of all known users
    # -- observability --
    metrics_dir: Path | None = None  # textfile-collector dir of soe_<flow>.prom; None = <data root>/metrics
