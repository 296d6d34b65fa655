"""Forget, the writer/reader ACL users, and secrets that never reach logs or reprs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import redis

from store import format as fmt
from store.acl import acl_file, apply_acl
from store.backends import open_store
from store.backends.redis import connect
from store.client import LookupClient
from store.forget import forget_users, read_user_ids
from store.models import switch_current

WRITER_PW, READER_PW = "w-Secret-4711", "r-Secret-0815"


def fill(store, model, ids, as_of=1_000, neighbours=True):
    x = np.random.default_rng(len(model)).standard_normal((len(ids), 8)).astype(np.float32)
    store.ensure_model(model, 8, "float16", 32)
    store.upsert_vectors(model, ids, fmt.encode_vectors(x, as_of, model), as_of)
    if neighbours:
        lists = [np.array([i + 1, i + 2]) for i in ids]
        values = fmt.encode_neighbour_lists(lists, [np.array([0.9, 0.8])] * len(ids), as_of, model)
        store.upsert_neighbours(model, ids, values, as_of)
    store.record_manifest(model, "x/00000", {"rows": len(ids)})


def test_forget_removes_vectors_in_every_namespace_and_neighbour_lists(store_any, tmp_path, caplog):
    store = open_store(store_any)
    ids = np.arange(100, 400)
    fill(store, "m1", ids)
    fill(store, "m2", ids[:200], neighbours=False)
    store.upsert("positives", None, [150], [fmt.encode_neighbours([7], [1.0], 1, "positives")], 1)
    users = tmp_path / "users.txt"
    users.write_text("# users who asked to be forgotten\n105\n150\n\n399  # last\n123456789\n")
    forgotten = read_user_ids(users)
    assert forgotten.tolist() == [105, 150, 399, 123456789]
    with caplog.at_level(logging.INFO, logger="soe.store.forget"):
        out = forget_users(store_any, forgotten)
    assert out["removed"] == {"v:m1": 3, "n:m1": 3, "v:m2": 2, "n:m2": 0, "p:positives": 1}
    assert out["total"] == 9
    assert "removed 3 vectors of model m1" in caplog.text and "removed 2 vectors of model m2" in caplog.text
    assert "removed 1 recent-positive lists of the graph" in caplog.text
    assert store.get("positives", None, [150]) == [None]
    for model in ("m1", "m2"):
        got = store.get_vectors(model, [105, 150, 399, 106])
        assert got.found.tolist() == [False, False, False, True]
    switch_current(store, "m1")
    lists = LookupClient(store_any).neighbours([105, 106])
    assert lists[0] is None and lists[1][0].tolist() == [107, 108]
    assert forget_users(store_any, forgotten)["total"] == 0  # idempotent
    with pytest.raises(ValueError, match="not an integer"):
        (tmp_path / "bad.txt").write_text("12\nabc\n")
        read_user_ids(tmp_path / "bad.txt")


def test_acl_reader_reads_but_cannot_write_delete_or_script(redis_any):
    apply_acl(redis_any, {"soe-writer": ("writer", WRITER_PW), "soe-reader": ("reader", READER_PW)})
    writer = redis_any.with_credentials("soe-writer", WRITER_PW)
    reader = redis_any.with_credentials("soe-reader", READER_PW)
    wstore = open_store(writer)  # the whole write path runs as the writer
    fill(wstore, "m1", np.arange(50))
    switch_current(wstore, "m1")
    client = LookupClient(reader)
    _, found = client.get([1, 2, 999])
    assert found.tolist() == [True, True, False] and client.neighbours([1])[0][0].tolist() == [2, 3]
    from store.graph.redis_io import read_positives, write_positives

    # recent positives: the writer upserts them with a TTL (EVALSHA + PEXPIRE), the reader reads them
    counts = write_positives(writer, np.array([1]), [np.array([7])], [np.array([1.0])], "2026-01-01T05:00Z",
                             ttl_s=60)
    assert counts["written"] == 1 and [p.tolist() for p in read_positives(reader, [1, 2], 24)] == [[7], []]

    r = connect(reader)
    key = wstore.keys.vectors("m1", 0)
    denied = [("HSET", key, "1", "x"), ("HDEL", key, "1"), ("DEL", key), ("UNLINK", key),
              ("SET", "soe:x", "1"), ("EVAL", "return 1", "0"), ("EVALSHA", "a" * 40, "0"),
              ("SCRIPT", "LOAD", "return 1"), ("FCALL", "f", "0"), ("FLUSHALL",),
              ("CONFIG", "SET", "maxmemory", "1"), ("KEYS", "*"), ("HGETALL", "soe:manifests:m1"),
              ("HGET", "other:key", "f")]
    for cmd in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*cmd)
    assert wstore.r.hlen(key) > 0  # nothing was changed by the attempts

    w = connect(writer)
    for cmd in [("FLUSHALL",), ("CONFIG", "GET", "maxmemory"), ("KEYS", "*"), ("SET", "other:key", "1"),
                ("ACL", "LIST")]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            w.execute_command(*cmd)
    wrong = (redis.exceptions.AuthenticationError, redis.exceptions.RedisClusterException)
    with pytest.raises(wrong, match="invalid username-password"):
        LookupClient(reader.with_credentials("soe-reader", "wrong")).get([1])


def test_secrets_never_reach_reprs_logs_or_acl_files(redis_single, caplog):
    apply_acl(redis_single, {"soe-writer": ("writer", WRITER_PW)})
    writer = redis_single.with_credentials("soe-writer", WRITER_PW)
    with caplog.at_level(logging.DEBUG):
        store = open_store(writer)
        fill(store, "m1", np.arange(20))
        switch_current(store, "m1")
        forget_users(writer, [1])
        logging.getLogger("soe").info("settings: %s / %r / store %r", writer, writer, store)
    text = caplog.text + repr(writer) + str(writer.model_dump()) + writer.model_dump_json()
    assert WRITER_PW not in text and "**********" in text
    rendered = acl_file({"soe-writer": ("writer", WRITER_PW), "soe-reader": ("reader", READER_PW)},
                        default_password="admin-pw")
    assert WRITER_PW not in rendered and READER_PW not in rendered and "admin-pw" not in rendered
    assert rendered.count("#") == 3  # three sha256 password hashes


def test_tls_settings_reach_the_connection(redis_single):
    s = redis_single.model_copy(update={"tls": True, "tls_ca_cert": "/etc/ssl/ca.pem"})
    pool = connect(s).connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ssl/ca.pem"


def test_acl_file_loads_in_redis_server_and_writer_cannot_load_functions(tmp_path):
    from store import local_server

    acl = tmp_path / "users.acl"
    acl.write_text(acl_file({"soe-writer": ("writer", WRITER_PW), "soe-reader": ("reader", READER_PW)}))
    server = local_server.start_single(tmp_path / "r", extra_conf={"aclfile": str(acl)})
    try:
        writer = server.redis_settings().with_credentials("soe-writer", WRITER_PW)
        fill(open_store(writer), "m1", np.arange(10))
        switch_current(open_store(writer), "m1")
        reader = server.redis_settings().with_credentials("soe-reader", READER_PW)
        assert LookupClient(reader).get([3])[1].all()
        w = connect(writer)
        lua = "#!lua name=x\nredis.register_function('f', function() return 1 end)"
        for cmd in [("FUNCTION", "LOAD", lua),
                    ("FUNCTION", "FLUSH"), ("EVAL", "return 1", "0"), ("FCALL", "f", "0")]:
            with pytest.raises(redis.exceptions.NoPermissionError):
                w.execute_command(*cmd)
    finally:
        local_server.stop(tmp_path / "r")
