"""The Redis backend and publish, against a real single node AND a real 3-master cluster."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from core.atomic import publish_dir
from core.contracts import embedding_contract
from core.layout import epoch_ms
from store import format as fmt
from store.backends import open_store
from store.backends.redis import connect
from store.keys import bucket_of
from store.publish import publish_embeddings

T0 = datetime(2026, 1, 1, 5, tzinfo=UTC)


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_shard(layout, model, as_of, shard, user_ids, vectors):
    """Write one embedding shard the way the inference engine publishes it (contract + _SUCCESS)."""
    n, d = vectors.shape
    contract = embedding_contract(d)
    flat = pa.array(np.asarray(vectors, np.float16).reshape(-1), type=pa.float16())
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(user_ids, np.int64)),
            pa.FixedSizeListArray.from_arrays(flat, d),
            pa.array([model] * n),
            pa.array([as_of] * n, type=pa.timestamp("ms", tz="UTC")),
            pa.array(np.full(n, 10, np.int32)),
        ],
        schema=contract.schema,
    )
    with publish_dir(layout.embeddings(model, as_of) / f"shard={shard:05d}", {"rows": n}) as tmp:
        pq.write_table(table, tmp / "part-00000.parquet")


def with_redis(settings, redis_settings, **overrides):
    return settings.model_copy(update={"redis": redis_settings.model_copy(update=overrides)})


def test_publish_then_redis_cli_value_decodes_per_spec(settings, redis_any):
    s = with_redis(settings, redis_any, buckets=64)
    ids, x = np.arange(1000, 1300), unit(300, 16)
    write_shard(s.layout(), "m1", T0, 0, ids[:150], x[:150])
    write_shard(s.layout(), "m1", T0, 1, ids[150:], x[150:])
    out = publish_embeddings(s.redis, s.layout(), "m1", T0)
    assert (out["rows"], out["written"], out["shards"]) == (300, 300, 2)
    # plain redis-cli, not our client: the key is built by hand from docs/format.md
    user = 1234
    b = int(bucket_of(user, 64)[0])
    key = f"soe:v:m1:{{{b % 1024}}}{b}"
    cluster_flag = ["-c"] if redis_any.mode == "cluster" else []
    cmd = ["redis-cli", "-p", str(redis_any.port), *cluster_flag, "HGET", key, str(user)]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    assert raw.endswith(b"\n")
    value = raw[:-1]  # redis-cli prints the raw bytes and one newline when stdout is not a terminal
    import struct

    version, kind, d, as_of_ms, model_id = struct.unpack_from("<BBHqI", value)
    assert (version, kind, d, len(value)) == (1, 1, 16, 16 + 2 * 16)
    assert as_of_ms == int(T0.timestamp() * 1000)
    import hashlib

    assert model_id == int.from_bytes(hashlib.sha256(b"m1").digest()[:4], "little")
    vec = np.frombuffer(value, "<f2", d, 16).astype(np.float32)
    np.testing.assert_allclose(vec, x[user - 1000], atol=1e-3)


def test_conditional_upsert_rejects_older_as_of_server_side(redis_any):
    store = open_store(redis_any.model_copy(update={"buckets": 32}))
    store.ensure_model("m1", 8, "float16", 32)
    ids = np.arange(200)
    new, old = unit(200, 8, 1), unit(200, 8, 2)
    t_new, t_old = epoch_ms(T0), epoch_ms(T0 - timedelta(hours=3))
    assert store.upsert_vectors("m1", ids, fmt.encode_vectors(new, t_new, "m1"), t_new).written == 200
    late = store.upsert_vectors("m1", ids, fmt.encode_vectors(old, t_old, "m1"), t_old)  # a late backfill
    assert (late.written, late.stale) == (0, 200)
    got = store.get_vectors("m1", ids)
    np.testing.assert_allclose(got.vectors, new, atol=1e-3)
    assert (got.as_of == t_new).all()
    # a newer as_of wins; mixed batches are decided per user; a duplicate in one batch keeps the newest
    t_newer = epoch_ms(T0 + timedelta(hours=1))
    mixed_as_of = np.where(ids % 2 == 0, t_newer, t_old)
    stamps = np.r_[mixed_as_of, t_old]
    rows = fmt.encode_vectors(np.r_[old, old[:1]], stamps, "m1")
    c = store.upsert_vectors("m1", np.r_[ids, 0], rows, stamps)
    assert (c.written, c.stale, c.duplicates) == (100, 100, 1)
    got = store.get_vectors("m1", ids)
    np.testing.assert_allclose(got.vectors[ids % 2 == 0], old[ids % 2 == 0], atol=1e-3)
    np.testing.assert_allclose(got.vectors[ids % 2 == 1], new[ids % 2 == 1], atol=1e-3)


def test_republish_is_idempotent_and_manifest_recorded(settings, redis_any):
    s = with_redis(settings, redis_any, buckets=32)
    ids, x = np.arange(500), unit(500, 8)
    write_shard(s.layout(), "m1", T0, 0, ids, x)
    first = publish_embeddings(s.redis, s.layout(), "m1", T0, shard=0)
    store = open_store(s.redis)
    keys_before = sorted(store.r.keys("soe:*")) if redis_any.mode == "single" else None
    second = publish_embeddings(s.redis, s.layout(), "m1", T0, shard=0)
    assert (first["written"], second["written"], second["unchanged"], second["stale"]) == (500, 0, 500, 0)
    if keys_before is not None:
        assert sorted(store.r.keys("soe:*")) == keys_before
    manifest = store.manifests("m1")["20260101T0500Z/00000"]
    assert manifest["rows"] == 500 and manifest["model"] == "m1" and manifest["unchanged"] == 500
    assert store.model_meta("m1").extra["last_as_of"].startswith("2026-01-01T05:00")
    np.testing.assert_allclose(store.get_vectors("m1", ids).vectors, x, atol=1e-3)


def test_cross_slot_batched_get_reports_missing(redis_any):
    store = open_store(redis_any)
    store.ensure_model("m1", 8, "float32", 4096)
    ids = np.arange(0, 3000, 3)
    x = unit(len(ids), 8)
    store.upsert_vectors("m1", ids, fmt.encode_vectors(x, 1, "m1", "float32"), 1)
    query = np.r_[ids[::-7], [1, 2, 10**12]]  # present ones in many buckets, then absent ones
    if redis_any.mode == "cluster":  # the batch really spans every node of the cluster
        r = connect(redis_any)
        nodes = {r.get_node_from_key(store.keys.vectors("m1", b)).name for b in bucket_of(query, 4096)}
        assert len(nodes) == 3
    got = store.get_vectors("m1", query)
    assert got.found.tolist() == [True] * len(ids[::-7]) + [False] * 3
    np.testing.assert_array_equal(got.vectors[: len(ids[::-7])], x[::-7])
    assert not got.vectors[-3:].any()
    single = store.get_vectors("m1", [ids[5]])  # one id: one HGET
    np.testing.assert_array_equal(single.vectors[0], x[5])
    empty = store.get_vectors("m1", [])
    assert empty.vectors.shape == (0, 8) and empty.found.shape == (0,)


def test_namespace_shape_is_fixed_and_bad_input_is_clear(settings, redis_single):
    store = open_store(redis_single)
    store.ensure_model("m1", 8, "float16", 16)
    with pytest.raises(ValueError, match="refusing"):
        store.ensure_model("m1", 16, "float16", 16)
    with pytest.raises(LookupError, match="does not exist"):
        store.upsert_vectors("nope", [1], fmt.encode_vectors(np.ones((1, 8)), 1, "nope"), 1)
    s = with_redis(settings, redis_single)
    with pytest.raises(FileNotFoundError, match="run inference"):
        publish_embeddings(s.redis, s.layout(), "m1", T0)
    write_shard(s.layout(), "other", T0, 0, [1], np.ones((1, 8)))  # rows of another model in m1's dir
    dst = s.layout().embeddings("m1", T0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    s.layout().embeddings("other", T0).rename(dst)
    with pytest.raises(ValueError, match="model_version"):
        publish_embeddings(s.redis, s.layout(), "m1", T0)


def test_buckets_stay_listpack_and_memory_beats_plain_keys(redis_single):
    """The memory layout: 40k users d=64 float16 cost <= 1.4x the payload (plain keys ~1.7x)."""
    r = connect(redis_single)
    n, d = 40_000, 64
    store = open_store(redis_single)
    store.ensure_model("m1", d, "float16", 512)  # ~78 users per bucket
    rows = fmt.encode_vectors(unit(n, d), 1, "m1")
    base = r.info("memory")["used_memory"]
    store.upsert_vectors("m1", np.arange(n), rows, 1)
    bucketed = r.info("memory")["used_memory"] - base
    assert {r.object("encoding", store.keys.vectors("m1", b)) for b in range(0, 512, 37)} == {b"listpack"}
    r.flushall()
    base = r.info("memory")["used_memory"]
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(store.keys.plain("m1", i), rows[i].tobytes())
    pipe.execute()
    plain = r.info("memory")["used_memory"] - base
    payload = n * d * 2
    assert bucketed / payload <= 1.4 < plain / payload


@pytest.mark.parametrize("by_tag", [False, True])
def test_upsert_call_plan_covers_every_user_once_within_limits(by_tag):
    from store.backends.redis import upsert_calls
    from store.keys import SLOT_TAGS

    ids = np.r_[np.arange(20_000), np.arange(10**9, 10**9 + 50)]
    seen = []
    for buckets, counts, pos in upsert_calls(ids, 3000, by_tag=by_tag, max_users=500):
        assert sum(counts) == len(pos) <= 500 and len(buckets) == len(counts)
        b = bucket_of(ids[pos], 3000)
        # positions follow the keys
        assert b.tolist() == [k for k, c in zip(buckets, counts) for _ in range(c)]
        if by_tag:
            assert len({k % SLOT_TAGS for k in buckets}) == 1  # one slot per call on a cluster
        seen.extend(pos.tolist())
    assert sorted(seen) == list(range(len(ids)))


def test_buckets_larger_than_one_call_are_split_and_still_conditional(redis_any):
    store = open_store(redis_any)
    store.ensure_model("m1", 4, "float16", 2)  # 2 buckets of ~1500 users: more than one call each
    ids = np.arange(3000)
    x = unit(3000, 4)
    assert store.upsert_vectors("m1", ids, fmt.encode_vectors(x, 10, "m1"), 10).written == 3000
    c = store.upsert_vectors(
        "m1", ids, fmt.encode_vectors(x[::-1], np.where(ids < 1000, 11, 9), "m1"), np.where(ids < 1000, 11, 9)
    )
    assert (c.written, c.stale) == (1000, 2000)
    got = store.get_vectors("m1", ids)
    np.testing.assert_allclose(got.vectors[:1000], x[::-1][:1000], atol=1e-3)
    np.testing.assert_allclose(got.vectors[1000:], x[1000:], atol=1e-3)


def test_fast_read_path_equals_redis_py_pipeline(redis_any):
    from store.wire import pack_hmgets

    assert pack_hmgets([("k", ["1", "22"])]) == b"*4\r\n$5\r\nHMGET\r\n$1\r\nk\r\n$1\r\n1\r\n$2\r\n22\r\n"
    store = open_store(redis_any)
    store.ensure_model("m1", 8, "float16", 256)
    ids = np.arange(0, 5000, 7)
    store.upsert_vectors("m1", ids, fmt.encode_vectors(unit(len(ids), 8), 1, "m1"), 1)
    query = np.r_[ids[::3], [3, 10**10]]
    fast = store.get("vectors", "m1", query)
    reference = open_store(redis_any.model_copy(update={"read_path": "pipeline"}))
    assert reference.read_path == "pipeline" and store.read_path == "packed"
    assert reference.get("vectors", "m1", query) == fast and fast[-1] is None and fast[0] is not None
    if redis_any.mode == "single":
        from store.wire import hmget_many

        store.r.set("soe:not-a-hash", "x")  # an error reply in the middle of a batch ...
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            hmget_many(
                store.r,
                [(store.keys.vectors("m1", 0), ["1"]), ("soe:not-a-hash", ["1"]), ("soe:none", ["1"])],
            )
    assert store.get("vectors", "m1", query) == fast  # ... leaves the pooled connection usable


def test_prefetch_keeps_order_and_raises_producer_errors():
    from store.publish import prefetch

    assert list(prefetch(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise ValueError("bad file")

    got = []
    with pytest.raises(ValueError, match="bad file"):
        got.extend(prefetch(broken()))
    assert got == [1]


def test_server_side_upsert_refuses_malformed_calls_before_writing(redis_any):
    store = open_store(redis_any)
    store.ensure_functions()  # the development server's default user loads the library itself
    key = store.keys.vectors("m1", 5)
    good = fmt.encode_vector(np.ones(4), 10, "m1")
    bad_calls = [
        ("1", "7", good, "8"),  # counts say 1 user, 2 pairs given
        ("2", "7", good, "8", b"short"),  # a value shorter than the header
        ("1 1", "7", good),  # two counts for one key
        ("1", "x7", good),  # a field that is not a user id
    ]
    for args in bad_calls:
        with pytest.raises(redis.exceptions.ResponseError, match="soe upsert"):
            store.r.execute_command("FCALL", "soe_upsert", 1, key, *args)
    with pytest.raises(redis.exceptions.ResponseError, match="not a record bucket"):
        store.r.execute_command("FCALL", "soe_upsert", 1, "soe:pointer", "1", "7", good)
    assert store.r.exists(key) == 0 and store.r.exists("soe:pointer") == 0  # nothing was written
    assert store.r.execute_command("FCALL", "soe_upsert", 1, key, "1", "7", good) == [1, 0, 0]
    assert store.r.hget(key, "7") == good


def test_fast_read_recovers_from_a_dropped_connection(redis_single):
    store = open_store(redis_single)
    store.ensure_model("m1", 8, "float16", 64)
    ids = np.arange(300)
    store.upsert_vectors("m1", ids, fmt.encode_vectors(unit(300, 8), 1, "m1"), 1)
    before = store.get_vectors("m1", ids)
    admin = redis.Redis(host=redis_single.host, port=redis_single.port)
    admin.client_kill_filter(_type="normal", skipme=True)  # drop every client connection of the store
    after = store.get_vectors("m1", ids)
    assert after.found.all()
    np.testing.assert_array_equal(after.vectors, before.vectors)


def test_held_connections_are_per_thread_and_reads_agree_across_threads(redis_single):
    import threading

    from store.wire import HELD

    store = open_store(redis_single)
    store.ensure_model("m1", 8, "float16", 64)
    ids = np.arange(500)
    x = unit(500, 8)
    store.upsert_vectors("m1", ids, fmt.encode_vectors(x, 1, "m1"), 1)
    seen, errors = {}, []

    def reader(k):
        try:
            for i in range(50):
                got = store.get_vectors("m1", ids[(i * 7 + k) % 450 :][:50])
                assert got.found.all()
            single = store.get_vectors("m1", [k])
            np.testing.assert_allclose(single.vectors[0], x[k], atol=1e-3)
            seen[k] = id(HELD.get(store.r))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(seen.values())) == 4  # one connection per thread, no interleaved replies


def test_short_lived_threads_hand_their_connections_back(redis_single):
    import threading

    store = open_store(redis_single.model_copy(update={"max_connections": 4}))
    store.ensure_model("m1", 8, "float16", 16)
    store.upsert_vectors("m1", np.arange(10), fmt.encode_vectors(unit(10, 8), 1, "m1"), 1)
    found = []
    for _ in range(12):  # more threads over time than the pool has connections
        t = threading.Thread(target=lambda: found.append(bool(store.get_vectors("m1", [1, 2]).found.all())))
        t.start()
        t.join()
    assert found == [True] * 12
