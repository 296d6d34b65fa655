"""The training DAG (daily, or triggered by hand): wiring only; every task body is in soe.flows.tasks.

    trainset -> train -> evaluate (candidate and current model on the same split) -> gate
      -> promote: an event on the asset soe://models/promoted, extra {"model": <candidate>, "as_of": ...}
         (only when the gate promotes it), which schedules soe_backfill

The gate is a short-circuit: when the candidate is not better, `promote` is skipped, no asset event
is emitted and the current model keeps serving. The backfill DAG switches the pointer, never this one.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from soe.flows.dag_support import dag_shape, promoted_model_asset, run_task

DAG_ID = "soe_training"
shape = dag_shape()


@dag(
    dag_id=DAG_ID,
    schedule=shape.orchestration.training_schedule,
    start_date=shape.start_date,
    catchup=False,
    max_active_runs=1,
    default_args=shape.default_args(DAG_ID),
    tags=["soe"],
    doc_md=__doc__,
)
def soe_training():
    @task
    def trainset() -> dict:
        return run_task("trainset")

    @task
    def train(built: dict) -> dict:
        return run_task("train", built)

    @task
    def evaluate(built: dict, trained: dict) -> dict:
        return run_task("evaluate", built, trained)

    @task.short_circuit
    def gate(built: dict, trained: dict, evaluation: dict) -> dict | bool:
        return run_task("gate", built, trained, evaluation)

    @task(outlets=[promoted_model_asset()])
    def promote(decision: dict) -> dict:
        return run_task("promote", decision)

    built = trainset()
    trained = train(built)
    promote(gate(built, trained, evaluate(built, trained)))


soe_training()
