"""The backfill DAG of a new model (triggered by soe_training, or by hand with conf {"model": ...}).

    plan -> encode[shard] (state source, encoder pool/queue) -> publish[shard] -> graph -> validate -> switch

Wiring only; every task body is in soe.flows.tasks. The pointer switch is the last task: any
failure before it leaves the old model serving.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, task

from soe.flows.dag_support import dag_shape, run_task

DAG_ID = "soe_backfill"
shape = dag_shape()
o = shape.orchestration


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=shape.default_args(DAG_ID),
    params={
        "model": Param(None, type=["null", "string"], description="the model version to backfill and switch to"),
        "as_of": Param(None, type=["null", "string"], description="use the newest state at or before this time"),
    },
    tags=["soe"],
    doc_md=__doc__,
)
def soe_backfill():
    @task
    def plan() -> list[dict]:
        return run_task("plan_backfill")

    @task(pool=o.encode_pool, queue=o.encode_queue)
    def encode(job: dict) -> dict:
        return run_task("encode_backfill", job)

    @task
    def publish(encoded: dict) -> dict:
        return run_task("publish_backfill", encoded)

    @task
    def graph(jobs: list, published: list) -> dict:
        return run_task("graph_backfill", jobs)

    @task
    def validate(jobs: list, graphed: dict) -> dict:
        return run_task("validate_backfill", jobs)

    @task
    def switch(jobs: list, encoded: list, published: list, graphed: dict, validated: dict) -> dict:
        return run_task("switch", jobs, encoded, [*published, graphed, validated])

    jobs = plan()
    encoded = encode.expand(job=jobs)
    published = publish.expand(encoded=encoded)
    graphed = graph(jobs, published)
    switch(jobs, encoded, published, graphed, validate(jobs, graphed))


soe_backfill()
