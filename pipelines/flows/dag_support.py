"""What the DAG files share, kept light: importing this pulls in no numpy, torch, pyspark or redis.

Two kinds of configuration, on purpose:

* the **shape** of a DAG (schedule, retries and backoff, ``max_active_runs``, pools and queues) is
  what Airflow needs when it *parses* the file. `dag_shape` reads it with `load_settings()`, which
  only reads the YAML file and the ``SOE_*`` environment: no connection, no data access;
* everything a task *does* is read at run time: each task calls `run_settings()` first.

`interval` turns the task context into the run's ``[start, end)`` (``as_of = end``); `alert_on_failure`
is the failure callback of every task (log at ERROR + an alert record next to the run manifests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from soe.layout import HOUR, floor_hour, utc

log = logging.getLogger("soe.flows")
# the application of SparkSubmitOperator: the pipelines' spark-submit entry point (same functions as `soe sequences`)
SPARK_SUBMIT_APP = str(Path(__file__).resolve().parents[1] / "submit.py")


@dataclass(frozen=True)
class DagShape:
    settings: Any  # the parse-time Settings (only shape fields are used)
    flows: Any  # its FlowSettings

    def default_args(self, dag_id: str) -> dict[str, Any]:
        r = self.settings.refresh
        return {
            "owner": "soe",
            "retries": r.retries,
            "retry_delay": timedelta(seconds=r.retry_delay_s),
            "retry_exponential_backoff": 2.0,  # delay * 2^(try-1), capped below
            "max_retry_delay": timedelta(seconds=self.flows.retry_max_delay_s),
            "on_failure_callback": alert_on_failure(dag_id),
        }


def dag_shape() -> DagShape:
    from pipelines.flows.settings import flow_settings
    from soe.config import load_settings

    s = load_settings()
    return DagShape(s, flow_settings(s))


def run_settings():
    """The Settings a task runs with, loaded when the task runs (never when the DAG is parsed)."""
    from soe.config import load_settings

    return load_settings()


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
            from pipelines.flows.manifest import alert

            _, as_of = interval(context)
            ti = context.get("task_instance") or context.get("ti")
            task = getattr(ti, "task_id", "?")
            alert(run_settings().layout(), dag_id, as_of, task, repr(context.get("exception")))
        except Exception:  # an alert must never mask the task's own failure
            log.exception("failure callback of %s could not record the alert", dag_id)

    return callback
