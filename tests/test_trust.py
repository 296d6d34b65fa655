"""Nothing wrong ever reaches a reader, and nothing done is lost silently (issue 13, items 2 and 3).

A tiny real world: synthetic events, real local Spark, a real persistent redis-server (AOF), a random
model backfilled as the current one. Each test first reproduces the finding, then shows it holds:

* a rejected hour publishes nothing: no vector, list or `last_as_of` moves, its graph is never served,
  its outputs move to ``rejected/``, an alert is written and the run fails at once;
* AOF: a ``kill -9`` right after an hour completed loses nothing;
* a store that lost everything is repaired by the next hourly run from the embedding shards (the
  source of truth): the pointer, every done hour, the neighbour lists; the manifest says so.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import redis as redis_py

from core.layout import HOUR, utc
from soe.flows import stages

START = utc("2026-01-01T00:00Z")
T0 = START + HOUR * 2  # bootstrap state + backfill
H = [T0 + HOUR * i for i in (1, 2, 3)]  # hourly runs
pytestmark = pytest.mark.timeout(900)


def settings_for(root, redis_settings, **orchestration):
    from soe.config import load_settings

    s = load_settings(environ={"SOE_DATA__ROOT": str(root)})
    s.redis = redis_settings
    s.sequences.num_shards, s.sequences.bootstrap_lookback_hours = 2, 3
    s.spark.master, s.spark.shuffle_partitions, s.spark.driver_memory = "local[2]", 2, "1g"
    s.orchestration.min_drift_cosine = -1.0  # random weights: drift is judged only where a test asks
    for k, v in orchestration.items():
        setattr(s.orchestration, k, v)
    return s


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from bench.refresh import random_model
    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from soe.flows import backfill, hourly
    from store import local_server

    tmp = tmp_path_factory.mktemp("trust")
    server = local_server.start_single(tmp / "redis", persist=True)
    s = settings_for(tmp / "data", server.redis_settings(buckets=32))
    write_log(
        generate(
            SyntheticConfig(
                n_users=160,
                n_items=600,
                n_clusters=4,
                hours=6,
                start=str(START),
                base_events_per_user=25,
                seed=5,
            )
        ),
        s.layout(),
    )
    hourly.sequences(s, T0 - HOUR, T0)
    model = random_model(s)
    backfill.run_backfill(s, model, T0)
    yield {"settings": s, "model": model, "server": server, "tmp": tmp}
    local_server.stop(server.work_dir)


def reader_view(s, at=T0) -> dict:
    """Everything a ranker or the service can see for every user known at ``at``."""
    from store.graph.snapshot import graph_times

    known = np.sort(stages.state_user_ids(s, at))
    model, vectors, found = stages.lookup(s, known)
    nbrs = stages.neighbours(s, model, known)
    meta = redis_py.Redis(host=s.redis.host, port=s.redis.port).hgetall(f"{s.redis.namespace}:meta:{model}")
    return {
        "ids": known,
        "model": model,
        "vectors": vectors,
        "found": found,
        "graphs": graph_times(s.layout(), model),
        "lists": [None if x is None else x[0].tolist() for x in nbrs],
        "last_as_of": meta.get(b"last_as_of"),
    }


def test_a_rejected_hour_publishes_nothing_and_fails_at_once(world):
    from soe.flows import hourly
    from soe.flows.checks import GenerationRejected

    base = world["settings"]
    strict = settings_for(base.data.root, base.redis, min_drift_cosine=0.9999)  # random weights drift a lot
    before = reader_view(base)
    t0 = time.perf_counter()
    with pytest.raises(GenerationRejected, match="drift"):
        hourly.run_interval(strict, H[0] - HOUR, H[0])
    after = reader_view(base)
    assert np.array_equal(after["found"], before["found"]) and np.array_equal(
        after["vectors"], before["vectors"]
    )
    assert after["lists"] == before["lists"] and after["last_as_of"] == before["last_as_of"]
    assert after["graphs"] == before["graphs"]  # no graph of the rejected hour is ever served
    layout = base.layout()
    assert not layout.embeddings(world["model"], H[0]).exists()  # no later graph builds on its vectors
    assert (layout.rejected(world["model"], H[0]) / "embeddings").is_dir()
    alert = json.loads(layout.manifest("soe_hourly_alerts", H[0]).read_text())
    assert "rejected" in alert["error"] and "drift" in alert["error"]
    assert layout.manifest("soe_hourly", H[0]).exists() is False  # not marked done
    assert time.perf_counter() - t0 < 600


def test_the_same_hour_then_passes_and_is_served(world):
    from soe.flows import hourly

    s = world["settings"]
    out = hourly.run_interval(s, H[0] - HOUR, H[0])
    view = reader_view(s, H[0])
    assert view["graphs"][-1] == H[0] and view["found"].all()
    # the run manifest says the graph was accepted where it was, never the build's unaccepted flag
    assert out["stages"]["publish_graph"]["graph_accepted"] is True
    assert "accepted" not in out["stages"]["graph"]
    assert out["stages"]["validate"]["ok"] and {c["name"] for c in out["stages"]["validate"]["checks"]} == {
        "coverage",
        "norms",
        "drift",
        "recall",
        "lookup",
    }
    active = stages.active_user_ids(s, H[0])
    _, _, found = stages.lookup(s, active)
    assert found.all()


def test_kill_9_right_after_a_completed_hour_loses_nothing_with_aof(world):
    from store import local_server

    s, server = world["settings"], world["server"]
    before = reader_view(s)
    time.sleep(1.5)  # appendfsync everysec: the last completed write is on disk within a second
    os.kill(server.pids[0], signal.SIGKILL)
    time.sleep(0.5)
    (server.work_dir / "servers.json").unlink()  # the dead server's record: start again in its place
    world["server"] = local_server.start_single(server.work_dir, port=server.ports[0], persist=True)
    after = reader_view(s)
    assert np.array_equal(after["found"], before["found"]) and np.array_equal(
        after["vectors"], before["vectors"]
    )
    assert after["lists"] == before["lists"] and after["model"] == before["model"]


def test_a_store_that_lost_everything_is_repaired_by_the_next_hour(world):
    from soe.flows import hourly
    from soe.flows.manifest import read_manifest

    s = world["settings"]
    expected = reader_view(s, H[0])
    client = redis_py.Redis(host=s.redis.host, port=s.redis.port)
    client.flushall()  # the finding: a restart lost the completed hours, still marked done on disk
    assert stages.current_model(s) is None
    out = hourly.run_interval(s, H[1] - HOUR, H[1])
    repaired = read_manifest(s.layout(), "soe_hourly", H[1])["stages"]["reconcile"]
    assert (
        repaired["pointer_restored"] == world["model"] and repaired["republished_hours"] == 2
    )  # backfill + H1
    view = reader_view(s, H[0])
    assert view["found"].all() and view["model"] == world["model"]
    idle = ~np.isin(
        view["ids"], stages.active_user_ids(s, H[1])
    )  # users H2 did not touch: back on H1's vectors
    assert np.array_equal(view["vectors"][idle], expected["vectors"][idle])
    assert all(x is not None for x in view["lists"])
    assert out["stages"]["reconcile"]["republished_hours"] == 2
    again = hourly.reconcile(s)  # nothing left to repair
    assert again["republished_hours"] == 0 and "pointer_restored" not in again
