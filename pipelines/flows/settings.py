"""The ``flows`` config section: knobs of the DAGs and of `soe refresh` that no stage owns.

The lead composes it into `soe.config.Settings` as ``flows``; until then `flow_settings` falls back
to the defaults, so every flow works with the plain Settings object. The validation thresholds of
a generation (coverage, drift, recall), retention and retries stay in ``settings.refresh``.
"""

from __future__ import annotations

from soe.section import Section


class FlowSettings(Section):
    # -- hourly DAG shape (read when the DAG file is parsed; everything else is read at run time) --
    schedule: str = "0 * * * *"  # cron of the hourly refresh; its data interval is [start, end), as_of = end
    catchup: bool = False  # run missed hours on deploy (True for a replay of history)
    sensor_poke_s: int = 60  # seconds between checks for the hour's event partition marker
    sensor_timeout_s: int = 6 * 3600  # give up waiting for the partition after this long
    sensor_mode: str = "reschedule"  # "reschedule" frees the worker slot between pokes; "poke" keeps it
    retry_max_delay_s: int = 900  # cap of the exponential retry backoff
    encode_pool: str = "default_pool"  # Airflow pool of encoder tasks (e.g. "soe_gpu" with slots = GPUs)
    encode_queue: str = "default"  # executor queue of encoder tasks (e.g. "gpu" for GPU Celery workers)
    spark_conn_id: str = "spark_default"  # Airflow connection of SparkSubmitOperator (launcher "spark-submit")
    spark_pool: str = "default_pool"  # Airflow pool of the Spark step
    # -- generation checks --
    min_drift_users: int = 10  # drift is only judged when this many users have an old and a new vector
    lookup_sample: int = 1000  # users whose vectors are read back through the lookup client
    norm_tolerance: float = 0.02  # |‖v‖ - 1| allowed for the float16 L2-normalised vectors
    # -- training / promotion --
    training_schedule: str | None = "@daily"  # cron of the training DAG; None = manual only
    trainset_window_hours: int = 24  # training window length, ending at the run's as_of
    trainset_kind: str = "state"  # "state": the newest state snapshot; else a kind of pipelines.trainset
    min_ndcg_gain: float = 0.0  # promote when candidate NDCG@10 >= current + this (strictly better if 0)
    max_staleness_hours: int = 7 * 24  # a current model older than this is stale: a not-worse candidate wins
    stale_tolerance: float = 0.005  # "not worse" for a stale current model: NDCG@10 >= current - this
    backfill_shards: int = 4  # shards of the full re-encode of all known users


def flow_settings(settings) -> FlowSettings:
    """The ``flows`` section of a Settings object, or the defaults while it is not composed yet."""
    section = getattr(settings, "flows", None)
    return section if isinstance(section, FlowSettings) else FlowSettings()
