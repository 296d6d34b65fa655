"""The one helper between the DAG files and the flows, kept light: importing it pulls in no numpy,
torch, pyspark or redis, and it opens no connection.

Two kinds of configuration, on purpose:

* the **shape** of a DAG (schedule, retries and backoff, ``max_active_runs``, pools, queues, the
  sensor) is what Airflow needs when it *parses* the file: `dag_shape` reads the ``orchestration``
  section (the YAML file and the ``SOE_*`` environment only: no connection, no data access);
* everything a task *does* is read when it runs: `run_task` loads the settings, turns the task
  context into the run's ``[start, end)`` (``as_of = end``) and calls one function of
  `soe.flows.tasks` with a `TaskRun`. DAG files hold no other logic.

`alert_on_failure` is the failure callback of every task (log at ERROR + an alert record next to
the run manifests).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.layout import HOUR, floor_hour, utc
from soe.config import load_settings
from soe.flows.settings import OrchestrationSettings

if TYPE_CHECKING:  # pragma: no cover
    from soe.config import Settings

log = logging.getLogger("soe.flows")
# the application of SparkSubmitOperator: the spark-submit entry point (the same functions as `soe sequences`)
SPARK_SUBMIT_APP = str(Path(__file__).resolve().parent / "spark_submit.py")
TASKS_MODULE = "soe.flows.tasks"  # where every task body lives (imported when a task runs, not at parse time)


@dataclass(frozen=True)
class DagShape:
    """What a DAG file needs at parse time: the orchestration section, and the default task arguments."""

    orchestration: OrchestrationSettings

    def default_args(self, dag_id: str) -> dict[str, Any]:
        o = self.orchestration
        return {
            "owner": "soe",
            "retries": o.retries,
            "retry_delay": timedelta(seconds=o.retry_delay_s),
            "retry_exponential_backoff": 2.0,  # delay * 2^(try-1), capped below
            "max_retry_delay": timedelta(seconds=o.retry_max_delay_s),
            "on_failure_callback": alert_on_failure(dag_id),
        }


def dag_shape() -> DagShape:
    return DagShape(load_settings().orchestration)


@dataclass(frozen=True)
class TaskRun:
    """What one running task knows: the settings, its data interval, the run's params and XComs."""

    settings: Settings
    start: datetime
    as_of: datetime  # = the end of the data interval
    params: dict[str, Any] = field(default_factory=dict)
    ti: Any = None  # the Airflow task instance (XCom pulls); None outside Airflow

    def xcom(self, task_id: str) -> Any:
        return self.ti.xcom_pull(task_ids=task_id) if self.ti is not None else None


def task_run(context: dict[str, Any], settings: Settings | None = None) -> TaskRun:
    """The `TaskRun` of an Airflow task context (settings loaded now, at run time)."""
    start, as_of = interval(context)
    return TaskRun(settings or load_settings(), start, as_of, dict(context.get("params") or {}),
                   context.get("ti") or context.get("task_instance"))


def run_task(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``soe.flows.tasks.<name>(TaskRun, *args, **kwargs)`` inside the current Airflow task."""
    from airflow.sdk import get_current_context  # only inside a running task

    fn = getattr(importlib.import_module(TASKS_MODULE), name)
    return fn(task_run(get_current_context()), *args, **kwargs)


def interval(context: dict[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) of the run. A zero-length interval (a manual trigger) means the hour ending at it."""
    return normalise_interval(context["data_interval_start"], context["data_interval_end"])


def normalise_interval(start, end) -> tuple[datetime, datetime]:
    """[start, end) as plain UTC datetimes; an empty interval (start >= end) becomes the hour ending at ``end``.

    Airflow hands out pendulum DateTimes, whose arithmetic can drop the zone (``utc(x) - timedelta``
    comes back naive); they are converted to stdlib datetimes first.
    """
    start, end = (datetime.fromtimestamp(utc(x).timestamp(), tz=timezone.utc) for x in (start, end))
    if start >= end:
        end = floor_hour(end)
        start = end - HOUR
    return start, end


def alert_on_failure(dag_id: str):
    """A failure callback that logs at ERROR and writes ``manifests/<dag>_alerts/as_of=T.json``."""

    def callback(context: dict[str, Any]) -> None:
        try:
            from soe.flows.manifest import alert  # the callback runs in the worker, not at parse time

            _, as_of = interval(context)
            ti = context.get("task_instance") or context.get("ti")
            task = getattr(ti, "task_id", "?")
            alert(load_settings().layout(), dag_id, as_of, task, repr(context.get("exception")))
        except Exception:  # an alert must never mask the task's own failure
            log.exception("failure callback of %s could not record the alert", dag_id)

    return callback
