"""The backfill DAG of a new model (triggered by soe_training, or by hand with conf {"model": ...}).

    plan -> encode[shard] (state source, encoder pool/queue) -> publish[shard] -> graph -> validate -> switch

Wiring only; the steps are pipelines.flows.backfill. The pointer switch is the last task: any
failure before it leaves the old model serving.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, get_current_context, task

from pipelines.flows.dag_support import dag_shape, run_settings

DAG_ID = "soe_backfill"
shape = dag_shape()
flows = shape.flows


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
        from pipelines.flows.backfill import plan as run

        params = get_current_context()["params"]
        if not params.get("model"):
            raise ValueError('soe_backfill needs conf {"model": "<version>"}')
        p = run(run_settings(), params["model"], params.get("as_of"))
        return [{"model": p["model"], "as_of": p["as_of"], "shard": i, "num_shards": p["num_shards"]} for i in p["shards"]]

    @task(pool=flows.encode_pool, queue=flows.encode_queue)
    def encode(job: dict) -> dict:
        from pipelines.flows.backfill import encode as run

        return {**run(run_settings(), job["model"], job["as_of"], job["shard"], job["num_shards"]), **job}

    @task
    def publish(encoded: dict) -> dict:
        from pipelines.flows.hourly import publish as run

        return run(run_settings(), encoded["model"], encoded["as_of"], encoded["shard"])

    @task
    def graph(jobs: list, published: list) -> dict:
        from pipelines.flows.hourly import graph as run

        return run(run_settings(), jobs[0]["model"], jobs[0]["as_of"], jobs[0]["num_shards"])

    @task
    def validate(jobs: list, graphed: dict) -> dict:
        from pipelines.flows.backfill import validate as run

        return run(run_settings(), jobs[0]["model"], jobs[0]["as_of"])

    @task
    def switch(jobs: list, encoded: list, published: list, graphed: dict, validated: dict) -> dict:
        from pipelines.flows.backfill import switch as run

        results = [{k: v for k, v in r.items() if k not in ("model", "as_of", "num_shards")} for r in encoded]
        return run(run_settings(), jobs[0]["model"], jobs[0]["as_of"], [*results, *published, graphed, validated])

    jobs = plan()
    encoded = encode.expand(job=jobs)
    published = publish.expand(encoded=encoded)
    graphed = graph(jobs, published)
    switch(jobs, encoded, published, graphed, validate(jobs, graphed))


soe_backfill()
