"""`soe demo` and `soe retrain` end to end, as a new user runs them (slow: Spark, training, FAISS).

The user starts Redis with `soe redis start`; the demo must use it and leave it running with its
data; `soe retrain` then runs the training flow on the demo's data and reports the gate's decision.
"""

from __future__ import annotations

import json

import pytest
import redis as redis_py
from typer.testing import CliRunner

from soe.cli.app import app
from store import local_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
runner = CliRunner()


def test_demo_then_retrain_on_the_users_redis(tmp_path):
    port = local_server.free_ports(1)[0]
    env = {"SOE_DATA__ROOT": str(tmp_path / "data"), "SOE_REDIS__PORT": str(port)}
    r = runner.invoke(app, ["redis", "start"], env=env)
    assert r.exit_code == 0, r.output
    try:
        r = runner.invoke(app, ["demo", "--users", "300", "--runs", "1", "--no-airflow"], env=env)
        assert r.exit_code == 0, r.output[-3000:]
        assert f"using the configured server 127.0.0.1:{port}" in r.output
        client = redis_py.Redis(port=port)
        assert client.ping()  # the demo did not stop the server the user started
        current = client.hget("soe:pointer", "current")
        assert current is not None  # and its data (the current model) is still there
        r = runner.invoke(app, ["retrain", "--no-backfill"], env=env)
        assert r.exit_code == 0, r.output[-3000:]
        decision = json.loads(r.output.strip().splitlines()[-1])
        assert "promote" in decision and decision.get("reason")
        assert client.hget("soe:pointer", "current") == current  # --no-backfill never switches
    finally:
        runner.invoke(app, ["redis", "stop"], env=env)
