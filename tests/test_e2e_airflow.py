"""End to end: the hourly DAG through `airflow dags test`, against real Redis, local Spark, torch and FAISS.

One module-scoped world (tiny synthetic log, one Airflow home, one Redis) shared by the tests in
order: bootstrap + training -> promotion -> backfill -> switch (in-process flows), then hours h1..h3
through Airflow, a rerun of h2 (idempotence), and a failing h4 followed by its retry.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.layout import HOUR, utc
from soe.flows import stages
from soe.flows.manifest import read_manifest

pytestmark = pytest.mark.timeout(1200)

START = utc("2026-01-01T00:00Z")
BOOT = 3  # hours of history before the first hourly run
T0 = START + HOUR * BOOT  # as_of of the bootstrap state, the trainset and the backfill
H = [T0 + HOUR * i for i in (1, 2, 3, 4)]  # as_of of the hourly DAG runs


def tiny_settings(root, redis):
    from soe.config import load_settings

    s = load_settings(environ={"SOE_DATA__ROOT": str(root)})
    s.redis = redis
    s.train.epochs, s.train.model = 2, {"d_model": 32, "n_layers": 1, "n_heads": 2}
    s.sequences.num_shards, s.sequences.bootstrap_lookback_hours = 2, BOOT + 1
    s.spark.master, s.spark.shuffle_partitions, s.spark.driver_memory = "local[2]", 2, "1g"
    s.orchestration.min_drift_cosine = 0.05  # a 2-epoch d=32 model moves active users' vectors a lot
    return s


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_single_server):
    from core.datasets.synthetic import SyntheticConfig, generate, write_log
    from soe.flows import hourly, training
    from soe.flows.airflow_run import AirflowHome

    tmp = tmp_path_factory.mktemp("e2e")
    redis = redis_single_server.redis_settings(buckets=32)
    import redis as redis_py

    redis_py.Redis(host=redis.host, port=redis.port).flushall()
    s = tiny_settings(tmp / "data", redis)
    write_log(
        generate(
            SyntheticConfig(
                n_users=200,
                n_items=1000,
                n_clusters=4,
                hours=BOOT + len(H),
                start=str(START),
                base_events_per_user=30,
                seed=1,
            )
        ),
        s.layout(),
    )
    hourly.sequences(s, T0 - HOUR, T0)  # bootstrap state from the history
    trained = training.run_training(s, T0)  # trainset -> train -> evaluate -> gate -> backfill -> switch
    home = AirflowHome(tmp / "airflow", s)
    migrate_s = home.migrate()
    return {"settings": s, "home": home, "trained": trained, "migrate_s": migrate_s}


def snapshot(s, known=None):
    """Everything a reader can see: each known user's vector and neighbour list, and the key count."""
    import redis as redis_py

    known = np.sort(stages.state_user_ids(s, stages.newest_state(s))) if known is None else known
    model, vectors, found = stages.lookup(s, known)
    nbrs = stages.neighbours(s, model, known)
    keys = redis_py.Redis(host=s.redis.host, port=s.redis.port).dbsize()
    return {
        "ids": known,
        "vectors": vectors,
        "found": found,
        "neighbours": nbrs,
        "keys": keys,
        "model": model,
    }


def test_training_promotes_backfills_and_switches(world):
    s, trained = world["settings"], world["trained"]
    assert trained["promote"] and trained["reason"] == "no current model"
    model = trained["model"]
    assert stages.current_model(s) == model
    bf = read_manifest(s.layout(), "soe_backfill", T0)
    assert bf["model_version"] == model and bf["stages"]["switch"]["current"] == model
    known = stages.state_user_ids(s, T0)
    assert (
        stages.vectors_found(s, model, known) == len(known) > 100
    )  # every known user, not just the active ones
    assert bf["stages"]["validate"]["ok"] and stages.graph_manifest(s, model, T0) is not None


def test_hourly_dag_runs_consecutive_hours(world):
    s, home = world["settings"], world["home"]
    model = stages.current_model(s)
    for t in H[:3]:
        r = home.dags_test("soe_hourly", t)
        assert r.ok, r.tail(60)
        m = read_manifest(s.layout(), "soe_hourly", t)
        assert m["status"] == "done" and m["model_version"] == model and m["stages"]["validate"]["ok"]
        active = stages.active_user_ids(s, t)
        assert m["stages"]["encode"]["users"] == len(active) == m["stages"]["sequences"]["active_users"] > 0
        _, vectors, found = stages.lookup(s, active)  # through the lookup client, as a ranker reads
        assert found.all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=0.02)
        lists = stages.neighbours(s, model, active)
        assert all(x is not None and len(x[0]) > 0 for x in lists)
    assert set(m["stages"]) >= {"sequences", "encode", "publish", "graph", "validate"}
    checks = {c["name"]: c for c in m["stages"]["validate"]["checks"]}
    assert checks["drift"]["value"] is not None and checks["drift"]["ok"]  # judged against the previous hour


def test_rerun_of_an_earlier_hour_changes_nothing(world):
    s, home = world["settings"], world["home"]
    before = snapshot(s)
    m_before = read_manifest(s.layout(), "soe_hourly", H[1])
    r = home.dags_test("soe_hourly", H[1])
    assert r.ok, r.tail(60)
    after = snapshot(s)
    assert after["keys"] == before["keys"] and after["model"] == before["model"]
    assert np.array_equal(after["ids"], before["ids"]) and np.array_equal(after["found"], before["found"])
    assert np.array_equal(after["vectors"], before["vectors"])  # no newer (h3) vector overwritten by h2's
    same_lists = [
        (a is None and b is None) or (a is not None and b is not None and np.array_equal(a[0], b[0]))
        for a, b in zip(before["neighbours"], after["neighbours"])
    ]
    assert all(same_lists), f"{len(same_lists) - sum(same_lists)} neighbour lists changed by the rerun"
    m_after = read_manifest(s.layout(), "soe_hourly", H[1])
    assert m_after["attempt"] == m_before["attempt"] + 1
    for stage, key in [("sequences", "active_users"), ("sequences", "valid_events"), ("encode", "users")]:
        assert m_after["stages"][stage][key] == m_before["stages"][stage][key]
    assert m_after["stages"]["publish"]["written"] == 0  # every vector already there (or newer)


def test_failed_shard_leaves_readers_on_the_previous_state_and_a_retry_completes(world):
    s, home = world["settings"], world["home"]
    before = snapshot(s)
    r = home.dags_test(
        "soe_hourly", H[3], conf={"drill_fail_shards": [1]}, extra_env={"SOE_ORCHESTRATION__RETRIES": "0"}
    )
    assert not r.ok and r.state == "failed"
    assert read_manifest(s.layout(), "soe_hourly", H[3]) is None  # not marked done
    alert = json.loads(s.layout().manifest("soe_hourly_alerts", H[3]).read_text())
    assert alert["task"] == "encode" and "failure drill" in alert["error"]
    during = snapshot(s, before["ids"])
    assert np.array_equal(during["vectors"], before["vectors"]) and during["keys"] == before["keys"]
    r = home.dags_test("soe_hourly", H[3])  # the retry
    assert r.ok, r.tail(60)
    assert read_manifest(s.layout(), "soe_hourly", H[3])["status"] == "done"
    active = stages.active_user_ids(s, H[3])
    _, vectors, found = stages.lookup(s, active)
    assert found.all()
    known_before = np.isin(active, before["ids"])
    old = before["vectors"][np.searchsorted(before["ids"], active[known_before])]
    moved = ~np.isclose(vectors[known_before], old).all(axis=1)
    assert moved.mean() > 0.5  # the active users now read h4's vectors


def test_an_untrained_candidate_is_not_promoted_and_a_failed_backfill_keeps_the_old_model(world, monkeypatch):
    from bench.refresh import random_model
    from soe.flows import backfill, training

    s = world["settings"]
    current = stages.current_model(s)
    candidate = random_model(s)  # untrained weights: cannot beat the current model on the same split
    evaluation = training.evaluate(s, candidate, str(s.layout().state(T0)), T0)
    assert evaluation["current"] == current and evaluation["current_metrics"] is not None
    decision = training.gate(s, evaluation)
    assert not decision["promote"] and decision["candidate"] <= decision["current"], decision

    def crash(*args, **kwargs):
        raise RuntimeError("graph build crashed")

    monkeypatch.setattr(stages, "build_graph", crash)
    with pytest.raises(RuntimeError, match="graph build crashed"):
        backfill.run_backfill(s, candidate)  # forced through: fails after encode + publish, before the switch
    assert stages.current_model(s) == current
    known = np.sort(stages.state_user_ids(s, T0))[:50]
    model, _, found = stages.lookup(s, known)
    assert model == current and found.all()  # readers still on the old model
