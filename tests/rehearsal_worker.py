"""One encoder worker process of the rehearsal (tests/test_rehearsal_encoder_workers.py).

``python -m tests.rehearsal_worker --port P --prefix K --name w0 --queue w0`` consumes the Redis list
``<K>queue:<queue>`` of a broker on 127.0.0.1:P with the reliable-queue pattern: a job is moved
atomically to ``<K>processing:<name>`` (BLMOVE) while it runs, and removed from there only after its
result is pushed to ``<K>results``, so a worker killed mid-job leaves its job in its processing list
for the scheduler to hand to another worker. The worker refreshes ``<K>hb:<name>`` (1.5 s TTL) every
0.3 s: a scheduler that sees the key expire treats the worker as dead (Airflow's zombie detection
works the same way, on the task's heartbeat). The job body is the Airflow task body of an encoder
shard, `soe.flows.tasks.encode_hour`, with the worker's settings from the environment (SOE_*).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--queue", required=True)
    a = p.parse_args()

    import redis

    from core.layout import utc
    from soe.config import load_settings
    from soe.flows import tasks
    from soe.flows.dag_support import TaskRun

    r = redis.Redis(host="127.0.0.1", port=a.port, socket_timeout=10)
    settings = load_settings()
    heartbeat, processing = f"{a.prefix}hb:{a.name}", f"{a.prefix}processing:{a.name}"

    def beat() -> None:
        while True:
            r.set(heartbeat, os.getpid(), px=1500)
            time.sleep(0.3)

    threading.Thread(target=beat, daemon=True).start()
    while True:
        raw = r.blmove(f"{a.prefix}queue:{a.queue}", processing, 1, "RIGHT", "LEFT")
        if raw is None:
            continue
        msg = json.loads(raw)
        r.hset(f"{a.prefix}started", msg["id"], a.name)
        run = TaskRun(settings, utc(msg["start"]), utc(msg["as_of"]), params=msg.get("params", {}))
        t0 = time.monotonic()
        try:
            res = {"ok": True, "result": tasks.encode_hour(run, msg["job"])}
        except Exception as exc:  # reported to the scheduler, like a failed task
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        res |= {"id": msg["id"], "worker": a.name, "seconds": round(time.monotonic() - t0, 2)}
        pipe = r.pipeline()
        pipe.lpush(f"{a.prefix}results", json.dumps(res, default=str))
        pipe.lrem(processing, 1, raw)
        pipe.execute()


if __name__ == "__main__":
    main()
