"""The body of every Airflow task: one function per task, each ``fn(run: TaskRun, ...)``.

The DAG files in ``dags/`` only wire these together (through `dag_support.run_task`); any logic a
task needs — which launcher to use, reading the Spark step's result when spark-submit ran it,
checking a run's conf — lives here, where it is imported and tested like the rest of the flows.
"""

from __future__ import annotations

from typing import Any

from soe.flows import backfill, hourly, training
from soe.flows.dag_support import TaskRun

SPARK_TASKS = {"local": "sequences_local", "spark-submit": "sequences_submit"}  # launcher -> hourly task id
JOB_KEYS = ("model", "as_of", "num_shards")  # the keys of a mapped job that are not part of its result


# -- soe_hourly ----------------------------------------------------------------------------------
def events_ready(run: TaskRun) -> bool:
    """The sensor: every arrival-hour partition of the interval is published."""
    return not hourly.missing_partitions(run.settings, run.start, run.as_of)


def choose_launcher(run: TaskRun) -> str:
    """The task id of the configured Spark launcher (the branch taken)."""
    return SPARK_TASKS[run.settings.spark.launcher]


def sequences(run: TaskRun) -> dict[str, Any]:
    return hourly.sequences(run.settings, run.start, run.as_of)


def plan_hour(run: TaskRun) -> list[dict[str, Any]]:
    """One job per active shard, for the requested model (the ``model`` param) or the current one."""
    p = hourly.plan(run.settings, run.as_of, run.params.get("model"))
    return [{"model": p["model"], "shard": i, "num_shards": p["num_shards"]} for i in p["shards"]]


def encode_hour(run: TaskRun, job: dict[str, Any]) -> dict[str, Any]:
    drill = job["shard"] in {int(s) for s in run.params.get("drill_fail_shards") or []}
    out = hourly.encode(run.settings, job["model"], run.as_of, job["shard"], job["num_shards"], drill_fail=drill)
    return {**out, "model": job["model"]}


def publish_hour(run: TaskRun, encoded: dict[str, Any]) -> dict[str, Any]:
    return hourly.publish(run.settings, encoded["model"], run.as_of, encoded["shard"])


def graph_hour(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return hourly.graph(run.settings, jobs[0]["model"], run.as_of, jobs[0]["num_shards"])


def validate_hour(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return hourly.validate(run.settings, jobs[0]["model"], run.as_of)


def record_hour(run: TaskRun, jobs: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """Write the run manifest; the Spark step's result is its XCom, or its manifest under spark-submit."""
    seq = run.xcom(SPARK_TASKS["local"]) or hourly.submitted_sequences(run.settings, run.as_of)
    return hourly.record(run.settings, run.as_of, run.start, jobs[0]["model"], [seq, *results])


def retention(run: TaskRun) -> dict[str, Any]:
    return hourly.retention(run.settings, run.as_of)


# -- soe_training --------------------------------------------------------------------------------
def trainset(run: TaskRun) -> dict[str, Any]:
    return training.trainset(run.settings, run.as_of)


def train(run: TaskRun, built: dict[str, Any]) -> dict[str, Any]:
    return training.train(run.settings, built["path"])


def evaluate(run: TaskRun, built: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    return training.evaluate(run.settings, trained["model"], built["path"], run.as_of)


def gate(run: TaskRun, built: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any]) -> dict | bool:
    """The promotion decision, recorded; False short-circuits the backfill trigger."""
    decision = training.gate(run.settings, evaluation)
    training.record(run.settings, run.as_of, [built, trained, evaluation, decision])
    return decision if decision["promote"] else False


# -- soe_backfill --------------------------------------------------------------------------------
def plan_backfill(run: TaskRun) -> list[dict[str, Any]]:
    model = run.params.get("model")
    if not model:
        raise ValueError('soe_backfill needs conf {"model": "<version>"}')
    p = backfill.plan(run.settings, model, run.params.get("as_of"))
    return [{"model": p["model"], "as_of": p["as_of"], "shard": i, "num_shards": p["num_shards"]} for i in p["shards"]]


def encode_backfill(run: TaskRun, job: dict[str, Any]) -> dict[str, Any]:
    return {**backfill.encode(run.settings, job["model"], job["as_of"], job["shard"], job["num_shards"]), **job}


def publish_backfill(run: TaskRun, encoded: dict[str, Any]) -> dict[str, Any]:
    return hourly.publish(run.settings, encoded["model"], encoded["as_of"], encoded["shard"])


def graph_backfill(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return hourly.graph(run.settings, jobs[0]["model"], jobs[0]["as_of"], jobs[0]["num_shards"])


def validate_backfill(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return backfill.validate(run.settings, jobs[0]["model"], jobs[0]["as_of"])


def switch(run: TaskRun, jobs: list[dict[str, Any]], encoded: list[dict[str, Any]],
           results: list[dict[str, Any]]) -> dict[str, Any]:
    """Switch the current-model pointer: the last step, after every check passed."""
    shards = [{k: v for k, v in r.items() if k not in JOB_KEYS} for r in encoded]
    return backfill.switch(run.settings, jobs[0]["model"], jobs[0]["as_of"], [*shards, *results])
