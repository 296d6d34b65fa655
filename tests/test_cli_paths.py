"""The paths a new user takes through the CLI: no dead ends, one clear line per problem, clean stops.

Real parts only: a real redis-server for the demo's Redis handling, the real `soe` console script
for Ctrl-C (a subprocess that gets SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_py
from typer.testing import CliRunner

from soe import __version__
from soe.cli.app import app
from soe.config import load_settings
from soe.flows.main_job import ensure_redis
from store import local_server

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"soe {__version__}" and __version__ != "0.0.0+unknown"


def test_malformed_yaml_config_is_one_line(tmp_path):
    bad = tmp_path / "soe.yaml"
    bad.write_text("redis: [port\n")
    r = runner.invoke(app, ["-c", str(bad), "config"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert (
        len(lines) == 1 and "not valid YAML" in lines[0] and "soe.yaml" in lines[0] and "line 2" in lines[0]
    )


def test_a_numeric_password_never_appears_in_errors_or_output(tmp_path):
    r = runner.invoke(app, ["config"], env={"SOE_REDIS__PASSWORD": "20240229", "SOE_REDIS__PORT": "x"})
    assert r.exit_code == 2 and "redis.port" in r.output and "20240229" not in r.output


def test_refresh_checks_its_preconditions_before_starting_spark(tmp_path):
    """No events, no Redis, no model: one line naming each problem and what to do, before Spark starts."""
    port = local_server.free_ports(1)[0]  # nothing listens there
    env = {"SOE_DATA__ROOT": str(tmp_path / "data"), "SOE_REDIS__PORT": str(port)}
    t0 = time.perf_counter()
    r = runner.invoke(app, ["refresh", "--interval", "2026-01-01T00:00Z/2026-01-01T01:00Z"], env=env)
    assert time.perf_counter() - t0 < 20
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "cannot refresh" in lines[0], r.output
    assert "no published events" in lines[0] and "soe generate" in lines[0]
    assert f"Redis 127.0.0.1:{port} is not reachable" in lines[0] and "soe redis start" in lines[0]


def test_refresh_without_a_current_model_says_how_to_get_one(tmp_path, redis_single):
    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from core.layout import Layout

    write_log(
        generate(SyntheticConfig(n_users=50, n_items=100, hours=1, start="2026-01-01T00:00:00Z")),
        Layout(tmp_path / "data"),
    )
    env = {"SOE_DATA__ROOT": str(tmp_path / "data"), "SOE_REDIS__PORT": str(redis_single.port)}
    r = runner.invoke(app, ["refresh", "--interval", "2026-01-01T00:00Z/2026-01-01T01:00Z"], env=env)
    assert r.exit_code == 2, r.output
    assert "no current model" in r.output and "soe train --promote" in r.output
    assert "events" not in r.output.split("no current model")[0]  # the events are there: not a problem


def test_demo_uses_the_configured_redis_and_never_stops_it(tmp_path, redis_single):
    s = load_settings(environ={"SOE_DATA__ROOT": str(tmp_path), "SOE_REDIS__PORT": str(redis_single.port)})
    assert ensure_redis(s, tmp_path / "redis") is None  # found: used as is, nothing to stop later
    assert s.redis.port == redis_single.port and redis_py.Redis(port=redis_single.port).ping()


def test_demo_starts_a_persistent_redis_on_the_configured_port_and_its_data_survives(tmp_path):
    port = local_server.free_ports(1)[0]
    s = load_settings(environ={"SOE_DATA__ROOT": str(tmp_path), "SOE_REDIS__PORT": str(port)})
    started = ensure_redis(s, tmp_path / "redis")
    try:
        assert started is not None and started.ports == [port] and s.redis.port == port
        client = redis_py.Redis(port=port)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.set("soe:demo:probe", "kept")
    finally:
        local_server.stop(started.work_dir)
    again = ensure_redis(s, tmp_path / "redis")  # the next demo run: same port, same data
    try:
        assert again is not None and redis_py.Redis(port=port).get("soe:demo:probe") == b"kept"
    finally:
        local_server.stop(again.work_dir)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT in the middle of a long command (a big `soe generate`): one line, exit 130, no traceback,
    and nothing half-published (the partitions present are complete ones)."""
    env = {**os.environ, "SOE_DATA__ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from soe.cli.app import app; app()",
            "generate",
            "--users",
            "3000000",
            "--hours",
            "48",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8)
    assert proc.poll() is None, "the command ended before the interrupt: make it longer"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: nothing was half-published"), err[-500:]
    from core.atomic import is_complete

    parts = [p for p in (tmp_path / "events").rglob("hour=*")] if (tmp_path / "events").exists() else []
    assert all(is_complete(p) for p in parts if not p.name.startswith("."))
