"""The encode stage of ``soe_hourly`` alone: the DAG of tests/test_rehearsal_encoder_workers.py.

    plan -> encode[shard] (dynamic task mapping, encoder pool and queue) -> validate

The same task bodies (`soe.flows.tasks.plan_hour`, ``encode_hour``, ``validate_hour`` through
`dag_support.run_task`), the same default arguments (retries with backoff, the failure alert) and the
same ``encode`` task shape (``pool=orchestration.encode_pool``, ``queue=orchestration.encode_queue``) as
``dags/soe_hourly.py``; without the sensor, the Spark step, the graph and the publish, which need
neither a Celery worker nor a GPU queue to be rehearsed. Manual runs only (conf ``model``), with the
data interval given at the trigger.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from soe.flows.dag_support import dag_shape, run_task

DAG_ID = "soe_encode_rehearsal"
shape = dag_shape()
o = shape.orchestration


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=shape.start_date,
    catchup=False,
    max_active_runs=1,
    default_args=shape.default_args(DAG_ID),
    params={"model": Param(None, type=["null", "string"], description="encode with this model")},
    tags=["soe", "rehearsal"],
    doc_md=__doc__,
)
def soe_encode_rehearsal():
    @task
    def plan() -> list[dict]:
        return run_task("plan_hour")

    @task(pool=o.encode_pool, queue=o.encode_queue)
    def encode(job: dict) -> dict:
        return run_task("encode_hour", job)

    @task
    def validate(jobs: list, encoded: list) -> dict:
        return run_task("validate_hour", jobs)

    jobs = plan()
    validate(jobs, encode.expand(job=jobs))


soe_encode_rehearsal()
