"""The training DAG (daily, or triggered by hand): wiring only; every task body is in soe.flows.tasks.

    trainset -> train -> evaluate (candidate and current model on the same split) -> gate
      -> trigger soe_backfill with the candidate (only when the gate promotes it)

The gate is a short-circuit: when the candidate is not better, the trigger is skipped and the
current model keeps serving. The backfill DAG switches the pointer, never this one.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from soe.flows.dag_support import dag_shape, run_task

DAG_ID = "soe_training"
shape = dag_shape()


@dag(
    dag_id=DAG_ID,
    schedule=shape.orchestration.training_schedule,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
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

    built = trainset()
    trained = train(built)
    decision = gate(built, trained, evaluate(built, trained))
    decision >> TriggerDagRunOperator(
        task_id="trigger_backfill",
        trigger_dag_id="soe_backfill",
        conf={"model": "{{ ti.xcom_pull(task_ids='train')['model'] }}"},
        wait_for_completion=False,
    )


soe_training()
