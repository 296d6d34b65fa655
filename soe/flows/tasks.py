"""The body of every Airflow task: one function per task, each ``fn(run: TaskRun, ...)``.

The DAG files in ``dags/`` only wire these together (through `dag_support.run_task`); any logic a
task needs — which launcher to use, reading the Spark step's result when spark-submit ran it,
checking a run's conf — lives here, where it is imported and tested like the rest of the flows.
"""

from __future__ import annotations

from typing import Any

from core.layout import stamp, utc
from soe.flows import backfill, hourly, training
from soe.flows.checks import GenerationRejected
from soe.flows.dag_support import PROMOTED_MODEL_URI, TaskRun

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


def drill_fails(run: TaskRun, shard: int) -> bool:
    """Whether the failure drill makes this encoder shard raise now.

    The run's conf (``drill_fail_shards``) names the shards; a run without one (scheduled, backfill)
    takes ``orchestration.drill_fail_shards``, limited to the hours ``orchestration.drill_fail_as_of``
    when set. ``orchestration.drill_fail_tries`` = N > 0 fails only the first N tries, so the
    scheduler's retry succeeds (a retry drill); 0 fails every try.
    """
    o = run.settings.orchestration
    shards = run.params.get("drill_fail_shards") or []
    if not shards and (not o.drill_fail_as_of or any(utc(t) == run.as_of for t in o.drill_fail_as_of)):
        shards = o.drill_fail_shards
    if shard not in {int(s) for s in shards}:
        return False
    return o.drill_fail_tries <= 0 or run.try_number <= o.drill_fail_tries


def encode_hour(run: TaskRun, job: dict[str, Any]) -> dict[str, Any]:
    drill = drill_fails(run, job["shard"])
    out = hourly.encode(
        run.settings, job["model"], run.as_of, job["shard"], job["num_shards"], drill_fail=drill
    )
    return {**out, "model": job["model"]}


def reconcile(run: TaskRun) -> dict[str, Any]:
    """Repair what the store lost (a crash after an hour completed) before this hour publishes."""
    return hourly.reconcile(run.settings)


def validate_hour(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return judged(hourly.validate_vectors, run.settings, jobs[0]["model"], run.as_of, jobs[0]["num_shards"])


def graph_hour(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return judged(hourly.graph, run.settings, jobs[0]["model"], run.as_of)


def publish_hour(run: TaskRun, job: dict[str, Any]) -> dict[str, Any]:
    return hourly.publish(run.settings, job["model"], run.as_of, job["shard"])


def publish_graph_hour(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return hourly.publish_graph(run.settings, jobs[0]["model"], run.as_of)


def judged(step, *args: Any) -> dict[str, Any]:
    """Run a judging step; a rejected generation fails the task at once, without retries (retrying
    cannot change a verdict on the same data). The failure callback writes the alert."""
    from airflow.exceptions import AirflowFailException  # only inside a running Airflow task

    try:
        return step(*args)
    except GenerationRejected as exc:
        raise AirflowFailException(str(exc)) from exc


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


def gate(
    run: TaskRun, built: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any]
) -> dict | bool:
    """The promotion decision, recorded; False short-circuits `promote` (no asset event, no backfill)."""
    decision = training.gate(run.settings, evaluation)
    training.record(run.settings, run.as_of, [built, trained, evaluation, decision])
    return {**decision, "model": trained["model"]} if decision["promote"] else False


def promote(run: TaskRun, decision: dict[str, Any]) -> dict[str, Any]:
    """Emit the promoted-model asset event: its extra carries the version (and the training as_of) to
    soe_backfill, which the event schedules. The pointer is not switched here."""
    extra = {"model": decision["model"], "as_of": stamp(run.as_of), "source": "soe_training"}
    run.emit(PROMOTED_MODEL_URI, extra)
    return extra


# -- soe_backfill --------------------------------------------------------------------------------
def backfill_request(run: TaskRun) -> tuple[str, str | None]:
    """The model (and as_of) to backfill: the run's conf, else the newest promoted-model asset event."""
    model, as_of = run.params.get("model"), run.params.get("as_of")
    if not model:
        events = [e for e in run.asset_extras(PROMOTED_MODEL_URI) if e.get("model")]
        if events:
            model, as_of = events[-1]["model"], as_of or events[-1].get("as_of")
    if not model:
        raise ValueError(f'soe_backfill needs conf {{"model": "<version>"}} or a {PROMOTED_MODEL_URI} event')
    return model, as_of


def plan_backfill(run: TaskRun) -> list[dict[str, Any]]:
    model, as_of = backfill_request(run)
    p = backfill.plan(run.settings, model, as_of)
    return [
        {"model": p["model"], "as_of": p["as_of"], "shard": i, "num_shards": p["num_shards"]}
        for i in p["shards"]
    ]


def encode_backfill(run: TaskRun, job: dict[str, Any]) -> dict[str, Any]:
    out = backfill.encode(run.settings, job["model"], job["as_of"], job["shard"], job["num_shards"])
    return {**out, **job}


def validate_backfill(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return judged(backfill.validate, run.settings, jobs[0]["model"], jobs[0]["as_of"], jobs[0]["num_shards"])


def graph_backfill(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return judged(hourly.graph, run.settings, jobs[0]["model"], jobs[0]["as_of"])


def publish_backfill(run: TaskRun, job: dict[str, Any]) -> dict[str, Any]:
    return hourly.publish(run.settings, job["model"], job["as_of"], job["shard"])


def publish_graph_backfill(run: TaskRun, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return backfill.publish_graph(run.settings, jobs[0]["model"], jobs[0]["as_of"])


def switch(
    run: TaskRun, jobs: list[dict[str, Any]], encoded: list[dict[str, Any]], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """Switch the current-model pointer: the last step, after every check passed."""
    shards = [{k: v for k, v in r.items() if k not in JOB_KEYS} for r in encoded]
    return backfill.switch(run.settings, jobs[0]["model"], jobs[0]["as_of"], [*shards, *results])
