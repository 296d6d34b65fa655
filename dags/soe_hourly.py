"""The hourly refresh DAG: wiring only; every task body is a function in soe.flows.tasks.

    wait_for_events -> choose_launcher -> sequences_local | sequences_submit -> reconcile -> plan
      -> encode[shard] (dynamic task mapping, encoder pool/queue) -> validate -> graph
      -> publish[shard] -> publish_graph -> record -> retention

Validate, then publish: the vectors (coverage, norms, drift) and the graph (recall) are judged on disk
before anything reaches the store; a rejected hour fails at once, without retries, and publishes nothing.

The data interval is [start, end) of the cron timetable and ``as_of = end``. Retries with
exponential backoff and the failure alert come from `default_args`; the shape (schedule, pools,
max_active_runs, catchup, start/end date) is read when the file is parsed, everything else when a
task runs.
"""

from __future__ import annotations

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
    start_date=shape.start_date,
    end_date=shape.end_date,
    catchup=o.catchup,
    max_active_runs=o.max_active_runs,
    default_args=shape.default_args(DAG_ID),
    params={
        "model": Param(
            None, type=["null", "string"], description="encode with this model instead of the current one"
        ),
        "drill_fail_shards": Param(
            [], type="array", description="failure drill: encode raises on these shards"
        ),
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
        application_args=[
            "sequences",
            "--interval",
            "{{ data_interval_start.isoformat() }}/{{ data_interval_end.isoformat() }}",
        ],
        conn_id=o.spark_conn_id,
        name="soe-sequences-{{ ts_nodash }}",
        pool=o.spark_pool,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def reconcile() -> dict:
        return run_task("reconcile")

    @task
    def plan(repaired: dict) -> list[dict]:
        return run_task("plan_hour")

    @task(pool=o.encode_pool, queue=o.encode_queue)
    def encode(job: dict) -> dict:
        return run_task("encode_hour", job)

    @task
    def validate(jobs: list, encoded: list) -> dict:
        return run_task("validate_hour", jobs)

    @task
    def graph(jobs: list, validated: dict) -> dict:
        return run_task("graph_hour", jobs)

    @task
    def publish(job: dict, graphed: dict) -> dict:
        return run_task("publish_hour", job)

    @task
    def publish_graph(jobs: list, published: list) -> dict:
        return run_task("publish_graph_hour", jobs)

    @task
    def record(
        repaired: dict,
        encoded: list,
        validated: dict,
        graphed: dict,
        published: list,
        lists: dict,
        jobs: list,
    ) -> str:
        return run_task("record_hour", jobs, [repaired, *encoded, validated, graphed, *published, lists])

    @task
    def retention(recorded: str) -> dict:
        return run_task("retention")

    launcher = choose_launcher()
    wait_for_events() >> launcher
    local = sequences_local()
    launcher >> [local, sequences_submit]
    repaired = reconcile()
    [local, sequences_submit] >> repaired
    jobs = plan(repaired)
    encoded = encode.expand(job=jobs)
    validated = validate(jobs, encoded)
    graphed = graph(jobs, validated)
    published = publish.partial(graphed=graphed).expand(job=jobs)
    lists = publish_graph(jobs, published)
    retention(record(repaired, encoded, validated, graphed, published, lists, jobs))


soe_hourly()
