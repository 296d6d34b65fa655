"""`soe refresh` at default verbosity: a short, true summary and no third-party noise.

A real run in a subprocess (its JVM's stderr included): a tiny synthetic log, a real Redis, a random
model backfilled as the current one, then `soe refresh` for one hour. Counted: every line it prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.layout import HOUR, stamp, utc

REPO = Path(__file__).resolve().parents[1]
START = utc("2026-01-01T00:00Z")
T0 = START + HOUR * 2  # the bootstrap state and the backfill
ENV = {
    "SOE_SEQUENCES__NUM_SHARDS": "2",
    "SOE_SEQUENCES__BOOTSTRAP_LOOKBACK_HOURS": "3",
    "SOE_SPARK__MASTER": "local[2]",
    "SOE_SPARK__SHUFFLE_PARTITIONS": "2",
    "SOE_SPARK__DRIVER_MEMORY": "1g",
    "SOE_REDIS__BUCKETS": "32",
    "SOE_ORCHESTRATION__MIN_DRIFT_COSINE": "-1",
}  # random weights: drift is not what this test judges
# what third-party noise looks like: JVM log lines, Python warnings, library loggers
NOISE = re.compile(
    r"\b(INFO|WARN|WARNING)\b.*(org\.apache|spark|py4j|hadoop|faiss|pandas)|FutureWarning|"
    r"DeprecationWarning|UserWarning|log4j|SLF4J|Setting default log level",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def ready(tmp_path_factory, redis_single_server):
    import redis as redis_py

    from bench.refresh import random_model
    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from soe.config import load_settings
    from soe.flows import backfill, hourly

    root = tmp_path_factory.mktemp("refresh-output") / "data"
    env = {**ENV, "SOE_DATA__ROOT": str(root), "SOE_REDIS__PORT": str(redis_single_server.ports[0])}
    s = load_settings(environ=env)
    redis_py.Redis(port=redis_single_server.ports[0]).flushall()
    write_log(
        generate(
            SyntheticConfig(
                n_users=150,
                n_items=500,
                n_clusters=4,
                hours=4,
                start=str(START),
                base_events_per_user=20,
                seed=3,
            )
        ),
        s.layout(),
    )
    hourly.sequences(s, T0 - HOUR, T0)
    backfill.run_backfill(s, random_model(s), T0)  # the current model
    return env


def test_refresh_prints_a_short_true_summary_and_no_noise(ready):
    interval = f"{stamp(T0)}/{stamp(T0 + HOUR)}"
    proc = subprocess.run(
        [sys.executable, "-m", "soe.cli.app", "refresh", "--interval", interval],
        cwd=REPO,
        env={**os.environ, **ready},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) <= 15, "\n".join(lines)
    noise = [ln for ln in lines if NOISE.search(ln)]
    assert noise == [], noise
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads(Path(result["manifest"]).read_text())
    for stage in ("encode", "publish"):  # the summary is the manifest's: summed over every shard
        assert result["stages"][stage]["seconds"] == manifest["stages"][stage]["seconds"]
        assert result["stages"][stage]["shards"] == 2
    summary = [ln for ln in proc.stderr.splitlines() if ln.startswith(result["as_of"])]
    assert len(summary) == 1 and "validated" in summary[0] and result["manifest"] in summary[0]
