"""The local driver JVM gives its idle heap back to the OS (`pipelines.spark.RETURN_IDLE_HEAP`, and
`release_idle_heap` after a job: the periodic GC alone once left it flat for 45 s in the slow lane).

In the embedded run the encoder and the graph build follow the Spark stages in one process tree, so a
JVM that kept the heap of its last job would hold gigabytes the graph needs. A fresh local session (its
own process: the test session's shared JVM has its own options) caches a table, drops it, and the
JVM's resident memory must fall while it sits idle. Without the options it stays flat (measured: 1,773
MB before and after 40 s idle).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="RSS via psutil")]

SCRIPT = """
import json, time, psutil
from pipelines.settings import SparkSettings
from pipelines.spark import release_idle_heap, spark_session
settings = SparkSettings(master="local[2]", driver_memory="2g", shuffle_partitions=4)
s = spark_session(settings)
jvm = next(p for p in psutil.Process().children(recursive=True) if "java" in p.name())
df = s.range(0, 6_000_000).selectExpr("id", "repeat(cast(id as string), 8) as s").cache()
df.count()
busy = jvm.memory_info().rss
df.unpersist(blocking=True)
release_idle_heap(s, settings)  # what the hourly sequences stage does when its job is done
idle = []
for _ in range(9):
    time.sleep(5)
    idle.append(jvm.memory_info().rss)
s.stop()
print(json.dumps({"busy_mb": busy >> 20, "idle_mb": [r >> 20 for r in idle]}))
"""


def test_the_local_driver_returns_its_idle_heap():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert min(m["idle_mb"]) < 0.85 * m["busy_mb"], m
