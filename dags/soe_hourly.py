"""The hourly refresh DAG: wiring only; every step is a function in pipelines.flows.hourly.

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
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from pipelines.flows.dag_support import SPARK_SUBMIT_APP, dag_shape, interval, run_settings

DAG_ID = "soe_hourly"
shape = dag_shape()
flows = shape.flows


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable(flows.schedule, timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=flows.catchup,
    max_active_runs=shape.settings.refresh.max_active_runs,
    default_args=shape.default_args(DAG_ID),
    params={
        "model": Param(None, type=["null", "string"], description="encode with this model instead of the current one"),
        "drill_fail_shards": Param([], type="array", description="failure drill: encode raises on these shards"),
    },
    tags=["soe"],
    doc_md=__doc__,
)
def soe_hourly():
    @task.sensor(poke_interval=flows.sensor_poke_s, timeout=flows.sensor_timeout_s, mode=flows.sensor_mode)
    def wait_for_events() -> bool:
        from pipelines.flows.hourly import missing_partitions

        return not missing_partitions(run_settings(), *interval(get_current_context()))

    @task.branch
    def choose_launcher() -> str:
        launcher = run_settings().spark.launcher
        if launcher not in ("local", "spark-submit"):
            raise ValueError(f"spark.launcher must be 'local' or 'spark-submit', got {launcher!r}")
        return "sequences_submit" if launcher == "spark-submit" else "sequences_local"

    @task(pool=flows.spark_pool)
    def sequences_local() -> dict:
        from pipelines.flows.hourly import sequences

        return sequences(run_settings(), *interval(get_current_context()))

    sequences_submit = SparkSubmitOperator(
        task_id="sequences_submit",
        application=SPARK_SUBMIT_APP,
        application_args=["sequences", "--interval", "{{ data_interval_start.isoformat() }}/{{ data_interval_end.isoformat() }}"],
        conn_id=flows.spark_conn_id,
        name="soe-sequences-{{ ts_nodash }}",
        pool=flows.spark_pool,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def plan() -> list[dict]:
        from pipelines.flows.hourly import plan as run

        ctx = get_current_context()
        p = run(run_settings(), interval(ctx)[1], ctx["params"].get("model"))
        return [{"model": p["model"], "shard": i, "num_shards": p["num_shards"]} for i in p["shards"]]

    @task(pool=flows.encode_pool, queue=flows.encode_queue)
    def encode(job: dict) -> dict:
        from pipelines.flows.hourly import encode as run

        ctx = get_current_context()
        drill = job["shard"] in {int(s) for s in ctx["params"].get("drill_fail_shards") or []}
        out = run(run_settings(), job["model"], interval(ctx)[1], job["shard"], job["num_shards"], drill_fail=drill)
        return {**out, "model": job["model"]}

    @task
    def publish(encoded: dict) -> dict:
        from pipelines.flows.hourly import publish as run

        return run(run_settings(), encoded["model"], interval(get_current_context())[1], encoded["shard"])

    @task
    def graph(jobs: list, published: list) -> dict:
        from pipelines.flows.hourly import graph as run

        return run(run_settings(), jobs[0]["model"], interval(get_current_context())[1], jobs[0]["num_shards"])

    @task
    def validate(jobs: list, graphed: dict) -> dict:
        from pipelines.flows.hourly import validate as run

        return run(run_settings(), jobs[0]["model"], interval(get_current_context())[1])

    @task
    def record(jobs: list, encoded: list, published: list, graphed: dict, validated: dict) -> str:
        from pipelines.flows.hourly import record as run, submitted_sequences

        ctx = get_current_context()
        s = run_settings()
        start, as_of = interval(ctx)
        seq = ctx["ti"].xcom_pull(task_ids="sequences_local") or submitted_sequences(s, as_of)
        return run(s, as_of, start, jobs[0]["model"], [seq, *encoded, *published, graphed, validated])

    @task
    def retention(recorded: str) -> dict:
        from pipelines.flows.hourly import retention as run

        return run(run_settings(), interval(get_current_context())[1])

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
