"""The backfill DAG of a new model: scheduled on the asset ``soe://models/promoted`` (an event from
soe_training's ``promote``, the version in its extra), or triggered by hand with conf {"model": ...}.

    plan -> encode[shard] (state source, encoder pool/queue) -> validate -> graph -> publish[shard]
      -> publish_graph -> switch

Wiring only; every task body is in soe.flows.tasks. The pointer switch is the last task: any
failure before it leaves the old model serving.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from soe.flows.dag_support import dag_shape, promoted_model_asset, run_task

DAG_ID = "soe_backfill"
shape = dag_shape()
o = shape.orchestration


@dag(
    dag_id=DAG_ID,
    schedule=[promoted_model_asset()],
    start_date=shape.start_date,
    catchup=False,
    max_active_runs=1,
    default_args=shape.default_args(DAG_ID),
    params={
        "model": Param(
            None,
            type=["null", "string"],
            description="the model version to backfill and switch to (default: the asset's)",
        ),
        "as_of": Param(
            None, type=["null", "string"], description="use the newest state at or before this time"
        ),
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
    def validate(jobs: list, encoded: list) -> dict:
        return run_task("validate_backfill", jobs)

    @task
    def graph(jobs: list, validated: dict) -> dict:
        return run_task("graph_backfill", jobs)

    @task
    def publish(job: dict, graphed: dict) -> dict:
        return run_task("publish_backfill", job)

    @task
    def publish_graph(jobs: list, published: list) -> dict:
        return run_task("publish_graph_backfill", jobs)

    @task
    def switch(
        jobs: list, encoded: list, validated: dict, graphed: dict, published: list, lists: dict
    ) -> dict:
        return run_task("switch", jobs, encoded, [validated, graphed, *published, lists])

    jobs = plan()
    encoded = encode.expand(job=jobs)
    validated = validate(jobs, encoded)
    graphed = graph(jobs, validated)
    published = publish.partial(graphed=graphed).expand(job=jobs)
    switch(jobs, encoded, validated, graphed, published, publish_graph(jobs, published))


soe_backfill()
