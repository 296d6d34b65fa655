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

One Airflow asset joins the DAGs: ``soe://models/promoted`` (`PROMOTED_MODEL_URI`). The training DAG's
``promote`` task emits an event on it when the gate promotes a candidate, with the model version in the
event's extra; the backfill DAG is scheduled on that asset and reads the version back
(`TaskRun.asset_extras`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
# the asset of a promoted model: emitted by soe_training's promote task, schedules soe_backfill
PROMOTED_MODEL_URI = "soe://models/promoted"


def promoted_model_asset():
    """The Airflow asset of a promoted model (imports airflow.sdk: only DAG files and tasks call this)."""
    from airflow.sdk import Asset

    return Asset(PROMOTED_MODEL_URI)


@dataclass(frozen=True)
class DagShape:
    """What a DAG file needs at parse time: the orchestration section, and the default task arguments."""

    orchestration: OrchestrationSettings

    @property
    def start_date(self) -> datetime:
        """``orchestration.start_date`` as an aware UTC datetime (a naive value is read as UTC)."""
        return _aware(self.orchestration.start_date)

    @property
    def end_date(self) -> datetime | None:
        """``orchestration.end_date`` (aware UTC), or None: the hourly schedule is open-ended."""
        end = self.orchestration.end_date
        return None if end is None else _aware(end)

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


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class TaskRun:
    """What one running task knows: the settings, its data interval, the run's params and XComs."""

    settings: Settings
    start: datetime
    as_of: datetime  # = the end of the data interval
    params: dict[str, Any] = field(default_factory=dict)
    ti: Any = None  # the Airflow task instance (XCom pulls); None outside Airflow
    context: Any = None  # the Airflow task context (asset events); None outside Airflow

    def xcom(self, task_id: str) -> Any:
        return self.ti.xcom_pull(task_ids=task_id) if self.ti is not None else None

    @property
    def try_number(self) -> int:
        """This task instance's attempt: 1 on the first try, 2 on the first retry (1 outside Airflow)."""
        return int(getattr(self.ti, "try_number", None) or 1)

    def asset_extras(self, uri: str) -> list[dict[str, Any]]:
        """The extras of the asset events on ``uri`` that triggered this run, oldest first ([] if none)."""
        events = (self.context or {}).get("triggering_asset_events") or {}
        for asset, found in events.items():
            if getattr(asset, "uri", None) == uri:
                ordered = sorted(found, key=lambda e: e.timestamp)
                return [dict(e.extra or {}) for e in ordered]
        return []

    def emit(self, uri: str, extra: dict[str, Any]) -> None:
        """Set the extra of this task's event on the asset ``uri`` (the task must list it as an outlet)."""
        if self.context is None:
            return
        from airflow.sdk import Asset

        self.context["outlet_events"][Asset(uri)].extra = dict(extra)


def task_run(context: dict[str, Any], settings: Settings | None = None) -> TaskRun:
    """The `TaskRun` of an Airflow task context (settings loaded now, at run time)."""
    start, as_of = interval(context)
    return TaskRun(
        settings or load_settings(),
        start,
        as_of,
        dict(context.get("params") or {}),
        context.get("ti") or context.get("task_instance"),
        context,
    )


def run_task(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``soe.flows.tasks.<name>(TaskRun, *args, **kwargs)`` inside the current Airflow task."""
    from airflow.sdk import get_current_context  # only inside a running task

    fn = getattr(importlib.import_module(TASKS_MODULE), name)
    return fn(task_run(get_current_context()), *args, **kwargs)


def interval(context: dict[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) of the run. A zero-length interval (a manual trigger) means the hour ending at it; a run
    without one (asset-triggered runs may have none) the hour ending at its ``run_after``."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None:
        run_after = getattr(context.get("dag_run"), "run_after", None)
        start = end = end or start or context.get("logical_date") or run_after or datetime.now(UTC)
    return normalise_interval(start, end)


def normalise_interval(start, end) -> tuple[datetime, datetime]:
    """[start, end) as plain UTC datetimes; an empty interval (start >= end) is the hour ending at ``end``.

    Airflow hands out pendulum DateTimes, whose arithmetic can drop the zone (``utc(x) - timedelta``
    comes back naive); they are converted to stdlib datetimes first.
    """
    start, end = (datetime.fromtimestamp(utc(x).timestamp(), tz=UTC) for x in (start, end))
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
