"""Security of the store: forget, ACL users (admin / writer / reader, the default user off), the function
library (no Lua from the writer), bounded values, checked model versions, and secrets that never reach
errors, logs, reprs, manifests or `soe config`.

Deployments with ACL users are the ``redis_acl`` fixture (tests/fixtures/redis_servers.py): a single
node and a 3-master cluster whose default user is off; the plain ``redis_*`` fixtures are development
servers (default user open).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from soe.cli.app import app
from store import format as fmt
from store import functions
from store.acl import acl_file, apply_acl
from store.backends import open_store
from store.backends.redis import connect
from store.client import LookupClient
from store.forget import forget_users, read_user_ids
from store.functions import Limits
from store.keys import Keys
from store.models import switch_current

WRITER_PW, READER_PW = "w-Secret-4711", "r-Secret-0815"
JUNK = ["../../x", "a b", "x:y", "", "-x", "a" * 129, "m1\n", "x{1}"]


def fill(store, model, ids, as_of=1_000, neighbours=True):
    x = np.random.default_rng(len(model)).standard_normal((len(ids), 8)).astype(np.float32)
    store.ensure_model(model, 8, "float16", 32)
    store.upsert_vectors(model, ids, fmt.encode_vectors(x, as_of, model), as_of)
    if neighbours:
        lists = [np.array([i + 1, i + 2]) for i in ids]
        values = fmt.encode_neighbour_lists(lists, [np.array([0.9, 0.8])] * len(ids), as_of, model)
        store.upsert_neighbours(model, ids, values, as_of)
    store.record_manifest(model, "x/00000", {"rows": len(ids)})


def nodes_of(settings):
    """A redis-py client per node, as the settings' user (no retries: a refused login fails at once)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return [
        redis.Redis(
            host=h,
            port=p,
            username=settings.username,
            password=settings.secret(),
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        for h, p in settings.nodes()
    ]


def cli(env, *args):
    return CliRunner().invoke(app, list(args), env=env)


def cli_env(settings, **extra):
    env = {
        "SOE_REDIS__MODE": settings.mode,
        "SOE_REDIS__HOST": settings.host,
        "SOE_REDIS__PORT": str(settings.port),
        "SOE_REDIS__NAMESPACE": settings.namespace,
        "SOE_REDIS__STARTUP_NODES": json.dumps(settings.startup_nodes),
    }
    if settings.username:
        env |= {"SOE_REDIS__USERNAME": settings.username, "SOE_REDIS__PASSWORD": settings.secret()}
    return env | extra


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


# -- ACL users and the function library -------------------------------------------------------------
def test_acl_users_least_privilege_and_no_default_user(redis_acl):
    writer, reader = redis_acl.writer, redis_acl.reader
    for node in nodes_of(writer.with_credentials(None, None)):  # the default user: off, on every node
        with pytest.raises(redis.exceptions.AuthenticationError):
            node.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            node.execute_command("AUTH", "default", "")
    wstore = open_store(writer)  # the whole write path runs as the writer (FCALL of the admin's library)
    fill(wstore, "m1", np.arange(50))
    switch_current(wstore, "m1")
    client = LookupClient(reader)
    _, found = client.get([1, 2, 999])
    assert found.tolist() == [True, True, False] and client.neighbours([1])[0][0].tolist() == [2, 3]
    from store.graph.redis_io import read_positives, write_positives

    # recent positives: the writer upserts them with a TTL (FCALL + PEXPIRE), the reader reads them
    counts = write_positives(
        writer, np.array([1]), [np.array([7])], [np.array([1.0])], "2026-01-01T05:00Z", ttl_s=60
    )
    assert counts["written"] == 1 and [p.tolist() for p in read_positives(reader, [1, 2], 24)] == [[7], []]

    key = wstore.keys.vectors("m1", 0)
    lua = "#!lua name=x\nredis.register_function('f', function() return 1 end)"
    scripting = [
        ("EVAL", "return 1", "0"),
        ("EVALSHA", "a" * 40, "0"),
        ("EVAL_RO", "return 1", "0"),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT", "FLUSH"),
        ("FUNCTION", "LOAD", lua),
        ("FUNCTION", "LOAD", "REPLACE", functions.library_source(Limits(65535, 65535, 65535))),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "DELETE", "soe"),
        ("FUNCTION", "RESTORE", "x"),
    ]
    r = nodes_of(reader)[0]
    denied = [
        ("HSET", key, "1", "x"),
        ("HDEL", key, "1"),
        ("DEL", key),
        ("UNLINK", key),
        ("SET", "soe:x", "1"),
        ("FCALL", "soe_upsert", "1", key, "1", "7", "x" * 16),
        ("FCALL_RO", "soe_info", "0"),
        *scripting,
        ("FLUSHALL",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("KEYS", "*"),
        ("HGETALL", "soe:manifests:m1"),
        ("HGET", "other:key", "f"),
    ]
    for cmd in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*cmd)
    w = nodes_of(writer)[0]
    for cmd in [
        *scripting,
        ("FLUSHALL",),
        ("CONFIG", "GET", "maxmemory"),
        ("KEYS", "*"),
        ("SET", "other:key", "1"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "default", "on"),
    ]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            w.execute_command(*cmd)
    assert functions.info(w)["version"] == str(functions.LIBRARY_VERSION)  # FCALL_RO is the writer's
    assert wstore.r.hlen(key) > 0  # nothing was changed by the attempts
    wrong = (redis.exceptions.AuthenticationError, redis.exceptions.RedisClusterException)
    with pytest.raises(wrong, match="invalid username-password"):
        LookupClient(reader.with_credentials("soe-reader", "wrong")).get([1])


def test_a_writer_cannot_load_the_library_and_the_error_says_who_can(redis_acl, settings):
    writer = redis_acl.writer
    store = open_store(writer)
    fill(store, "m1", np.arange(20), neighbours=False)  # the library is checked once per store
    before = store.get("vectors", "m1", np.arange(20))
    for node in nodes_of(redis_acl.admin):  # e.g. a node restarted without its functions
        node.function_flush()
    values = fmt.encode_vectors(np.ones((20, 8)), 2_000, "m1")
    for s in (store, open_store(writer)):  # mid-life ("Function not found") and at the first check
        with pytest.raises(PermissionError, match="soe redis functions load"):
            s.upsert_vectors("m1", np.arange(20), values, 2_000)
    assert store.get("vectors", "m1", np.arange(20)) == before
    env = cli_env(redis_acl.admin, SOE_DATA__ROOT=str(settings.data.root))
    res = cli(env, "redis", "functions", "load")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["nodes"]) == len(redis_acl.server.ports)
    assert cli(env, "redis", "functions", "status").exit_code == 0
    assert store.upsert_vectors("m1", np.arange(20), values, 2_000).written == 20


def test_a_development_server_loads_the_library_itself(redis_any):
    store = open_store(redis_any)
    for node in nodes_of(redis_any):
        node.function_flush()
    fill(store, "m1", np.arange(20))  # first write: the default user loads it
    for node in nodes_of(redis_any):
        assert functions.info(node)["version"] == str(functions.LIBRARY_VERSION)
        node.function_flush()  # gone again while the store lives: "Function not found", loaded, rerun
    one = fmt.encode_vectors(np.ones((1, 8)), 5_000, "m1")
    assert store.upsert_vectors("m1", [1], one, 5_000).written == 1


def test_apply_acl_locks_the_default_user_and_refuses_to_lock_everyone_out(tmp_path):
    from store import local_server

    server = local_server.start_single(tmp_path / "r")
    try:
        open_default = server.redis_settings()
        with pytest.raises(ValueError, match="without another admin"):
            apply_acl(open_default, {"soe-writer": ("writer", WRITER_PW)})
        assert server.client().ping()  # nothing was changed
        users = {
            "ops": ("admin", "ops-pw"),
            "soe-writer": ("writer", WRITER_PW),
            "soe-reader": ("reader", READER_PW),
        }
        assert apply_acl(open_default, users) == [f"127.0.0.1:{server.ports[0]}"]
        with pytest.raises(redis.exceptions.AuthenticationError):
            server.client().ping()
        admin = open_default.with_credentials("ops", "ops-pw")
        assert functions.info(nodes_of(admin)[0])["version"] == str(functions.LIBRARY_VERSION)
        fill(open_store(admin.with_credentials("soe-writer", WRITER_PW)), "m1", np.arange(5))
        # the admin may instead be the default user, with a password
        apply_acl(admin, {"default": ("admin", "dflt-pw")})
        assert redis.Redis(port=server.ports[0], password="dflt-pw").ping()
    finally:
        local_server.stop(tmp_path / "r")
    with pytest.raises(ValueError, match="needs an admin"):
        acl_file({"soe-writer": ("writer", WRITER_PW)})


def test_cluster_fcall_keys_are_found_without_asking_the_server(redis_cluster):
    store = open_store(redis_cluster)
    for node in nodes_of(redis_cluster):
        node.config_resetstat()
    fill(store, "m1", np.arange(500))
    stats = [node.info("commandstats") for node in nodes_of(redis_cluster)]
    assert sum(s.get("cmdstat_fcall", {}).get("calls", 0) for s in stats) > 0
    assert not any("cmdstat_command|getkeys" in s for s in stats)  # no extra round trip per FCALL


# -- bounded values -----------------------------------------------------------------------------------
def raw_value(kind: int, n: int, size: int, version: int = 1) -> bytes:
    """A value whose header says (version, kind, n), ``size`` bytes long."""
    head = fmt.HEADER.pack(version, kind, n, 9_000, fmt.model_id("m1"))
    return head + b"\x00" * (size - len(head))


def test_oversized_values_are_refused_by_the_functions_and_before_sending(redis_acl):
    writer = redis_acl.writer
    store = open_store(writer)
    ids = np.arange(40)
    fill(store, "m1", ids)
    store.upsert("positives", None, ids, [fmt.encode_neighbours([7], [1.0], 1, "positives")] * 40, 1)
    snapshot = {
        kind: store.get(kind, None if kind == "positives" else "m1", ids)
        for kind in ("vectors", "neighbours", "positives")
    }
    keys = {
        "v": store.keys.vectors("m1", 3),
        "n": store.keys.neighbours("m1", 3),
        "p": store.keys.positives(3),
    }
    uid = "1"  # bucket 3 holds other users; the calls below write nothing anywhere
    w = connect(writer)
    over = [  # (key, value, why): each sent by the writer straight to the function
        ("v", fmt.encode_vector(np.ones(8), 9_000, "m1") + b"\x00" * 1000, "its header implies"),
        ("v", raw_value(1, 4000, 16 + 2 * 4000), "outside 1..2048"),
        ("v", raw_value(16, 2, 16 + 24), "not a vector"),
        ("v", raw_value(1, 8, 32, version=2), "format version 2"),
        ("n", raw_value(16, 1001, 16 + 12 * 1001), "over the limit of 1000"),
        ("n", raw_value(16, 3, 16 + 12 * 3 + 5000), "its header implies"),
        ("n", raw_value(1, 8, 32), "not a list"),
        ("p", raw_value(16, 1001, 16 + 12 * 1001), "over the limit of 1000"),
    ]
    for letter, value, why in over:
        with pytest.raises(redis.exceptions.ResponseError, match=f"soe upsert: value of user 1 .*{why}"):
            w.execute_command("FCALL", "soe_upsert", 1, keys[letter], "1", uid, value)
    # a good value beside a bad one: the whole call is refused
    good = fmt.encode_vector(np.ones(8), 9_000, "m1")
    with pytest.raises(redis.exceptions.ResponseError, match="soe upsert"):
        w.execute_command("FCALL", "soe_upsert", 1, keys["v"], "2", uid, good, "2", over[0][1])

    # the Python side refuses the same before sending anything
    def fcalls():
        return sum(
            n.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0) for n in nodes_of(redis_acl.admin)
        )

    sent = fcalls()
    big = fmt.encode_neighbours(np.arange(1001), np.ones(1001), 9_000, "m1")
    for kind, model, values, why in [
        ("vectors", "m1", [over[0][1]], "float16 vector of dim 8"),
        ("vectors", "m1", fmt.encode_vectors(np.ones((1, 16)), 9_000, "m1"), "float16 vector of dim 8"),
        ("vectors", "m1", fmt.encode_vectors(np.ones((1, 8)), 9_000, "m1", "float32"), "float16 vector"),
        ("neighbours", "m1", [big], "over redis.max_neighbours = 1000"),
        ("neighbours", "m1", [over[5][1]], "its header implies"),
        # the same lists as uint8 rows (store.format.encode_neighbour_table's output) are checked alike
        ("neighbours", "m1", np.frombuffer(big, np.uint8)[None], "over redis.max_neighbours = 1000"),
        ("neighbours", "m1", np.frombuffer(over[5][1], np.uint8)[None], "its header implies"),
        ("neighbours", "m1", np.frombuffer(over[0][1], np.uint8)[None], "not a list of format version"),
        ("positives", None, [big], "over redis.max_positives = 1000"),
    ]:
        with pytest.raises(ValueError, match=why):
            store.upsert(kind, model, [1], values, 9_000)
    small = open_store(writer.model_copy(update={"max_neighbours": 5}))
    six = fmt.encode_neighbours(np.arange(6), np.ones(6), 9_000, "m1")
    with pytest.raises(ValueError, match=r"over redis\.max_neighbours = 5"):
        small.upsert("neighbours", "m1", [1], [six], 9_000)
    assert fcalls() == sent  # nothing was sent
    # the limits are the ones the admin loaded: a writer cannot raise them
    functions.load(connect(redis_acl.admin), Limits(max_dim=2048, max_neighbours=5, max_positives=5))
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="over the limit of 5"):
            w.execute_command(
                "FCALL",
                "soe_upsert",
                1,
                keys["n"],
                "1",
                uid,
                fmt.encode_neighbours(np.arange(6), np.ones(6), 9_000, "m1"),
            )
    finally:
        functions.load(connect(redis_acl.admin))
    for kind, values in snapshot.items():
        assert store.get(kind, None if kind == "positives" else "m1", ids) == values  # nothing changed


# -- model versions read back from the store ----------------------------------------------------------
def corrupt(store_settings, field: str, value: str) -> None:
    """What a writer (or anyone with HSET/SADD on the keys) could do: junk in the pointer / model set."""
    if store_settings.mode == "memory":
        store = open_store(store_settings)
        if field == "models":
            store._models.add(value)
        else:
            store._pointer[field] = value
        return
    r = connect(store_settings)
    keys = Keys(store_settings.namespace)
    if field == "models":
        r.sadd(keys.models(), value)
    else:
        r.hset(keys.pointer(), field, value)


def test_keys_and_store_calls_refuse_bad_model_versions(store_any):
    import core.names
    import store.keys

    assert store.keys.check_name is core.names.check_name  # one rule
    s = open_store(store_any)
    for bad in JUNK:
        for build in (Keys().vectors, Keys().neighbours):
            with pytest.raises(ValueError, match="model version"):
                build(bad, 1)
        for call, args in (
            (s.get, ("vectors", bad, [1])),
            (s.switch_pointer, (bad,)),
            (lambda m: LookupClient(store_any, model=m), (bad,)),
        ):
            with pytest.raises(ValueError, match="model version"):
                call(*args)
    assert s.pointer() == {}


def test_a_junk_pointer_is_a_clear_error_never_a_key_or_a_path(store_any, settings):
    from fastapi.testclient import TestClient

    from store.service.app import create_app

    s = open_store(store_any)
    fill(s, "m1", np.arange(10))
    switch_current(s, "m1")
    env = cli_env(store_any, SOE_DATA__ROOT=str(settings.data.root))
    for field in ("current", "previous"):
        for bad in ("../../x", "a b", "x:y"):
            corrupt(store_any, field, bad)
            with pytest.raises(ValueError, match=f"pointer .*{field}.* invalid model version"):
                s.pointer()
            for args in (["models", "current"], ["models", "rollback"]):
                res = cli(env, *args)
                lines = res.output.strip().splitlines()
                assert res.exit_code == 2 and len(lines) == 1, res.output
                assert "invalid model version" in lines[0], res.output
            if field == "current":
                with pytest.raises(ValueError, match="pointer"):
                    s.current()
                with pytest.raises(ValueError, match="pointer"):
                    LookupClient(store_any, pointer_ttl_s=0).get([1])
                res = cli(env, "lookup", "1")
                assert res.exit_code == 2 and "invalid model version" in res.output
                assert len(res.output.strip().splitlines()) == 1
                service = TestClient(create_app(settings.serve, settings.graph, store_any, settings.layout()))
                r = service.get("/v1/users/1/vector")
                assert r.status_code == 503 and "invalid model version" in r.json()["detail"]
            # a writer repairs it with a switch; an invalid current never becomes previous
            p = switch_current(s, "m1")
            assert p["current"] == "m1" and "previous" not in p and s.pointer() == p
    corrupt(store_any, "models", "../y")
    with pytest.raises(ValueError, match=r"set of models .*invalid model version"):
        s.models()
    res = cli(env, "models", "current")
    assert res.exit_code == 2 and "set of models" in res.output


# -- secrets ------------------------------------------------------------------------------------------
def test_secrets_never_reach_reprs_logs_manifests_or_acl_files(redis_acl, caplog):
    writer = redis_acl.writer
    with caplog.at_level(logging.DEBUG):
        store = open_store(writer)
        fill(store, "m1", np.arange(20))
        switch_current(store, "m1")
        forget_users(writer, [1])
        logging.getLogger("soe").info("settings: %s / %r / store %r", writer, writer, store)
    text = (
        caplog.text
        + repr(writer)
        + str(writer.model_dump())
        + writer.model_dump_json()
        + repr(store)
        + json.dumps(store.manifests("m1"))
        + repr(redis_acl.server)
    )
    assert WRITER_PW not in text and redis_acl.admin.secret() not in text and "**********" in text
    rendered = acl_file(
        {"soe-writer": ("writer", WRITER_PW), "soe-reader": ("reader", READER_PW)},
        default_password="admin-pw",
    )
    assert WRITER_PW not in rendered and READER_PW not in rendered and "admin-pw" not in rendered
    assert rendered.count("#") == 3  # three sha256 password hashes
    assert redis_acl.admin.secret() not in (redis_acl.server.work_dir / "servers.json").read_text()


def test_a_numeric_password_is_a_secret_string_end_to_end(redis_acl_single_server, tmp_path, caplog):
    """SOE_REDIS__PASSWORD=20240229 (YAML reads a number): accepted as text, never shown anywhere."""
    from store.local_server import free_ports

    pw = "20240229"
    admin = redis_acl_single_server.client()
    admin.flushall()
    admin.execute_command("ACL", "SETUSER", "num-reader", "reset", "on", f">{pw}", "~*", "+@all")
    base = {
        "SOE_DATA__ROOT": str(tmp_path / "data"),
        "SOE_REDIS__PORT": str(redis_acl_single_server.ports[0]),
        "SOE_REDIS__USERNAME": "num-reader",
    }
    yaml_file = tmp_path / "soe.yaml"
    yaml_file.write_text(f"redis:\n  password: {pw}\n")  # a number in YAML too
    with caplog.at_level(logging.DEBUG):
        for args, env in [
            (["config"], {**base, "SOE_REDIS__PASSWORD": pw}),
            (["-c", str(yaml_file), "config"], base),
        ]:
            res = cli(env, *args)
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout)["redis"]["password"] != pw and pw not in res.output
        # the right numeric password authenticates (no model yet: a clear error, not an auth failure)
        res = cli({**base, "SOE_REDIS__PASSWORD": pw}, "lookup", "1")
        assert res.exit_code == 2 and "no current model" in res.output and pw not in res.output
        # wrong credentials, an unreachable server, a config error: one line each, no password
        wrong = cli({**base, "SOE_REDIS__PASSWORD": "20240230"}, "lookup", "1")
        assert wrong.exit_code == 2 and "refused the credentials" in wrong.output
        assert "20240230" not in wrong.output
        nowhere = str(free_ports(1)[0])
        down = cli({**base, "SOE_REDIS__PASSWORD": pw, "SOE_REDIS__PORT": nowhere}, "lookup", "1")
        assert down.exit_code == 2 and "cannot reach Redis" in down.output and pw not in down.output
        bad = cli({**base, "SOE_REDIS__PASSWORD": pw, "SOE_REDIS__BUCKETS": "x"}, "config")
        assert bad.exit_code == 2 and "redis.buckets" in bad.output and pw not in bad.output
        verbatim = cli({**base, "SOE_REDIS__PASSWORD": "yes"}, "config")  # the environment is taken verbatim
        assert verbatim.exit_code == 0 and json.loads(verbatim.stdout)["redis"]["password"] != "yes"  # masked
        yaml_bool = tmp_path / "bool.yaml"
        yaml_bool.write_text("redis:\n  password: yes\n")  # YAML 1.1 reads a boolean: refused, never guessed
        boolean = cli(base, "-c", str(yaml_bool), "config")
        assert boolean.exit_code == 2 and "redis.password" in boolean.output and "quote it" in boolean.output
    admin.execute_command("ACL", "DELUSER", "num-reader")
    assert pw not in caplog.text


def test_tls_settings_reach_the_connection(redis_single):
    s = redis_single.model_copy(update={"tls": True, "tls_ca_cert": "/etc/ssl/ca.pem"})
    pool = connect(s).connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ssl/ca.pem"


def test_the_deploy_acl_example_loads_and_locks_the_default_user(tmp_path):
    """deploy/redis/users.acl.example in a real redis-server: no default user, the admin loads the library,
    the writer publishes through it. Its hashes are those of placeholder passwords
    (deploy/redis/README.md)."""
    from pathlib import Path

    from store import local_server

    example = Path(__file__).resolve().parents[1] / "deploy" / "redis" / "users.acl.example"
    acl = tmp_path / "users.acl"
    acl.write_text(example.read_text())
    server = local_server.start_single(tmp_path / "r", extra_conf={"aclfile": str(acl)})
    try:
        base = server.redis_settings()
        with pytest.raises(redis.exceptions.AuthenticationError):
            nodes_of(base)[0].ping()
        admin = base.with_credentials("soe-admin", "example-admin-password")
        functions.load(connect(admin))
        writer = base.with_credentials("soe-writer", "example-writer-password")
        fill(open_store(writer), "m1", np.arange(10))
        switch_current(open_store(writer), "m1")
        reader = base.with_credentials("soe-reader", "example-reader-password")
        assert LookupClient(reader).get([3])[1].all()
    finally:
        local_server.stop(tmp_path / "r")
