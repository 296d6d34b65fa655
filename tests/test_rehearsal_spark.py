"""Rehearsal of a Spark worker lost mid-job: a standalone master and two workers on loopback.

The hourly Spark step runs as in production under ``spark.launcher: spark-submit``: the real
``spark-submit ... soe/flows/spark_submit.py sequences --interval S/E`` command line (as in
tests/test_spark_submit_cluster.py, with deploy/spark/spark-defaults.conf: dynamic allocation with
shuffle tracking) against a master with two workers (2 cores, 1g each), one 1-core executor asked for
on each. While the bootstrap hour runs, once the victim worker's executor has started tasks, the
victim's process group (the worker daemon and its executor) is killed with SIGKILL. Spark reschedules
the lost tasks (and recomputes lost shuffle output) on the other worker; the hour must still exit 0,
and the next hour (incremental, reading the state written under the fault) too. Both hours' published
outputs must equal the same two hours run in-process on the embedded default (local Spark): manifest
counts, row counts and a sha256 over every active shard's sorted rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core.layout import utc
from soe.config import load_settings
from tests import test_spark_submit_cluster
from tests.fixtures.spark_standalone import java_available, start_standalone
from tests.test_spark_submit_cluster import (
    COMPARED,
    INTERVALS,
    REPO,
    SHARDS,
    driver_env,
    soe_env,
    submit_command,
    write_messy_log,
)

pytestmark = pytest.mark.slow
embedded = test_spark_submit_cluster.embedded  # the same fixture: both hours on the embedded default
SUBMIT_TIMEOUT_S = 420


def submit_cmd(cluster, start, end, shuffle_partitions: str) -> list[str]:
    # one 1-core executor on each worker (the standalone master spreads them out)
    conf = {
        "spark.executor.cores": "1",
        "spark.dynamicAllocation.initialExecutors": "2",
        "spark.dynamicAllocation.minExecutors": "2",
    }
    return submit_command(cluster, start, end, shuffle_partitions, conf, memory="768m")


def executor_logs(cluster) -> dict[str, list[Path]]:
    """Worker name -> the stderr files of the executors it runs (from the worker's own /json/)."""
    import urllib.request

    out: dict[str, list[Path]] = {}
    for name, url in cluster.worker_ui.items():
        if cluster.procs[name].poll() is not None:
            continue
        try:
            with urllib.request.urlopen(f"{url}/json/", timeout=2) as resp:
                state = json.load(resp)
        except OSError:
            continue
        out[name] = [
            cluster.work_dir / e["appid"] / str(e["id"]) / "stderr"
            for e in state.get("executors", []) + state.get("finishedexecutors", [])
        ]
    return out


def running_tasks(path: Path) -> int:
    try:
        return path.read_text(errors="replace").count("Running task")
    except OSError:
        return 0


def run_with_kill(cluster, root: Path, start, end, shuffle: str, victim: str | None) -> dict:
    """spark-submit one hour; when ``victim`` is given, kill -9 its process group once its executor has
    started tasks (and the driver still runs). Returns rc, output, timings and the fault."""
    cmd = submit_cmd(cluster, start, end, shuffle)
    out_path, err_path = root.parent / f"driver-{start:%H%M}.out", root.parent / f"driver-{start:%H%M}.err"
    fault: dict = {}
    t0 = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=driver_env(cluster, root), stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        try:
            while victim and proc.poll() is None and time.monotonic() - t0 < SUBMIT_TIMEOUT_S:
                logs = executor_logs(cluster)
                if all(logs.get(w) for w in cluster.worker_ui) and any(
                    running_tasks(p) for p in logs[victim]
                ):
                    pid = cluster.procs[victim].pid
                    os.killpg(pid, signal.SIGKILL)
                    cluster.procs[victim].wait(10)
                    fault = {
                        "killed": victim,
                        "pid": pid,
                        "at_s": round(time.monotonic() - t0, 2),
                        "victim_tasks_started": sum(running_tasks(p) for p in logs[victim]),
                        "other_executors": {w: len(v) for w, v in logs.items() if w != victim},
                    }
                    break
                time.sleep(0.2)
            rc = proc.wait(SUBMIT_TIMEOUT_S - (time.monotonic() - t0))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "rc": rc,
        "stdout": out_path.read_text(),
        "stderr": err_path.read_text(),
        "seconds": round(time.monotonic() - t0, 1),
        "fault": fault,
    }


def shard_digest(root: Path, as_of) -> tuple[int, str]:
    """(rows, sha256 over every active shard's rows sorted by user_id, as JSON) of one as_of."""
    import pyarrow.parquet as pq

    layout = load_settings(environ=soe_env(root)).layout()
    h, rows = hashlib.sha256(), 0
    for i in range(SHARDS):
        table = pq.read_table(layout.active_shard(as_of, i))
        h.update(f"shard {i} {table.schema}".encode())
        for row in sorted(table.to_pylist(), key=lambda r: r["user_id"]):
            h.update(json.dumps(row, default=str, sort_keys=True).encode())
            rows += 1
    return rows, h.hexdigest()


def test_a_worker_killed_mid_job_the_hour_still_completes_and_equals_the_embedded_run(
    embedded, tmp_path_factory
):
    if not java_available():
        pytest.skip("no Java")
    emb_root, emb_manifests, shuffle = embedded
    root = tmp_path_factory.mktemp("two-workers") / "data"
    write_messy_log(root)
    with start_standalone(tmp_path_factory.mktemp("spark-2w"), workers=2, cores=2, memory="1g") as cluster:
        runs = []
        for k, (start, end) in enumerate(INTERVALS):
            run = run_with_kill(cluster, root, start, end, shuffle, victim="worker-1" if k == 0 else None)
            runs.append(run)
            assert run["rc"] == 0, f"{run['stderr'][-6000:]}\n{cluster.logs()}"
        state = cluster.state()
        workers = {w["webuiaddress"]: w["state"] for w in state["workers"]}
        survivor_logs = executor_logs(cluster)["worker"]
    fault = runs[0]["fault"]
    assert fault.get("killed") == "worker-1", "the worker was never killed mid-job (no task started on it)"
    assert fault["victim_tasks_started"] > 0 and fault["other_executors"]["worker"] > 0
    # the master saw the worker die; the surviving worker finished tasks of both hours
    assert (
        workers[cluster.worker_ui["worker-1"]] == "DEAD" and workers[cluster.worker_ui["worker"]] == "ALIVE"
    )
    assert sum("Finished task" in p.read_text(errors="replace") for p in survivor_logs) >= 2
    lost = "Lost executor" in runs[0]["stderr"] or "ExecutorLost" in runs[0]["stderr"]
    assert lost, "the driver never noticed the lost executor"

    for run, expected in zip(runs, emb_manifests):
        got = json.loads([line for line in run["stdout"].splitlines() if line.strip()][-1])
        assert {k: got[k] for k in COMPARED} == {
            k: json.loads(json.dumps(expected[k], default=str)) for k in COMPARED
        }
        as_of = utc(got["as_of"])
        ours, theirs = shard_digest(root, as_of), shard_digest(emb_root, as_of)
        print(
            f"\nhour {got['as_of']} ({got['mode']}): {run['seconds']} s, fault {run['fault'] or 'none'}; "
            f"{ours[0]} rows sha256 {ours[1][:16]} on 2 workers vs {theirs[0]} rows sha256 "
            f"{theirs[1][:16]} embedded"
        )
        assert ours == theirs and ours[0] == got["active_users"]
