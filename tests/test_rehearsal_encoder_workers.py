"""Airflow's CeleryExecutor, encoder workers killed mid-shard, their shard retried on another worker.

Everything on loopback, started and stopped by the module: a redis-server (the Celery broker; the result
backend is the metadata DB), a throw-away PostgreSQL cluster (the metadata DB: the CeleryExecutor cannot
run on SQLite; the tests skip when PostgreSQL cannot start), and `soe.flows.airflow_run.AirflowDeployment`
with ``executor="CeleryExecutor"``: the API server (the task processes talk to its Execution API), the
DAG processor and the scheduler, plus ``airflow celery worker`` processes, each in its own process group,
one task at a time (``--concurrency 1``):

* ``w0`` (fault 1), then ``w2`` (fault 2) serve only the encoder queue ``encode``
  (``orchestration.encode_queue``; ``gpu`` in ``deploy/k8s``: the GPU workers);
* ``w1`` serves ``encode`` and ``default`` (the chart's CPU workers: every other task).

The DAG is ``tests/dags/soe_encode_rehearsal.py``: ``plan -> encode[shard] -> validate`` of
``soe_hourly``, with the same task bodies (`soe.flows.tasks`), default arguments and ``encode`` task
shape (pool, queue). Not the whole ``soe_hourly``: its sensor, Spark step, graph and publish are what
``tests/test_airflow_scheduler.py`` runs on the real scheduler (13-17 min here); the executor only
changes where the encoder shards run, and this file has a few minutes on 2 shared cores.

Why the encoder workers share the queue ``encode`` instead of a queue each: Airflow 3.3 fixes a task
instance's queue when it is created (``TaskInstance.refresh_from_task``: the operator's ``queue``, then
the ``task_instance_mutation_hook`` cluster policy) and keeps it for every retry (``handle_failure`` ->
``up_for_retry`` re-queues the same row); a shard pinned to ``w0``'s own queue would be retried on that
queue and wait there for ``w0`` to come back. So: separate processes, and the encoder queue apart from
the default queue, as in production; any live encoder worker takes a retry.

Each fault is a manual run of one hour (3 shards of 8000 users; the pool ``soe_encode`` has 2 slots, one
per encoder worker; ``SOE_INFERENCE__WINDOW_USERS`` 2000, so a shard is written in 4 windows). Once the
victim worker runs a shard and has flushed part of it into the shard's hidden temp dir, it gets SIGKILL:

1. the lost machine: every process group of ``w0``'s tree: the worker, its pool process, the task
   supervisor, and the task process (which Airflow 3.3's supervisor puts in a process group of its
   own). Readers never see the shard before its retry published it whole: no shard dir, no
   ``_SUCCESS``; `core.embeddings.shard_dirs` and the publish step (`store.publish.shard_dirs`) do not
   list it, sampled every poll until the run ends.
2. ``kill -9 -<pgid>`` of ``w2``'s own process group only: the task process survives as an orphan and
   may finish and publish its shard (whole: the atomic publish) while Airflow still counts the try as
   running; the try is failed and retried all the same, and the retry republishes the same bytes.

In both: the supervisor's heartbeats stop; the scheduler fails the task instance after
``[scheduler] task_instance_heartbeat_timeout`` (10 s here; one ``heartbeat timeout`` event log), the
try is ``up_for_retry``, and after ``retry_delay`` the scheduler queues try 2 on ``encode``: ``w1`` runs
it (its task process is in ``w1``'s tree). Every shard a reader lists has all its rows; the run
succeeds (``validate`` reads every vector: 24000); every shard's vectors equal an uninterrupted run in
this process on a copy of the inputs (sha256 over user ids, float16 vector bytes and event counts, and
the row counts). Each test prints one line: what was killed, when, what readers saw, the timings.

Celery's own redelivery plays no part: the killed try's message stays unacknowledged (``task_acks_late``)
until the broker's visibility timeout (the provider's default: 24 h), and a redelivered workload whose
task instance has moved on is ignored by the worker (``TaskAlreadyRunningError`` -> ``Ignore``).

Run it: ``.venv/bin/python -m pytest tests/test_rehearsal_encoder_workers.py -m slow -s`` (-s prints the
report lines). About 2.5 minutes on 2 shared cores.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from core.atomic import is_complete
from core.layout import HOUR, utc
from encoder.inference.sample import AS_OF, heavy_tailed_lengths, random_sequences, write_active_snapshot
from tests.fixtures.airflow import log

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.usefixtures("sigterm_runs_the_finalizers"),
]
DAG_FILE = Path(__file__).resolve().parent / "dags" / "soe_encode_rehearsal.py"
DAG_ID = "soe_encode_rehearsal"
SHARDS = 3
USERS = 8000 * SHARDS
HOURS = (AS_OF, AS_OF + HOUR)  # the as_of each fault's run encodes
ENCODE_QUEUE, ENCODE_POOL = "encode", "soe_encode"
BROKER_DB = 7  # the Celery broker's database on the shared test redis-server
HEARTBEAT_TIMEOUT_S = 10  # [scheduler] task_instance_heartbeat_timeout (default 300)
AIRFLOW_ENV = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "1",  # default 10
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",  # the supervisor heartbeats every 1 s (default 5)
}


def soe_env(root: Path) -> dict[str, str]:
    return {
        "SOE_DATA__ROOT": str(root),
        "SOE_SEQUENCES__MAX_LEN": "50",
        "SOE_INFERENCE__THREADS": "1",  # one core per task (2 shared cores here)
        "SOE_INFERENCE__WINDOW_USERS": "2000",  # a shard is written in 4 windows: a kill lands mid-shard
    }


def rehearsal_settings(root: Path):
    from soe.config import load_settings

    s = load_settings(environ=soe_env(root))
    o = s.orchestration
    o.encode_pool, o.encode_queue = ENCODE_POOL, ENCODE_QUEUE
    o.retries, o.retry_delay_s, o.retry_max_delay_s = 1, 1, 5
    return s


def shard_hash(settings, model: str, as_of: datetime, shard: int) -> tuple[int, str]:
    """Rows and sha256 over user ids, float16 vector bytes (as stored) and event counts of one shard."""
    import pyarrow.parquet as pq

    from core.embeddings import vector_array
    from encoder.inference.writer import shard_dir

    t = pq.read_table(shard_dir(settings.layout(), model, as_of, shard) / "part-00000.parquet")
    h = hashlib.sha256()
    h.update(t["user_id"].to_numpy().tobytes())
    h.update(vector_array(t["vector"], dtype=None).tobytes())
    h.update(t["n_events"].to_numpy().tobytes())
    return t.num_rows, h.hexdigest()


def rows(shard: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard.glob("part-*.parquet"))


@dataclass
class Rehearsal:
    d: Any  # soe.flows.airflow_run.AirflowDeployment
    settings: Any  # soe.config.Settings
    reference: Any  # the settings of the copy the uninterrupted run encodes
    model: str


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, redis_single_server, metadata_db):
    from bench.refresh import random_model
    from soe.flows.airflow_run import AirflowDeployment

    if metadata_db is None:
        pytest.skip("the CeleryExecutor needs a PostgreSQL metadata DB, and none could start here")
    tmp = tmp_path_factory.mktemp("celery-rehearsal")
    root = tmp / "data"
    settings = rehearsal_settings(root)
    model = random_model(settings, seed=3, d_model=64, n_layers=2)
    lengths = heavy_tailed_lengths(USERS, 50, median=20, seed=1)
    for seed, as_of in enumerate(HOURS, start=2):
        write_active_snapshot(settings.layout(), as_of, random_sequences(lengths, as_of, seed=seed), SHARDS)
    shutil.copytree(root, tmp / "reference")  # the uninterrupted runs' inputs: the same model and shards
    dags = tmp / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)

    broker = redis_single_server.client(db=BROKER_DB)
    broker.flushdb()
    broker_url = f"redis://{redis_single_server.host}:{redis_single_server.ports[0]}/{BROKER_DB}"
    d = AirflowDeployment(
        tmp / "airflow",
        settings,
        metadata_db,
        executor="CeleryExecutor",
        broker_url=broker_url,
        components=("api-server", "dag-processor", "scheduler"),  # nothing defers: no triggerer
        parallelism=4,
        pools={ENCODE_POOL: 2},  # one slot per encoder worker (deploy/k8s: one per GPU)
        dags_folder=dags,
        extra_env=AIRFLOW_ENV,
    )
    try:
        t = time.monotonic()
        d.start(timeout=300)
        d.start_worker("w0", [ENCODE_QUEUE])
        d.start_worker("w1", [ENCODE_QUEUE, "default"])
        for name in ("w0", "w1"):
            d.wait_worker_ready(name)
        d.wait_until(lambda: d.dag(DAG_ID), 180, f"the DAG processor to parse {DAG_ID}")
        log(
            f"Airflow up in {time.monotonic() - t:.0f}s: CeleryExecutor, broker {broker_url}, metadata DB "
            f"PostgreSQL; workers w0 (queue {ENCODE_QUEUE}) and w1 ({ENCODE_QUEUE},default), concurrency 1"
        )
        yield Rehearsal(d, settings, rehearsal_settings(tmp / "reference"), model)
    finally:
        d.stop()
        broker.flushdb()


def kill_mid_shard(r: Rehearsal, as_of: datetime, victim: str, with_tasks: bool) -> dict:
    """Run the hour ``as_of`` through Airflow, SIGKILL ``victim`` once it has flushed part of a shard, and
    follow the run to its end: what readers listed, each try of the shard. Returns the record."""
    from core.embeddings import shard_dirs
    from encoder.inference.writer import shard_dir
    from store.publish import shard_dirs as publish_shard_dirs

    d, layout, model = r.d, r.settings.layout(), r.model
    t_trigger = time.time()
    run = d.trigger(DAG_ID, logical_date=as_of, conf={"model": model}, data_interval=(as_of - HOUR, as_of))
    run_path = f"/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'], safe='')}"

    def encodes() -> list[dict]:
        tis = d.api("GET", f"{run_path}/taskInstances", params={"limit": 100})["task_instances"]
        return sorted((ti for ti in tis if ti["task_id"] == "encode"), key=lambda ti: ti["map_index"])

    def run_state() -> str:
        state = d.api("GET", run_path)
        assert state["state"] != "failed", d.failure_report(DAG_ID, state)
        return state["state"]

    def running_on(worker: str) -> dict | None:
        run_state()
        tree = set(d.worker_tree(worker))
        return next((ti for ti in encodes() if ti["state"] == "running" and ti["pid"] in tree), None)

    ti = d.wait_until(lambda: running_on(victim), 300, f"{victim} to run an encoder shard", poll=0.2)
    shard = ti["map_index"]
    target = shard_dir(layout, model, as_of, shard)

    def partial_output():  # the shard's hidden temp dir holds a part file with rows in it
        for tmp in target.parent.glob(f".{target.name}.tmp-*"):
            part = tmp / "part-00000.parquet"
            if part.exists() and part.stat().st_size > 4096:
                return part.stat().st_size
        assert not is_complete(target), f"shard {shard} finished before the kill: make it bigger"
        return None

    written = d.wait_until(partial_output, 300, f"partial output of shard {shard} on {victim}", poll=0.1)
    killed = d.kill_worker(victim, with_tasks=with_tasks)
    t_kill = time.time()
    assert ti["pid"] in killed["pids"]
    rec = {"shard": shard, "pid": ti["pid"], "bytes": written, "killed": killed, "t_kill": t_kill}
    rec["after_trigger"] = t_kill - t_trigger
    log(f"SIGKILL {victim} {killed}, {rec['after_trigger']:.1f}s after the trigger, mid-shard {shard}")

    # at the kill: nothing of the shard is visible: no shard dir, not listed, not publishable
    assert not target.exists() and not is_complete(target)
    assert target not in shard_dirs(layout, model, as_of)
    with pytest.raises(FileNotFoundError):
        publish_shard_dirs(layout, model, as_of, shard)
    rec["leftovers"] = [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}")]
    assert rec["leftovers"], "the killed worker left no temp dir: was it really mid-shard?"

    readers: list[tuple[float, list[int], str]] = []  # (seconds after the kill, shards listed, shard's try)
    retry_on: list[str] = []
    orphan_exit: list[float] = []

    def follow():
        listed = shard_dirs(layout, model, as_of)
        for p in listed:  # every listed shard is whole
            assert rows(p) == USERS // SHARDS, p
        now = next(x for x in encodes() if x["map_index"] == shard)
        seen = [int(p.name.split("=")[1]) for p in listed]
        if not readers or readers[-1][1] != seen:
            readers.append((time.time() - t_kill, seen, f"try {now['try_number']} {now['state']}"))
        if now["try_number"] >= 2 and now["state"] == "running" and not retry_on:
            tree = set(d.worker_tree("w1"))
            retry_on.append(
                "w1" if now["pid"] in tree else f"pid {now['pid']}, not in w1's tree {sorted(tree)}"
            )
        if killed["survivors"] and not orphan_exit and not any(p.is_running() for p in d.orphans):
            orphan_exit.append(time.time() - t_kill)
        return run_state() == "success"

    d.wait_until(follow, 600, f"{DAG_ID} {run['dag_run_id']} to succeed after the kill", poll=0.3)
    rec.update(t_done=time.time() - t_kill, readers=readers, retry_on=retry_on, orphan_exit=orphan_exit)
    rec["tries"] = d.task_tries(DAG_ID, run["dag_run_id"], "encode", shard)
    rec["others"] = [x for x in encodes() if x["map_index"] != shard]
    events = d.api("GET", "/eventLogs", params={"event": "heartbeat timeout", "dag_id": DAG_ID, "limit": 100})
    rec["heartbeat_timeouts"] = [
        e for e in events["event_logs"] if e["run_id"] == run["dag_run_id"] and e["map_index"] == shard
    ]
    xcom = d.api(
        "GET", f"{run_path}/taskInstances/validate/xcomEntries/return_value", params={"deserialize": True}
    )
    rec["validated"] = xcom["value"]
    return rec


def check_recovery(r: Rehearsal, rec: dict, as_of: datetime) -> None:
    """What both faults must show once the run finished: try 1 failed by the heartbeat timeout, try 2 on
    w1, the others untouched, every vector read by validate and byte-equal to the uninterrupted run."""
    from soe.flows import tasks
    from soe.flows.dag_support import TaskRun

    tries = rec["tries"]
    assert [x["try_number"] for x in tries] == [1, 2], tries
    assert tries[0]["state"] in ("failed", "up_for_retry") and tries[1]["state"] == "success", tries
    assert tries[0]["pid"] == rec["pid"] and {x["queue"] for x in tries} == {ENCODE_QUEUE}
    assert rec["retry_on"] == ["w1"], rec["retry_on"]
    assert all(x["state"] == "success" and x["try_number"] == 1 for x in rec["others"]), rec["others"]
    assert len(rec["heartbeat_timeouts"]) == 1, rec["heartbeat_timeouts"]
    assert rec["validated"]["vectors"] == USERS, rec["validated"]
    assert rec["readers"][-1][1] == list(range(SHARDS))
    for x in tries:
        x["from_kill"] = [utc(x[k]).timestamp() - rec["t_kill"] for k in ("start_date", "end_date")]

    ref_run = TaskRun(r.reference, as_of - HOUR, as_of, params={"model": r.model})
    for job in tasks.plan_hour(ref_run):  # the uninterrupted run, in this process, on the copy
        tasks.encode_hour(ref_run, job)
    rec["hashes"] = []
    for i in range(SHARDS):
        got, want = shard_hash(r.settings, r.model, as_of, i), shard_hash(r.reference, r.model, as_of, i)
        assert got == want and got[0] == USERS // SHARDS, (i, got, want)
        rec["hashes"].append(got)


def report(n: int, victim: str, rec: dict, what: str) -> None:
    at = datetime.fromtimestamp(rec["t_kill"], UTC)
    t1, t2 = (x["from_kill"] for x in rec["tries"])
    seen = "; ".join(f"+{t:.1f}s {s} ({state})" for t, s, state in rec["readers"])
    orphan = f", orphan task exited at +{rec['orphan_exit'][0]:.1f}s" if rec["orphan_exit"] else ""
    digest = hashlib.sha256("".join(h for _, h in rec["hashes"]).encode()).hexdigest()[:16]
    k = rec["killed"]
    print(
        f"\nfault {n}: SIGKILL of {victim} ({what}: process groups {k['process_groups']}, survivors "
        f"{k['survivors']}) at {at:%H:%M:%S} UTC, {rec['after_trigger']:.1f}s after the trigger, mid-shard "
        f"{rec['shard']} ({rec['bytes']} bytes of its part file written); readers listed (shards, the killed "
        f"shard's try): {seen}; try 1 failed by the heartbeat timeout at +{t1[1]:.1f}s, try 2 on "
        f"{rec['retry_on'][0]} from +{t2[0]:.1f}s to +{t2[1]:.1f}s{orphan}, run success at "
        f"+{rec['t_done']:.1f}s; {SHARDS} x {USERS // SHARDS} vectors, sha256 of every shard equal to the "
        f"uninterrupted run (digest {digest})"
    )


def test_a_lost_worker_machine_its_shard_is_retried_on_the_other_worker_and_identical(rehearsal):
    rec = kill_mid_shard(rehearsal, HOURS[0], "w0", with_tasks=True)
    assert rec["killed"]["survivors"] == []  # the task process died with the worker
    # readers never listed the shard before its retry ran (the killed try published nothing)
    for _, seen, state in rec["readers"]:
        assert rec["shard"] not in seen or not state.startswith("try 1"), rec["readers"]
    check_recovery(rehearsal, rec, HOURS[0])
    report(1, "w0", rec, "the lost machine: the worker's tree")


def test_a_worker_killed_without_its_task_the_orphan_and_the_retry_publish_the_same_bytes(rehearsal):
    d = rehearsal.d
    d.start_worker("w2", [ENCODE_QUEUE])  # an encoder worker in place of the lost w0
    d.wait_worker_ready("w2")
    rec = kill_mid_shard(rehearsal, HOURS[1], "w2", with_tasks=False)
    assert rec["pid"] in rec["killed"]["survivors"]  # the task process outlived its worker
    check_recovery(rehearsal, rec, HOURS[1])
    assert rec["orphan_exit"], "the orphaned task process never exited"
    report(2, "w2", rec, "kill -9 of the worker's own process group")
