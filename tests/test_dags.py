"""DagBag: every DAG imports without errors, does no heavy work and opens no connection at parse time,
and has the shape the issue asks for (mapped encode, retries with backoff, bounded runs, two launchers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, socket, sys, time
attempts = []
_connect = socket.socket.connect
def connect(self, address):
    attempts.append(str(address))
    raise OSError("no connections at DAG parse time")
socket.socket.connect = connect
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
parse_s = time.perf_counter() - t0
out = {"errors": {k: v[-400:] for k, v in bag.import_errors.items()}, "dags": {}, "connects": attempts,
       "parse_s": parse_s,
       "heavy": [m for m in ("torch", "pyspark", "faiss", "redis", "pandas") if m in sys.modules]}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for t in dag.tasks:
        tasks[t.task_id] = {"mapped": bool(getattr(t, "is_mapped", False)), "retries": t.retries,
                            "backoff": bool(t.retry_exponential_backoff), "pool": t.pool, "queue": t.queue,
                            "upstream": sorted(t.upstream_task_ids), "type": type(t).__name__,
                            "callback": bool(t.on_failure_callback),
                            "outlets": [getattr(a, "uri", None) for a in t.outlets]}
    tt = dag.timetable
    condition = getattr(tt, "asset_condition", None)
    out["dags"][dag_id] = {"max_active_runs": dag.max_active_runs, "tasks": tasks,
                           "timetable": type(tt).__name__, "catchup": dag.catchup,
                           "start_date": dag.start_date.isoformat(),
                           "end_date": dag.end_date and dag.end_date.isoformat(),
                           "schedule_assets": sorted(a.uri for a in getattr(condition, "objects", ()))}
sub = bag.dags["soe_hourly"].task_dict["sequences_submit"]
out["submit"] = {"application": sub.application, "args": sub.application_args}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-dagbag")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SOE_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        SOE_ORCHESTRATION__RETRIES="3",
        SOE_ORCHESTRATION__MAX_ACTIVE_RUNS="1",
        SOE_DATA__ROOT=str(home / "no-such-root"),
        SOE_ORCHESTRATION__CATCHUP="true",
        SOE_ORCHESTRATION__START_DATE="2026-03-01T05:00Z",
        SOE_ORCHESTRATION__END_DATE="2026-03-01T08:00Z",
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE, str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_dag_imports_without_errors_or_heavy_work(dagbag):
    assert dagbag["errors"] == {}
    assert set(dagbag["dags"]) == {"soe_hourly", "soe_training", "soe_backfill"}
    assert dagbag["heavy"] == [], "DAG files must not import torch/pyspark/faiss/redis at parse time"
    assert dagbag["connects"] == [], "DAG files must not open connections at parse time"


def test_hourly_dag_shape(dagbag):
    d = dagbag["dags"]["soe_hourly"]
    t = d["tasks"]
    assert d["max_active_runs"] == 1  # from SOE_ORCHESTRATION__MAX_ACTIVE_RUNS, read when the file is parsed
    assert d["timetable"] == "CronDataIntervalTimetable"  # a real [start, end) data interval per run
    assert d["catchup"] is True  # orchestration.catchup, start_date, end_date: read when the file is parsed
    assert d["start_date"] == "2026-03-01T05:00:00+00:00" and d["end_date"] == "2026-03-01T08:00:00+00:00"
    for task in t.values():  # retries with exponential backoff and the alert callback on every task
        assert task["retries"] == 3 and task["backoff"] and task["callback"], task
    assert t["encode"]["mapped"] and t["publish"]["mapped"]  # dynamic task mapping over shards
    assert t["encode"]["pool"] == "default_pool" and t["encode"]["queue"] == "default"
    assert t["sequences_submit"]["type"] == "SparkSubmitOperator"
    assert t["choose_launcher"]["upstream"] == ["wait_for_events"]
    assert t["sequences_local"]["upstream"] == t["sequences_submit"]["upstream"] == ["choose_launcher"]
    assert t["reconcile"]["upstream"] == ["sequences_local", "sequences_submit"]  # repair the store first
    assert t["plan"]["upstream"] == ["reconcile"]
    # validate, then publish: nothing reaches the store before the vectors and the graph are judged
    assert t["validate"]["upstream"] == ["encode", "plan"]  # every encoded shard
    assert t["graph"]["upstream"] == ["plan", "validate"]
    assert t["publish"]["upstream"] == ["graph", "plan"] and t["publish"]["mapped"]
    assert t["publish_graph"]["upstream"] == ["plan", "publish"]
    assert {"validate", "graph", "publish", "publish_graph", "reconcile"} <= set(t["record"]["upstream"])
    assert t["retention"]["upstream"] == ["record"]
    assert Path(dagbag["submit"]["application"]).is_file()
    assert dagbag["submit"]["args"][0] == "sequences" and "data_interval_start" in dagbag["submit"]["args"][2]


def test_training_and_backfill_dag_shape(dagbag):
    tr = dagbag["dags"]["soe_training"]["tasks"]
    assert tr["promote"]["upstream"] == ["gate"] and tr["gate"]["type"] == "_ShortCircuitDecoratedOperator"
    assert tr["promote"]["outlets"] == ["soe://models/promoted"]  # the asset event scheduling the backfill
    assert all(not t["outlets"] for k, t in tr.items() if k != "promote")  # a skipped promote emits nothing
    assert tr["evaluate"]["upstream"] == ["train", "trainset"]
    d = dagbag["dags"]["soe_backfill"]
    assert d["timetable"] == "AssetTriggeredTimetable" and d["schedule_assets"] == ["soe://models/promoted"]
    bf = d["tasks"]
    assert bf["encode"]["mapped"] and bf["publish"]["mapped"]
    assert bf["validate"]["upstream"] == ["encode", "plan"]
    assert bf["graph"]["upstream"] == ["plan", "validate"]
    assert bf["publish"]["upstream"] == ["graph", "plan"]  # judged before anything is published
    assert set(bf["switch"]["upstream"]) >= {"validate", "graph", "publish", "publish_graph"}  # switch last
