"""A real Airflow 3 deployment runs the SoE DAGs: the scheduler itself, not `airflow dags test`.

`soe.flows.airflow_run.AirflowDeployment` on loopback: API server, DAG processor, triggerer and the
scheduler with the LocalExecutor, on a throw-away PostgreSQL 15 cluster (`PostgresCluster`; SQLite
only when PostgreSQL cannot be started here, and the reason is printed). Real Redis, real local Spark,
torch and FAISS in the task processes, on a tiny synthetic log (150 users).

In order, on one deployment (the tests share it and run in file order):

1. catch-up: ``soe_hourly`` with ``catchup`` on and a start/end date in the past: the scheduler
   creates and runs three consecutive hours (run_type ``scheduled``). In the first, encoder shard 1
   fails on purpose on its first try (the drill of ``orchestration.drill_fail_*``) and the scheduler's
   retry succeeds; in the third, the events partition is missing, the sensor (reschedule mode) gives
   its slot back (``up_for_reschedule``) and succeeds once the test lands the partition's ``_SUCCESS``;
2. training -> backfill through an asset: a manual ``soe_training`` run promotes a trained candidate
   over the random current model; its ``promote`` task emits ``soe://models/promoted`` (the version
   in the event's extra), which schedules ``soe_backfill`` (run_type ``asset_triggered``); the
   pointer switches to the candidate;
3. ``airflow backfill create`` for the two hours after the catch-up (run_type ``backfill``), encoded
   with the new model;
4. every run's type and state through the REST API and ``airflow dags list-runs``, and SoE's own run
   manifest of every hour.

Run it: ``.venv/bin/python -m pytest tests/test_airflow_scheduler.py -m slow -s`` (-s prints the log:
each run's type and state, and the timings). 13 to 17 minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from core.layout import HOUR, utc
from soe.flows.dag_support import PROMOTED_MODEL_URI
from soe.flows.manifest import read_manifest
from tests.fixtures.airflow import log

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.usefixtures("sigterm_runs_the_finalizers"),
]

START = utc("2026-01-01T00:00Z")  # first hour of the synthetic log
BOOT = 3  # hours of history before the first scheduled run
T0 = START + HOUR * BOOT  # start_date of soe_hourly: as_of of the bootstrap state and the first model
SCHEDULED = [T0 + HOUR * i for i in range(3)]  # logical dates (interval starts) the catch-up runs
BACKFILLED = [T0 + HOUR * i for i in (3, 4)]  # logical dates `airflow backfill create` runs
DRILL_AS_OF = SCHEDULED[0] + HOUR  # the hour whose encoder shard 1 fails its first try
LATE_HOUR = SCHEDULED[2]  # the arrival hour whose partition lands after the sensor's first poke


def as_of(run: dict) -> datetime:
    return utc(run["data_interval_end"])


def tiny_settings(root: Path, redis):
    from soe.config import load_settings

    s = load_settings(environ={"SOE_DATA__ROOT": str(root)})
    s.redis = redis
    s.train.epochs, s.train.model = 2, {"d_model": 32, "n_layers": 1, "n_heads": 2}
    s.sequences.num_shards, s.sequences.bootstrap_lookback_hours = 2, BOOT + 1
    s.spark.master, s.spark.shuffle_partitions, s.spark.driver_memory = "local[2]", 2, "1g"
    o = s.orchestration
    o.min_drift_cosine = 0.05  # a 2-epoch d=32 model moves active users' vectors a lot
    o.catchup, o.start_date, o.end_date = True, T0, SCHEDULED[-1]  # the scheduler replays exactly 3 hours
    o.max_active_runs = 1  # hours in order: each one's sequence state builds on the previous hour's
    o.retries, o.retry_delay_s, o.retry_max_delay_s = 2, 2, 10
    o.sensor_poke_s, o.sensor_timeout_s = 5, 900
    o.training_schedule = None  # manual only: the test triggers it
    o.encode_pool, o.spark_pool = "soe_encode", "soe_spark"  # created by the deployment (2 slots, 1 slot)
    o.backfill_shards = 2
    o.drill_fail_shards, o.drill_fail_as_of, o.drill_fail_tries = [1], [DRILL_AS_OF], 1
    return s


@dataclass
class World:
    settings: object
    deployment: object
    first_model: str
    db: str  # "postgresql" | "sqlite (<why>)"
    held_marker: Path  # where the late partition's _SUCCESS waits until the sensor has poked once
    seen: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.t0:.0f}s"


@pytest.fixture(scope="module")
def world(request, tmp_path_factory, redis_single_server, metadata_db):
    import redis as redis_py

    from bench.refresh import random_model
    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from soe.flows import hourly, stages
    from soe.flows.airflow_run import AirflowDeployment
    from soe.flows.backfill import run_backfill

    t = time.monotonic()
    tmp = tmp_path_factory.mktemp("airflow-scheduler")
    redis = redis_single_server.redis_settings(buckets=32)
    redis_py.Redis(host=redis.host, port=redis.port).flushall()
    s = tiny_settings(tmp / "data", redis)
    layout = s.layout()
    cfg = SyntheticConfig(
        n_users=150,
        n_items=800,
        n_clusters=4,
        hours=BOOT + 5,
        start=str(START),
        base_events_per_user=30,
        seed=3,
    )
    write_log(generate(cfg), layout)
    hourly.sequences(s, T0 - HOUR, T0)  # the bootstrap state
    first = random_model(s)  # an untrained current model: the trained candidate must beat it
    run_backfill(s, first, T0)
    assert stages.current_model(s) == first
    marker = layout.event_partition(LATE_HOUR) / "_SUCCESS"
    held = tmp / "held_SUCCESS"
    shutil.move(marker, held)  # the late hour's partition is not published yet
    log(
        f"world: 150 users, {BOOT + 5} hours from {START:%Y-%m-%dT%H:%MZ}, current model {first} "
        f"({time.monotonic() - t:.0f}s); partition {LATE_HOUR:%H}:00 held back"
    )

    d = AirflowDeployment(tmp / "airflow", s, metadata_db, parallelism=3)
    request.addfinalizer(d.stop)  # registered before start: every component is stopped, also on failure
    t = time.monotonic()
    d.start(timeout=420)
    log(
        f"Airflow up in {time.monotonic() - t:.0f}s: API server {d.base_url}, scheduler (LocalExecutor, "
        f"parallelism {d.parallelism}), DAG processor, triggerer; metadata DB {metadata_db or 'SQLite'}; "
        f"pools {d.pools}"
    )
    db = "postgresql" if metadata_db else "sqlite"
    return World(s, d, first, db, held)


def task(tis: list[dict], task_id: str) -> list[dict]:
    return sorted((t for t in tis if t["task_id"] == task_id), key=lambda t: t["map_index"])


def test_scheduler_catches_up_hours_retries_a_failed_shard_and_reschedules_the_sensor(world):
    d, s, seen = world.deployment, world.settings, world.seen
    late_marker = s.layout().event_partition(LATE_HOUR) / "_SUCCESS"

    def land_late_partition(runs: list[dict]) -> None:
        """Publish the late hour once its sensor has poked and handed its slot back (up_for_reschedule)."""
        if "landed" in seen:
            return
        run = next((r for r in runs if utc(r["logical_date"]) == LATE_HOUR), None)
        if run is None or run["state"] != "running":
            return
        sensor = task(d.task_instances("soe_hourly", run["dag_run_id"]), "wait_for_events")[0]
        seen.setdefault("sensor_states", []).append(sensor["state"])
        seen.setdefault("late_run_running_since", time.monotonic())
        if sensor["state"] == "up_for_reschedule":
            seen["rescheduled"] = True
        elif time.monotonic() - seen["late_run_running_since"] < 120:
            return  # (after 2 minutes without a reschedule seen, land it anyway: the assertion below fails)
        shutil.move(world.held_marker, late_marker)
        seen["landed"] = time.time()
        log(f"sensor of {run['dag_run_id']} is {sensor['state']}: landed {late_marker.parent.name}/_SUCCESS")

    t = time.monotonic()
    runs = d.wait_for_runs(
        "soe_hourly",
        len(SCHEDULED),
        run_type="scheduled",
        timeout=1500,
        poll=2.0,
        on_poll=land_late_partition,
    )
    log(f"catch-up: {len(runs)} scheduled runs finished in {time.monotonic() - t:.0f}s")
    for r in runs:
        log(
            f"  soe_hourly {r['dag_run_id']}: run_type={r['run_type']} state={r['state']} "
            f"interval=[{r['data_interval_start']}, {r['data_interval_end']})"
        )
    assert [utc(r["logical_date"]) for r in runs] == SCHEDULED
    assert all(r["run_type"] == "scheduled" and r["state"] == "success" for r in runs)
    assert len(d.dag_runs("soe_hourly")) == len(SCHEDULED)  # nothing past the end date, nothing manual

    layout = s.layout()
    for r in runs:  # SoE's own record of each hour: done, by the current model, first attempt
        m = read_manifest(layout, "soe_hourly", as_of(r))
        assert m is not None and m["status"] == "done", r["dag_run_id"]
        assert m["model_version"] == world.first_model and m["attempt"] == 1 and m["stages"]["validate"]["ok"]
        assert m["stages"]["encode"]["users"] == m["stages"]["sequences"]["active_users"] > 0

    # the retry drill: encoder shard 1 of the first hour failed its first try, the scheduler retried it
    drilled = next(r for r in runs if as_of(r) == DRILL_AS_OF)
    encodes = task(d.task_instances("soe_hourly", drilled["dag_run_id"]), "encode")
    retried = [t for t in encodes if t["try_number"] > 1]
    assert len(retried) == 1 and retried[0]["state"] == "success" and retried[0]["try_number"] == 2, encodes
    tries = d.task_tries("soe_hourly", drilled["dag_run_id"], "encode", retried[0]["map_index"])
    log(
        f"  drill: encode[{retried[0]['map_index']}] of {drilled['dag_run_id']} tries "
        f"{[(x['try_number'], x['state']) for x in tries]}"
    )
    assert [x["try_number"] for x in tries] == [1, 2]
    assert tries[0]["state"] in ("failed", "up_for_retry") and tries[1]["state"] == "success"
    first_try = list(
        d.home.glob(
            f"logs/dag_id=soe_hourly/run_id={drilled['dag_run_id']}/task_id=encode/"
            f"map_index={retried[0]['map_index']}/attempt=1.log"
        )
    )
    assert first_try and "failure drill" in first_try[0].read_text(errors="replace")
    assert not layout.manifest("soe_hourly_alerts", DRILL_AS_OF).exists()  # a retried failure is no alert
    for r in runs:
        if r is not drilled:
            others = task(d.task_instances("soe_hourly", r["dag_run_id"]), "encode")
            assert all(t["try_number"] == 1 for t in others), others

    # the sensor: poked, handed its worker slot back, poked again after the partition landed
    assert seen.get("rescheduled"), f"the late hour's sensor was never seen up_for_reschedule: {seen}"
    late = next(r for r in runs if utc(r["logical_date"]) == LATE_HOUR)
    tis = d.task_instances("soe_hourly", late["dag_run_id"])
    sensor = task(tis, "wait_for_events")[0]
    log(
        f"  sensor of {late['dag_run_id']}: states seen {seen['sensor_states']}, final {sensor['state']} "
        f"(try {sensor['try_number']})"
    )
    assert sensor["state"] == "success" and sensor["try_number"] == 1  # a reschedule is not a retry
    assert utc(sensor["end_date"]).timestamp() >= seen["landed"] - 1  # succeeded after the partition landed

    # the pools of the orchestration section carry the Spark step and the encoder tasks
    assert {t["pool"] for t in task(tis, "encode")} == {"soe_encode"}
    assert task(tis, "sequences_local")[0]["pool"] == "soe_spark"
    assert task(tis, "sequences_submit")[0]["state"] == "skipped"  # the launcher branch (local)


def test_training_promotes_through_the_asset_and_the_backfill_dag_switches(world):
    from soe.flows import stages

    d, s = world.deployment, world.settings
    layout = s.layout()
    trained_at = SCHEDULED[-1] + HOUR  # train on the newest state, after the catch-up
    t = time.monotonic()
    d.trigger("soe_training", logical_date=trained_at, data_interval=(trained_at - HOUR, trained_at))
    training = d.wait_for_runs("soe_training", 1, timeout=900)
    log(
        f"soe_training {training[0]['dag_run_id']}: run_type={training[0]['run_type']} "
        f"state={training[0]['state']} ({time.monotonic() - t:.0f}s)"
    )
    assert training[0]["run_type"] == "manual" and training[0]["state"] == "success"
    m = read_manifest(layout, "soe_training", trained_at)
    candidate = m["stages"]["train"]["model"]
    assert m["stages"]["gate"]["promote"], m["stages"]["gate"]
    promote = task(d.task_instances("soe_training", training[0]["dag_run_id"]), "promote")[0]
    assert promote["state"] == "success"

    events = d.asset_events(PROMOTED_MODEL_URI, source_dag_id="soe_training")
    log(f"  asset events on {PROMOTED_MODEL_URI}: {[(e['source_task_id'], e['extra']) for e in events]}")
    assert len(events) == 1 and events[0]["source_task_id"] == "promote"
    assert events[0]["extra"]["model"] == candidate and utc(events[0]["extra"]["as_of"]) == trained_at

    backfill = d.wait_for_runs("soe_backfill", 1, timeout=900)
    b = backfill[0]
    log(
        f"soe_backfill {b['dag_run_id']}: run_type={b['run_type']} state={b['state']} "
        f"triggered_by={b.get('triggered_by')} ({time.monotonic() - t:.0f}s since the training trigger)"
    )
    assert b["run_type"] == "asset_triggered" and b["state"] == "success"
    run_path = f"/dags/soe_backfill/dagRuns/{quote(b['dag_run_id'], safe='')}"
    upstream = d.api("GET", f"{run_path}/upstreamAssetEvents")
    assert [e["extra"]["model"] for e in upstream["asset_events"]] == [candidate]
    assert stages.current_model(s) == candidate != world.first_model
    bm = read_manifest(layout, "soe_backfill", trained_at)  # the state it re-encoded: the training's as_of
    assert bm["model_version"] == candidate and bm["stages"]["switch"]["current"] == candidate
    known = stages.state_user_ids(s, trained_at)
    assert stages.vectors_found(s, candidate, known) == len(known) > 100


def test_backfill_create_runs_a_range_of_hours(world):
    from soe.flows import stages

    d, s = world.deployment, world.settings
    # The replay is over: the operator turns catch-up off and moves the end date past the hours to
    # backfill (a run after the DAG's end date would never start); the DAG processor re-parses the file.
    s.orchestration.catchup, s.orchestration.end_date = False, BACKFILLED[-1]
    d.write_settings(s)
    t = time.monotonic()

    def reparsed() -> bool:
        det = d.api("GET", "/dags/soe_hourly/details")
        return det["catchup"] is False and det["end_date"] and utc(det["end_date"]) == BACKFILLED[-1]

    d.wait_until(reparsed, 300, "the DAG processor to re-parse soe_hourly (catchup off, new end date)")
    log(
        f"soe_hourly re-parsed with catchup off, end_date {BACKFILLED[-1]:%Y-%m-%dT%H:%MZ} "
        f"({time.monotonic() - t:.0f}s)"
    )
    t = time.monotonic()
    out = d.backfill_create("soe_hourly", BACKFILLED[0], BACKFILLED[-1], max_active_runs=1)
    log(f"airflow backfill create: {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''}")
    runs = d.wait_for_runs("soe_hourly", len(BACKFILLED), run_type="backfill", timeout=1200)
    log(f"backfill: {len(runs)} runs finished in {time.monotonic() - t:.0f}s")
    assert [utc(r["logical_date"]) for r in runs] == BACKFILLED
    assert all(r["state"] == "success" for r in runs)
    current = stages.current_model(s)
    for r in runs:
        m = read_manifest(s.layout(), "soe_hourly", as_of(r))
        assert m["status"] == "done" and m["model_version"] == current and m["attempt"] == 1, r["dag_run_id"]
        checks = {c["name"]: c for c in m["stages"]["validate"]["checks"]}
        assert checks["drift"]["ok"], checks["drift"]


def test_the_scheduler_ran_every_hour(world):
    """The whole history, from the REST API and the CLI: who ran each hour, and SoE's manifest of it."""
    d, s = world.deployment, world.settings
    runs = {dag: d.dag_runs(dag) for dag in ("soe_hourly", "soe_training", "soe_backfill")}
    log(f"every DAG run ({world.db} metadata DB, {world.elapsed()} since the deployment started):")
    for dag, rs in runs.items():
        for r in rs:
            m = read_manifest(s.layout(), dag, as_of(r)) if dag == "soe_hourly" else None
            note = f" manifest: {m['status']} model={m['model_version']}" if m else ""
            log(
                f"  {dag:13s} {r['run_type']:16s} {r['state']:8s} logical_date={r['logical_date']} "
                f"run_id={r['dag_run_id']}{note}"
            )
    hourly = {utc(r["logical_date"]): r for r in runs["soe_hourly"]}
    assert set(hourly) == {*SCHEDULED, *BACKFILLED}
    for t in SCHEDULED:
        assert hourly[t]["run_type"] == "scheduled" and hourly[t]["state"] == "success"
    for t in BACKFILLED:
        assert hourly[t]["run_type"] == "backfill" and hourly[t]["state"] == "success"
    assert [(r["run_type"], r["state"]) for r in runs["soe_training"]] == [("manual", "success")]
    assert [(r["run_type"], r["state"]) for r in runs["soe_backfill"]] == [("asset_triggered", "success")]
    for t, r in hourly.items():  # SoE's own manifest for every hour the scheduler ran
        m = read_manifest(s.layout(), "soe_hourly", t + HOUR)
        assert m is not None and m["status"] == "done" and utc(m["as_of"]) == as_of(r), t

    cli = {r["run_id"]: r for r in d.list_runs_cli("soe_hourly")}  # the same, straight from the metadata DB
    assert set(cli) == {r["dag_run_id"] for r in runs["soe_hourly"]}
    assert all(r["state"] == "success" for r in cli.values())
    assert sorted(k.split("__")[0] for k in cli) == ["backfill"] * 2 + ["scheduled"] * 3
    log("airflow dags list-runs soe_hourly: " + json.dumps(sorted(cli)))
    assert d.healthy()  # every component still up and heartbeating
    d.check_alive()
    assert os.environ.get("AIRFLOW_HOME") != str(d.home)  # the deployment never leaked into this process
