"""Model namespaces and the current-model pointer: switch, rollback, cleanup, readers during a switch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from store import format as fmt
from store.backends import open_store
from store.client import LookupClient
from store.models import cleanup, current_model, list_models, rollback, switch_current

USERS = np.arange(1, 301)


def publish_model(store, model, seed, as_of=1_000):
    """A namespace whose vectors are recognisable: every user of model m has the seed's vectors."""
    x = np.random.default_rng(seed).standard_normal((len(USERS), 16)).astype(np.float32)
    store.ensure_model(model, 16, "float32", 64)
    store.upsert_vectors(model, USERS, fmt.encode_vectors(x, as_of, model, "float32"), as_of)
    store.record_manifest(model, "t/00000", {"rows": len(USERS)})
    return x


def test_switch_rollback_cleanup(store_any):
    store = open_store(store_any)
    for i, m in enumerate(["m1", "m2", "m3", "m4"]):
        publish_model(store, m, i)
    with pytest.raises(LookupError, match="publish it first"):
        switch_current(store, "m9")
    switch_current(store, "m1")
    with pytest.raises(LookupError, match="no previous"):
        rollback(store)
    assert switch_current(store_any, "m2")["previous"] == "m1"
    assert current_model(store_any) == "m2"
    assert rollback(store_any)["current"] == "m1" and current_model(store) == "m1"
    assert rollback(store)["current"] == "m2"  # rollback of a rollback goes forward again
    switch_current(store, "m3")  # current m3, previous m2
    dry = cleanup(store, dry_run=True, include_pending=True)
    assert set(dry["removed"]) == {"m1", "m4"} and store.model_meta("m1") is not None
    out = cleanup(store, include_pending=False)  # m4 was created before the last switch: not pending
    assert set(out["removed"]) == {"m1", "m4"} and out["removed"]["m1"] > 0
    assert store.models() == ["m2", "m3"] and store.model_meta("m1") is None
    assert not any(store.get_vectors("m1", USERS).found)
    assert {m["model"]: m["role"] for m in list_models(store)} == {"m2": "previous", "m3": "current"}
    assert store.get_vectors("m2", USERS).found.all() and store.get_vectors("m3", USERS).found.all()


def test_cleanup_spares_a_backfill_created_after_the_switch(store_any):
    store = open_store(store_any)
    publish_model(store, "m1", 0)
    switch_current(store, "m1")
    publish_model(store, "next", 1)  # being backfilled, not switched to yet (created after the switch)
    assert cleanup(store)["kept"] == ["m1", "next"]
    assert cleanup(store, include_pending=True)["removed"].keys() == {"next"}


def test_reader_during_switch_never_sees_a_mix(store_any):
    store = open_store(store_any)
    expected = {"a": publish_model(store, "a", 10), "b": publish_model(store, "b", 20)}
    switch_current(store, "a")
    stop = threading.Event()
    switches = []

    def switcher():
        writer = open_store(store_any)
        target = "b"
        while not stop.is_set():
            writer.switch_pointer(target)
            switches.append(target)
            target = "a" if target == "b" else "b"

    client = LookupClient(store_any, pointer_ttl_s=0.0)  # refetch the pointer on every batch
    seen = {"a": 0, "b": 0}
    t = threading.Thread(target=switcher)
    t.start()
    try:
        for i in range(150):
            batch = USERS[(i * 37) % 200 :][:100]
            res = client.lookup(batch)
            assert res.found.all()
            # every vector of the batch is the one model's vector: never a mix of a and b
            np.testing.assert_array_equal(res.vectors, expected[res.model][batch - 1])
            seen[res.model] += 1
    finally:
        stop.set()
        t.join()
    assert len(switches) > 10 and seen["a"] > 0 and seen["b"] > 0


def test_client_pointer_cache_ttl_and_missing_model(redis_memory):
    store = open_store(redis_memory)
    client = LookupClient(redis_memory, pointer_ttl_s=3600)
    with pytest.raises(LookupError, match="no current model"):
        client.get([1])
    xa = publish_model(store, "a", 1)
    xb = publish_model(store, "b", 2)
    switch_current(store, "a")
    client = LookupClient(redis_memory, pointer_ttl_s=3600)
    np.testing.assert_array_equal(client.get([5])[0][0], xa[4])
    switch_current(store, "b")
    assert client.current_model() == "a"  # cached for the TTL
    fresh = LookupClient(redis_memory, pointer_ttl_s=0)
    np.testing.assert_array_equal(fresh.get(5)[0][0], xb[4])
    pinned = LookupClient(redis_memory, model="a")
    vec, found = pinned.get([5, 10**9])
    assert found.tolist() == [True, False] and not vec[1].any()
