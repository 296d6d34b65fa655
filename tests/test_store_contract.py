"""The store contract (store.base.VectorStore), the same tests on every backend.

Each test runs three times (the ``store_any`` fixture): the in-memory backend, a real single
redis-server and a real 3-master Redis Cluster, each opened with `store.backends.open_store`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from store import format as fmt
from store.backends import open_store
from store.base import VectorStore

T1, T2, T3 = 1_000_000, 2_000_000, 3_000_000  # as_of, ms
USERS = np.arange(100, 400, dtype=np.int64)


@pytest.fixture
def store(store_any) -> VectorStore:
    return open_store(store_any.model_copy(update={"buckets": 64}))


def unit(n, d=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vector_rows(n, as_of, model="m1", seed=0):
    return fmt.encode_vectors(unit(n, seed=seed), as_of, model)


def neighbour_values(ids, as_of, model="m1", shift=1):
    return [fmt.encode_neighbours([i + shift, i + 2 * shift], [0.9, 0.8], as_of, model) for i in ids.tolist()]


def positives_values(ids, as_of, item=7):
    return [fmt.encode_neighbours([item, i], [1.0, 2.0], as_of, "positives") for i in ids.tolist()]


def values_of(kind, ids, as_of, seed=0):
    """Encoded values of ``kind`` for ``ids`` (vectors as a uint8 row array, the others as bytes)."""
    if kind == "vectors":
        return vector_rows(len(ids), as_of, seed=seed)
    if kind == "neighbours":
        return neighbour_values(ids, as_of, shift=1 + seed)
    return positives_values(ids, as_of, item=7 + seed)


def as_bytes(values):
    return [v.tobytes() if isinstance(v, np.ndarray) else v for v in values]


def model_of(kind):
    return None if kind == "positives" else "m1"


KINDS = ["vectors", "neighbours", "positives"]


@pytest.mark.parametrize("kind", KINDS)
def test_upsert_then_get_returns_the_same_bytes_and_none_for_missing(store, kind):
    store.ensure_model("m1", 8, "float16", 64)
    values = values_of(kind, USERS, T1)
    c = store.upsert(kind, model_of(kind), USERS, values, T1)
    assert c.as_dict() == {"written": 300, "unchanged": 0, "stale": 0, "duplicates": 0}
    expected = as_bytes(values)
    assert store.get(kind, model_of(kind), USERS) == expected
    query = np.array([105, 10**12, 105, -3, 399])  # duplicates and missing ids, in any order
    assert store.get(kind, model_of(kind), query) == [expected[5], None, expected[5], None, expected[299]]
    assert store.get(kind, model_of(kind), [USERS[7]]) == [expected[7]]  # one id
    assert store.get(kind, model_of(kind), 123) == [expected[23]]  # a plain int
    assert store.get(kind, model_of(kind), np.zeros(0, np.int64)) == []
    if kind != "positives":  # other namespaces hold nothing of it
        store.ensure_model("m2", 8, "float16", 64)
        assert store.get(kind, "m2", USERS[:3]) == [None, None, None]


@pytest.mark.parametrize("kind", KINDS)
def test_newest_as_of_wins_and_an_older_upsert_never_overwrites(store, kind):
    store.ensure_model("m1", 8, "float16", 64)
    model = model_of(kind)
    new = values_of(kind, USERS, T2, seed=0)
    assert store.upsert(kind, model, USERS, new, T2).written == 300
    old = values_of(kind, USERS, T1, seed=1)  # a late backfill of an older hour
    late = store.upsert(kind, model, USERS, old, T1)
    assert (late.written, late.unchanged, late.stale) == (0, 0, 300)
    assert store.get(kind, model, USERS) == as_bytes(new)
    # per user within one batch: even users get a newer as_of (written), odd an older one (stale)
    mixed_as_of = np.where(USERS % 2 == 0, T3, T1)
    mixed = (
        values_of(kind, USERS, mixed_as_of, seed=2)
        if kind == "vectors"
        else [values_of(kind, USERS[i : i + 1], int(t), seed=2)[0] for i, t in enumerate(mixed_as_of)]
    )
    c = store.upsert(kind, model, USERS, mixed, mixed_as_of)
    assert (c.written, c.stale) == (150, 150)
    got = store.get(kind, model, USERS)
    for i in range(len(USERS)):
        want = as_bytes(mixed)[i] if USERS[i] % 2 == 0 else as_bytes(new)[i]
        assert got[i] == want
    # equal as_of, different bytes: the newer write wins (a rerun that fixed something)
    fixed = values_of(kind, USERS[:1], T2, seed=3)
    assert store.upsert(kind, model, USERS[1:2], fixed, T2).written == 1
    assert store.get(kind, model, USERS[1:2]) == as_bytes(fixed)


@pytest.mark.parametrize("kind", KINDS)
def test_a_user_twice_in_one_batch_keeps_its_newest_row(store, kind):
    store.ensure_model("m1", 8, "float16", 64)
    ids = np.array([5, 6, 5, 5], np.int64)
    stamps = np.array([T2, T1, T3, T1], np.int64)
    values = [values_of(kind, ids[i : i + 1], int(stamps[i]), seed=i)[0] for i in range(4)]
    rows = np.stack(values) if kind == "vectors" else values
    c = store.upsert(kind, model_of(kind), ids, rows, stamps)
    assert (c.written, c.duplicates) == (2, 2)
    assert store.get(kind, model_of(kind), [5, 6]) == as_bytes([values[2], values[1]])
    # a tie of as_of: the later row wins
    tie = [values_of(kind, ids[:1], T3, seed=9)[0], values_of(kind, ids[:1], T3, seed=8)[0]]
    c = store.upsert(kind, model_of(kind), [5, 5], np.stack(tie) if kind == "vectors" else tie, T3)
    assert (c.written, c.duplicates) == (1, 1) and store.get(kind, model_of(kind), [5]) == as_bytes(tie[1:])


def test_rerun_is_idempotent(store):
    store.ensure_model("m1", 8, "float16", 64)
    vec, nbr, pos = vector_rows(300, T1), neighbour_values(USERS, T1), positives_values(USERS, T1)
    for _ in range(2):
        counts = [
            store.upsert("vectors", "m1", USERS, vec, T1),
            store.upsert("neighbours", "m1", USERS, nbr, T1),
            store.upsert("positives", None, USERS, pos, T1),
        ]
    assert all((c.written, c.unchanged, c.stale) == (0, 300, 0) for c in counts)
    assert store.get("vectors", "m1", USERS) == as_bytes(vec) and store.get("positives", None, USERS) == pos
    assert store.ensure_model("m1", 8, "float16", 64).buckets == 64 and store.models() == ["m1"]


def test_delete_users_removes_every_kind_in_every_namespace(store):
    for model in ("m1", "m2"):
        store.ensure_model(model, 8, "float16", 64)
        store.upsert("vectors", model, USERS, vector_rows(300, T1, model), T1)
    store.upsert("neighbours", "m1", USERS[:100], neighbour_values(USERS[:100], T1), T1)
    store.upsert("positives", None, USERS[:10], positives_values(USERS[:10], T1), T1)
    gone = np.array([100, 105, 250, 10**9])
    removed = store.delete_users(gone)
    assert removed == {"v:m1": 3, "n:m1": 2, "v:m2": 3, "n:m2": 0, "p:positives": 2}
    for kind, model in [("vectors", "m1"), ("vectors", "m2"), ("neighbours", "m1"), ("positives", None)]:
        assert store.get(kind, model, gone[:3]) == [None, None, None]
    assert store.get("vectors", "m1", [101])[0] is not None
    assert store.get("positives", None, [101])[0] is not None
    assert sum(store.delete_users(gone).values()) == 0  # idempotent
    assert sum(store.delete_users([]).values()) == 0


def test_missing_namespace_reads_nothing_and_refuses_writes(store):
    assert store.get("vectors", "nope", [1, 2]) == [None, None]
    assert store.model_meta("nope") is None and store.models() == []
    lookup = store.get_vectors("nope", [1, 2])
    assert lookup.found.tolist() == [False, False] and lookup.vectors.shape == (2, 0)
    with pytest.raises(LookupError, match="does not exist"):
        store.upsert("vectors", "nope", [1], vector_rows(1, T1, "nope"), T1)
    with pytest.raises(LookupError):
        store.upsert("neighbours", "nope", [1], neighbour_values(np.array([1]), T1), T1)
    assert store.get("positives", None, [1]) == [None]  # positives need no namespace


def test_bad_input_is_refused_before_anything_is_written(store):
    store.ensure_model("m1", 8, "float16", 64)
    with pytest.raises(ValueError, match="16-byte header"):
        store.upsert("neighbours", "m1", [1, 2], [fmt.encode_neighbours([3], [1.0], T1, "m1"), b"short"], T1)
    with pytest.raises(ValueError, match="2 user ids but 1 values"):
        store.upsert("vectors", "m1", [1, 2], vector_rows(1, T1), T1)
    with pytest.raises(ValueError, match="model independent"):
        store.upsert("positives", "m1", [1], positives_values(np.array([1]), T1), T1)
    with pytest.raises(ValueError, match="need a model"):
        store.get("vectors", None, [1])
    with pytest.raises(ValueError, match="kind"):
        store.get("embeddings", "m1", [1])
    assert store.get("neighbours", "m1", [1, 2]) == [None, None]
    with pytest.raises(ValueError, match="refusing"):
        store.ensure_model("m1", 16, "float16", 64)
    with pytest.raises(ValueError, match="model version"):
        store.ensure_model("bad name!", 8, "float16", 64)


def test_vectors_decode_through_the_interface(store):
    x = unit(300, 8)
    for dtype in ("float16", "float32", "int8"):
        model = f"m-{dtype}"
        meta = store.ensure_model(model, 8, dtype, 64)
        store.upsert_vectors(model, USERS, fmt.encode_vectors(x, T1, model, dtype), T1)
        got = store.lookup_with(meta, np.r_[USERS[:50], [7]])
        assert got.model == model and got.found.tolist() == [True] * 50 + [False]
        assert (got.as_of[:50] == T1).all() and got.as_of[50] == 0
        np.testing.assert_allclose(got.vectors[:50], x[:50], atol=1e-2 if dtype == "int8" else 1e-3)


def test_pointer_switch_and_rollback(store):
    assert store.pointer() == {} and store.current() is None
    with pytest.raises(LookupError, match="no previous"):
        store.swap_pointer()
    p = store.switch_pointer("a")
    assert p["current"] == "a" and "previous" not in p and store.current() == "a"
    p = store.switch_pointer("b")
    assert (p["current"], p["previous"]) == ("b", "a")
    assert store.switch_pointer("b") == p  # already current: nothing changes
    p = store.swap_pointer()
    assert (p["current"], p["previous"]) == ("a", "b") and store.current() == "a"
    p = store.swap_pointer()  # a rollback of a rollback goes forward again
    assert (p["current"], p["previous"]) == ("b", "a") and p["switched_at"]
    assert store.pointer() == p


def test_namespaces_metadata_manifests_and_drop(store):
    meta = store.ensure_model("m1", 8, "float32", 64)
    assert (meta.model, meta.dim, meta.dtype, meta.buckets) == ("m1", 8, "float32", 64)
    assert meta.extra["format"] == "1" and "created_at" in meta.extra
    assert store.ensure_model("m1", 8, "float32", 999).buckets == 64  # the first creator's shape stays
    store.update_meta("m1", last_as_of="2026-01-01T05:00:00+00:00", vectors=300)
    assert store.model_meta("m1").extra["vectors"] == "300"
    store.record_manifest("m1", "20260101T0500Z/00000", {"rows": 300, "as_of": "x", "ok": True})
    store.record_manifest("m1", "20260101T0600Z/all", {"rows": 1})
    assert store.manifests("m1") == {
        "20260101T0500Z/00000": {"rows": 300, "as_of": "x", "ok": True},
        "20260101T0600Z/all": {"rows": 1},
    }
    store.ensure_model("m2", 8, "float32", 64)
    store.upsert_vectors("m1", USERS, fmt.encode_vectors(unit(300), T1, "m1", "float32"), T1)
    store.upsert_neighbours("m1", USERS, neighbour_values(USERS, T1), T1)
    assert store.models() == ["m1", "m2"]
    assert store.drop_model("m1") > 0
    assert store.models() == ["m2"] and store.model_meta("m1") is None and store.manifests("m1") == {}
    assert store.get("vectors", "m1", USERS[:2]) == [None, None]
    assert store.drop_model("m1") == 0


def test_records_written_with_a_ttl_expire(store):
    store.upsert("positives", None, USERS[:5], positives_values(USERS[:5], T1), T1, ttl_s=0.3)
    store.upsert("positives", None, USERS[5:10], positives_values(USERS[5:10], T1), T1)
    assert all(v is not None for v in store.get("positives", None, USERS[:10]))
    time.sleep(0.6)
    kept = np.array([v is not None for v in store.get("positives", None, USERS[:10])])
    # Redis expires a whole bucket hash: users sharing a bucket with an expiring user may go too
    assert not kept[:5].any() and kept[5:].sum() >= 1


def test_write_order_is_a_permutation_and_redis_groups_it_by_bucket(store):
    from store.keys import bucket_of

    ids = np.random.default_rng(3).permutation(10_000)[:3_000].astype(np.int64)
    store.ensure_model("m1", 8, "float16", 64)
    order = store.write_order("m1", ids)
    assert np.array_equal(np.sort(order), np.arange(len(ids)))  # every user once: any order is correct
    if type(store).__name__ == "RedisVectorStore":  # cut into batches, each holds whole buckets
        assert (np.diff(bucket_of(ids[order], 64)) >= 0).all()
    else:
        assert np.array_equal(order, np.arange(len(ids)))
