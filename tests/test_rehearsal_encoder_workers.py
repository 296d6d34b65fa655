"""Rehearsal of encoder workers as separate processes on separate queues, one killed mid-shard.

Two worker processes (`tests.rehearsal_worker`, each its own OS process group) consume their own
queue (``w0``, ``w1``) of a Redis broker on loopback, with the reliable-queue pattern (the job moves
to the worker's processing list while it runs) and a heartbeat key. The test is the scheduler: it
plans the hour with the flows' task body (`soe.flows.tasks.plan_hour`, 3 shards of 8000 users) and
sends shard 1 to ``w0``, shards 0 and 2 to ``w1``. Once ``w0`` has flushed part of shard 1 into its
temp directory, its process group is killed with SIGKILL. Then:

* nothing of shard 1 is visible: no shard directory, no ``_SUCCESS``, readers
  (`core.embeddings.shard_dirs`, the publish step) do not see it; only a hidden temp directory is left;
* the scheduler notices the dead worker when its heartbeat expires and moves the job from its
  processing list to ``w1``'s queue (the retry elsewhere, as Airflow retries a zombie task);
* every shard's vectors equal those of an uninterrupted run in this process on a copy of the inputs
  (sha256 over user ids, float16 vector bytes and event counts, and the row count).

Why not Airflow's CeleryExecutor here: see docs/deploy.md, "Rehearsal". The task body, the atomic shard
publication and the retry semantics tested here are the ones the Celery workers run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from core.atomic import is_complete
from core.layout import HOUR
from encoder.inference.sample import AS_OF, heavy_tailed_lengths, random_sequences, write_active_snapshot

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SHARDS = 3
USERS = 8000 * SHARDS
TIMEOUT_S = 300


def worker_env(root: Path) -> dict[str, str]:
    return {
        "SOE_DATA__ROOT": str(root),
        "SOE_SEQUENCES__MAX_LEN": "50",
        "SOE_INFERENCE__THREADS": "1",  # one core per worker (2 shared cores here)
        "SOE_INFERENCE__WINDOW_USERS": "2000",  # a shard is written in 4 windows: a kill lands mid-shard
    }


def shard_hash(root: Path, model: str, shard: int) -> tuple[int, str]:
    import pyarrow.parquet as pq

    from core.embeddings import vector_array
    from encoder.inference.writer import shard_dir
    from soe.config import load_settings

    d = shard_dir(load_settings(environ=worker_env(root)).layout(), model, AS_OF, shard)
    t = pq.read_table(d / "part-00000.parquet")
    h = hashlib.sha256()
    h.update(t["user_id"].to_numpy().tobytes())
    h.update(vector_array(t["vector"], dtype=None).tobytes())  # float16 as stored
    h.update(t["n_events"].to_numpy().tobytes())
    return t.num_rows, h.hexdigest()


class Workers:
    """The worker processes and the scheduler's side of the broker."""

    def __init__(self, broker, root: Path, logs: Path):
        self.r = broker
        self.port = broker.connection_pool.connection_kwargs["port"]
        self.prefix = f"rehearsal:{uuid.uuid4().hex[:8]}:"
        self.root, self.logs = root, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")
        args = ["--port", str(self.port), "--prefix", self.prefix, "--name", name, "--queue", name]
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.rehearsal_worker", *args],
            cwd=REPO,
            env={**os.environ, **worker_env(self.root)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: the kill takes the worker and anything it forked
        )
        log.close()

    def alive(self, name: str) -> bool:
        return bool(self.r.exists(f"{self.prefix}hb:{name}"))

    def send(self, queue: str, job: dict) -> str:
        msg = {"id": f"shard-{job['shard']}", "job": job, "start": (AS_OF - HOUR).isoformat()}
        msg["as_of"] = AS_OF.isoformat()
        self.r.lpush(f"{self.prefix}queue:{queue}", json.dumps(msg))
        return msg["id"]

    def started_by(self, job_id: str) -> str | None:
        v = self.r.hget(f"{self.prefix}started", job_id)
        return v.decode() if v else None

    def requeue(self, dead: str, to: str) -> int:
        """Move every job the dead worker held to another worker's queue (the retry elsewhere)."""
        n = 0
        while self.r.lmove(f"{self.prefix}processing:{dead}", f"{self.prefix}queue:{to}", "RIGHT", "LEFT"):
            n += 1
        return n

    def results(self) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(f"{self.prefix}results", 0, -1)]

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.glob("*.log")
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        keys = list(self.r.scan_iter(f"{self.prefix}*"))
        if keys:
            self.r.delete(*keys)


def wait_for(cond, timeout: float, what: str, workers: Workers):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{workers.log_tail()}")


def test_a_worker_killed_mid_shard_its_shard_is_retried_elsewhere_and_identical(
    tmp_path, redis_single_server
):
    from bench.refresh import random_model
    from core.embeddings import shard_dirs
    from encoder.inference.writer import shard_dir
    from soe.config import load_settings
    from soe.flows import stages, tasks
    from soe.flows.dag_support import TaskRun
    from store.publish import shard_dirs as publish_shard_dirs

    root, ref_root = tmp_path / "data", tmp_path / "reference"
    settings = load_settings(environ=worker_env(root))
    model = random_model(settings, seed=3, d_model=64, n_layers=2)
    lengths = heavy_tailed_lengths(USERS, 50, median=20, seed=1)
    write_active_snapshot(settings.layout(), AS_OF, random_sequences(lengths, AS_OF, seed=2), SHARDS)
    shutil.copytree(root, ref_root)  # the uninterrupted run's inputs: the same model and shards
    run = TaskRun(settings, AS_OF - HOUR, AS_OF, params={"model": model})
    jobs = tasks.plan_hour(run)  # the hourly DAG's plan task: one job per active shard
    assert [j["shard"] for j in jobs] == list(range(SHARDS))

    layout = settings.layout()
    victim_dir = shard_dir(layout, model, AS_OF, 1)
    (tmp_path / "logs").mkdir()
    w = Workers(redis_single_server.client(), root, tmp_path / "logs")
    try:
        for name in ("w0", "w1"):
            w.start(name)
        wait_for(lambda: w.alive("w0") and w.alive("w1"), 120, "both workers' heartbeats", w)
        t0 = time.monotonic()
        w.send("w0", jobs[1])
        w.send("w1", jobs[0])
        w.send("w1", jobs[2])

        def partial_output():  # the shard's hidden temp dir holds a part file with rows in it
            for d in victim_dir.parent.glob(f".{victim_dir.name}.tmp-*"):
                part = d / "part-00000.parquet"
                if part.exists() and part.stat().st_size > 4096:
                    return part
            assert not is_complete(victim_dir), "shard 1 finished before the kill: make it bigger"
            return None

        wait_for(lambda: w.started_by("shard-1") == "w0", TIMEOUT_S, "w0 to start shard 1", w)
        partial = wait_for(partial_output, TIMEOUT_S, "partial output of shard 1", w)
        partial_bytes = partial.stat().st_size
        os.killpg(w.procs["w0"].pid, signal.SIGKILL)
        killed = time.monotonic()
        w.procs["w0"].wait(10)

        # nothing of the killed shard is visible: no shard dir, not listed, not publishable
        assert not victim_dir.exists() and not is_complete(victim_dir)
        assert victim_dir not in shard_dirs(layout, model, AS_OF)
        with pytest.raises(FileNotFoundError):
            publish_shard_dirs(layout, model, AS_OF, 1)
        leftovers = [p.name for p in victim_dir.parent.iterdir() if p.name.startswith(f".{victim_dir.name}")]
        assert leftovers, "the killed worker left no temp dir: was it really mid-shard?"

        # the scheduler sees the heartbeat expire and hands the job to the other worker's queue
        wait_for(lambda: not w.alive("w0"), 10, "w0's heartbeat to expire", w)
        detected = time.monotonic()
        assert w.requeue("w0", "w1") == 1
        results = wait_for(
            lambda: (r := w.results()) and len(r) == SHARDS and r, TIMEOUT_S, "every shard's result", w
        )
        done = time.monotonic()
        assert all(r["ok"] for r in results), results
        by_shard = {r["result"]["shard"]: r for r in results}
        assert by_shard[1]["worker"] == "w1" and {r["worker"] for r in results} == {"w1"}
        assert all(is_complete(shard_dir(layout, model, AS_OF, i)) for i in range(SHARDS))
        stages.mark_embeddings(settings, model, AS_OF, SHARDS)
    finally:
        w.stop()

    # the uninterrupted run, in this process, on the copy
    ref = load_settings(environ=worker_env(ref_root))
    ref_run = TaskRun(ref, AS_OF - HOUR, AS_OF, params={"model": model})
    for job in tasks.plan_hour(ref_run):
        tasks.encode_hour(ref_run, job)
    print(
        f"\nkilled worker w0 (pid {w.procs['w0'].pid}, process group) {killed - t0:.2f} s after dispatch, "
        f"mid-shard 1 ({partial_bytes} bytes of a part file written, leftovers {leftovers}); heartbeat "
        f"expiry noticed after {detected - killed:.2f} s; shard 1 retried on w1, all shards done "
        f"{done - killed:.2f} s after the kill"
    )
    for i in range(SHARDS):
        got, want = shard_hash(root, model, i), shard_hash(ref_root, model, i)
        print(
            f"shard {i}: {got[0]} rows sha256 {got[1][:16]} (workers) vs {want[0]} rows {want[1][:16]} (ref)"
        )
        assert got == want and got[0] == USERS // SHARDS
