"""The hourly refresh DAG: wiring only; every task body is a function in soe.flows.tasks.

    wait_for_events -> choose_launcher -> sequences_local | sequences_submit -> plan
      -> encode[shard] (dynamic task mapping, encoder pool/queue) -> publish[shard]
      -> graph -> validate -> record -> retention

The data interval is [start, end) of the cron timetable and ``as_of = end``. Retries with
exponential backoff and the failure alert come from `default_args`; the shape (schedule, pools,
max_active_runs) is read when the file is parsed, everything else when a task runs.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from soe.flows.dag_support import SPARK_SUBMIT_APP, dag_shape, run_task

DAG_ID = "soe_hourly"
shape = dag_shape()
o = shape.orchestration


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable(o.schedule, timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=o.catchup,
    max_active_runs=o.max_active_runs,
    default_args=shape.default_args(DAG_ID),
    params={
        "model": Param(None, type=["null", "string"], description="encode with this model instead of the current one"),
        "drill_fail_shards": Param([], type="array", description="failure drill: encode raises on these shards"),
    },
    tags=["soe"],
    doc_md=__doc__,
)
def soe_hourly():
    @task.sensor(poke_interval=o.sensor_poke_s, timeout=o.sensor_timeout_s, mode=o.sensor_mode)
    def wait_for_events() -> bool:
        return run_task("events_ready")

    @task.branch
    def choose_launcher() -> str:
        return run_task("choose_launcher")

    @task(pool=o.spark_pool)
    def sequences_local() -> dict:
        return run_task("sequences")

    sequences_submit = SparkSubmitOperator(
        task_id="sequences_submit",
        application=SPARK_SUBMIT_APP,
        application_args=["sequences", "--interval", "{{ data_interval_start.isoformat() }}/{{ data_interval_end.isoformat() }}"],
        conn_id=o.spark_conn_id,
        name="soe-sequences-{{ ts_nodash }}",
        pool=o.spark_pool,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def plan() -> list[dict]:
        return run_task("plan_hour")

    @task(pool=o.encode_pool, queue=o.encode_queue)
    def encode(job: dict) -> dict:
        return run_task("encode_hour", job)

    @task
    def publish(encoded: dict) -> dict:
        return run_task("publish_hour", encoded)

    @task
    def graph(jobs: list, published: list) -> dict:
        return run_task("graph_hour", jobs)

    @task
    def validate(jobs: list, graphed: dict) -> dict:
        return run_task("validate_hour", jobs)

    @task
    def record(jobs: list, encoded: list, published: list, graphed: dict, validated: dict) -> str:
        return run_task("record_hour", jobs, [*encoded, *published, graphed, validated])

    @task
    def retention(recorded: str) -> dict:
        return run_task("retention")

    launcher = choose_launcher()
    wait_for_events() >> launcher
    local = sequences_local()
    launcher >> [local, sequences_submit]
    jobs = plan()
    [local, sequences_submit] >> jobs
    encoded = encode.expand(job=jobs)
    published = publish.expand(encoded=encoded)
    graphed = graph(jobs, published)
    validated = validate(jobs, graphed)
    retention(record(jobs, encoded, published, graphed, validated))


soe_hourly()
