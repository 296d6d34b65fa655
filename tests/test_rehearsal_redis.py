"""Rehearsal of a Redis Cluster failover on one machine: 3 masters + 1 replica each, AOF on, loopback.

The cluster (`redis_replicated`, tests/fixtures/redis_servers.py) is formed by
``redis-cli --cluster create ... --cluster-replicas 1`` with ``cluster-node-timeout`` 1000 ms. Two faults,
each a ``kill -9`` of one master's redis-server:

* **during a publish**: a generation is published through the flows' publish step
  (`soe.flows.hourly.publish`, one call per shard as the Airflow ``publish[i]`` tasks do) while a
  watcher kills the master serving the model's meta key once a third of its share of the upsert calls
  has arrived. The replica is promoted, the publish completes (the store retries through the failover,
  `store.backends.redis.ride_failover`) and afterwards every vector is present and byte-equal to the
  same two generations published to a single redis-server (count + sha256 over every stored value).
* **during lookups under load**: two reader threads loop over `store.client.LookupClient` lookups
  (batches and single ids) while the master serving the current-model pointer is killed. Per lookup:
  start, end, error, and whether every vector equals the published one with its as_of. The failover
  window is the longest time without a successful lookup around the kill; it must stay under
  cluster-node-timeout + `MARGIN_S`, no lookup may return a wrong or older vector, and a full scan after
  the failover equals the one before.

Each test prints what was killed, when, what readers saw, and the counts and hashes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import numpy as np
import pytest

from soe.flows import hourly
from store.backends import open_store
from store.format import AS_OF_OFFSET
from tests.test_store_redis import T0, unit, write_shard

MODEL = "rehearsal-m1"
T1, T2 = T0, T0 + timedelta(hours=1)
USERS = 120_000
DIM = 32
SHARDS = 2
BUCKETS = 2048
MARGIN_S = 6.0  # failover bound = cluster-node-timeout + this (election, gossip, client backoff)


def with_store(settings, redis_settings):
    rs = redis_settings.model_copy(update={"buckets": BUCKETS, "publish_batch": 8192})
    return settings.model_copy(update={"redis": rs})


def write_generation(layout, as_of, seed: int) -> None:
    ids = np.arange(1, USERS + 1, dtype=np.int64) * 7919  # spread over buckets and slots
    x = unit(USERS, DIM, seed)
    for i, part in enumerate(np.array_split(np.arange(USERS), SHARDS)):
        write_shard(layout, MODEL, as_of, i, ids[part], x[part])


def all_ids() -> np.ndarray:
    return np.arange(1, USERS + 1, dtype=np.int64) * 7919


def publish(settings, as_of) -> list[dict]:
    """The flows' publish step, one call per shard (the Airflow tasks publish[0..K-1])."""
    return [hourly.publish(settings, MODEL, as_of, i) for i in range(SHARDS)]


def digest(settings) -> tuple[int, str, set[int]]:
    """(values found, sha256 over every stored value in user order, the as_of ms seen)."""
    store = open_store(settings.redis)
    h, found, as_ofs = hashlib.sha256(), 0, set()
    ids = all_ids()
    for i in range(0, len(ids), 20_000):
        for uid, v in zip(ids[i : i + 20_000].tolist(), store.get("vectors", MODEL, ids[i : i + 20_000])):
            if v is None:
                continue
            found += 1
            h.update(uid.to_bytes(8, "little") + v)
            as_ofs.add(int.from_bytes(v[AS_OF_OFFSET : AS_OF_OFFSET + 8], "little", signed=True))
    return found, h.hexdigest(), as_ofs


@pytest.fixture(scope="module")
def single_machine(tmp_path_factory, redis_single_server):
    """The same two generations published to one redis-server: the reference count and hash."""
    from soe.config import load_settings

    root = tmp_path_factory.mktemp("single") / "data"
    settings = with_store(
        load_settings(environ={"SOE_DATA__ROOT": str(root)}), redis_single_server.redis_settings()
    )
    open_store(settings.redis).r.flushall()
    write_generation(settings.layout(), T1, seed=1)
    write_generation(settings.layout(), T2, seed=2)
    publish(settings, T1)
    after_t1 = digest(settings)
    publish(settings, T2)
    return {"t1": after_t1, "t2": digest(settings)}


def fcall_calls(node) -> int:
    return int(node.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))


def test_ride_failover_retries_until_the_deadline_then_raises():
    import redis

    from store.backends.redis import ride_failover

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("refused")
        return "ok"

    assert ride_failover(flaky, 5.0) == "ok" and len(calls) == 3
    t0 = time.monotonic()
    with pytest.raises(redis.exceptions.ClusterDownError):
        ride_failover(lambda: (_ for _ in ()).throw(redis.exceptions.ClusterDownError("down")), 0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.5
    with pytest.raises(ValueError):  # anything else is not retried
        ride_failover(lambda: (_ for _ in ()).throw(ValueError("bad")), 5.0)


@pytest.mark.slow
def test_master_killed_during_a_publish(settings, redis_replicated, single_machine):
    cluster = redis_replicated
    s = with_store(settings, cluster.redis_settings())
    write_generation(s.layout(), T1, seed=1)
    write_generation(s.layout(), T2, seed=2)
    publish(s, T1)
    assert digest(s) == single_machine["t1"]

    victim = cluster.master_of_key(f"soe:meta:{MODEL}")
    replica = cluster.replica_of(victim)
    node = cluster.node(victim)
    before = fcall_calls(node)
    share = before // 2  # upsert calls the victim took for T1 (the functions' check counts too)
    fault: dict = {"killed": None}
    done = threading.Event()

    def watcher():  # kills the victim once a third of its share of T2's upserts has arrived
        while not done.is_set():
            calls = fcall_calls(node)
            if calls >= before + share // 3:
                fault.update(calls_at_kill=calls - before, killed=cluster.kill(victim))
                return
            time.sleep(0.005)

    w = threading.Thread(target=watcher, daemon=True)
    w.start()
    t0 = time.monotonic()
    try:
        results = publish(s, T2)
    finally:
        t1 = time.monotonic()
        done.set()
        w.join(5)
    assert fault["killed"] is not None, "the watcher never killed the master"
    assert t0 < fault["killed"] < t1, "the kill did not land during the publish"
    topo = cluster.topology()
    assert topo.get(replica) == ("master", None), f"replica {replica} not promoted: {topo}"
    assert victim not in topo
    assert sum(r["rows"] for r in results) == USERS

    found, sha, as_ofs = digest(s)
    expected = single_machine["t2"]
    print(
        f"\nkilled master :{victim} (serving soe:meta:{MODEL}) {fault['killed'] - t0:.2f} s into the "
        f"publish, after {fault['calls_at_kill']} of its ~{share} FCALLs; replica :{replica} promoted; "
        f"publish finished {t1 - fault['killed']:.2f} s after the kill ({t1 - t0:.2f} s in all); "
        f"counts written/unchanged/stale = {[(r['written'], r['unchanged'], r['stale']) for r in results]}"
        f"\nafter failover: {found} vectors, sha256 {sha[:16]}; single redis-server: {expected[0]} vectors, "
        f"sha256 {expected[1][:16]}"
    )
    assert found == USERS and (found, sha) == expected[:2]
    assert as_ofs == expected[2] and len(as_ofs) == 1  # every vector is the T2 one: none older

    # the killed node comes back from its AOF and rejoins as a replica of the promoted one
    cluster.restart(victim)
    waited = cluster.wait_healthy()
    assert cluster.topology()[victim] == ("replica", replica)
    cluster.wait_replicated()
    assert digest(s)[:2] == expected[:2]
    print(f"restarted :{victim}: replica of :{replica} again, cluster healthy after {waited:.2f} s")


@pytest.mark.slow
def test_master_killed_during_lookups_under_load(settings, redis_replicated, single_machine):
    from store.client import LookupClient
    from store.models import switch_current

    cluster = redis_replicated
    s = with_store(settings, cluster.redis_settings())
    write_generation(s.layout(), T1, seed=1)
    publish(s, T1)
    switch_current(s.redis, MODEL)
    cluster.wait_replicated()
    before = digest(s)
    assert before == single_machine["t1"]

    ids = all_ids()
    expected = open_store(s.redis).get_vectors(MODEL, ids).vectors  # float32 (n, d), as published
    stop = threading.Event()
    log: list[tuple[float, float, str | None, bool]] = []  # (start, end, error, every vector right)

    def reader(seed: int):
        client = LookupClient(s.redis, pointer_ttl_s=0.2)
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            pick = rng.choice(len(ids), 1 if rng.random() < 0.3 else 256, replace=False)
            t = time.monotonic()
            try:
                res = client.lookup(ids[pick])
                right = bool(
                    res.found.all()
                    and np.array_equal(res.vectors, expected[pick])
                    and res.model == MODEL
                    and set(np.asarray(res.as_of).tolist()) == set(before[2])
                )
                log.append((t, time.monotonic(), None, right))
            except Exception as exc:  # recorded, never swallowed: asserted below
                log.append((t, time.monotonic(), f"{type(exc).__name__}: {exc}", False))
                time.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim = cluster.master_of_key("soe:pointer")
    replica = cluster.replica_of(victim)
    killed = cluster.kill(victim)
    time.sleep(cluster.node_timeout_ms / 1000 + MARGIN_S + 2)
    stop.set()
    for t in threads:
        t.join(30)

    ok_ends = sorted(end for _, end, err, _ in log if err is None)
    errors = [(start, err) for start, _, err, _ in log if err is not None]
    before_kill = [e for e in ok_ends if e < killed]
    after_kill = [e for e in ok_ends if e >= killed]
    assert before_kill and after_kill, "readers did not run on both sides of the kill"
    # the failover window: from the last lookup that succeeded before the kill to the first one after
    gap = after_kill[0] - before_kill[-1]
    window = after_kill[0] - killed
    slowest = max(end - start for start, end, _, _ in log)
    wrong = sum(1 for _, _, err, right in log if err is None and not right)
    err_span = (max(t for t, _ in errors) - min(t for t, _ in errors)) if errors else 0.0
    bound = cluster.node_timeout_ms / 1000 + MARGIN_S
    topo = cluster.topology()
    after = digest(s)
    print(
        f"\nkilled master :{victim} (serving soe:pointer) after 1.5 s of lookups; replica :{replica} "
        f"promoted={topo.get(replica) == ('master', None)}\nreaders: {len(log)} lookups, {len(errors)} "
        f"errors (spanning {err_span:.2f} s){' e.g. ' + errors[0][1] if errors else ''}, {wrong} wrong or "
        f"older; failover window {window:.2f} s from the kill to the first successful lookup, longest "
        f"gap without one {gap:.2f} s, slowest lookup {slowest:.2f} s (bound {bound:.1f} s)"
        f"\nbefore: {before[0]} vectors sha256 {before[1][:16]}; "
        f"after: {after[0]} vectors sha256 {after[1][:16]}"
    )
    assert topo.get(replica) == ("master", None), topo
    assert wrong == 0
    assert gap <= bound and window <= bound and err_span <= bound
    assert after == before
    # lookups keep succeeding after the window: the tail of the run is error free
    assert not [t for t, _ in errors if t > killed + bound]
