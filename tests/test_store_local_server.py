"""The local redis-server fixtures and `store.local_server`: real processes on loopback."""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from store import local_server


def test_single_fixture_answers_and_uses_listpack_settings(redis_single):
    r = redis.Redis(host=redis_single.host, port=redis_single.port)
    assert r.ping()
    assert r.dbsize() == 0  # flushed before the test
    for name, value in local_server.MEMORY_CONF.items():
        assert r.config_get(name)[name] == value
    r.hset("h", mapping={str(i): b"x" * 200 for i in range(100)})
    assert r.object("encoding", "h") == b"listpack"


def test_cluster_fixture_has_three_masters_covering_all_slots(redis_cluster):
    rc = RedisCluster(host=redis_cluster.host, port=redis_cluster.port)
    info = rc.cluster_info(target_nodes=RedisCluster.RANDOM)
    assert info["cluster_state"] == "ok"
    assert len(rc.get_primaries()) == 3
    for i in range(50):  # keys spread over every slot range
        rc.set(f"k{i}", i)
    assert sorted(int(rc.get(f"k{i}")) for i in range(50)) == list(range(50))
    assert len({rc.keyslot(f"k{i}") for i in range(50)}) > 3


def test_start_status_stop_and_refuse_double_start(tmp_path):
    server = local_server.start_single(tmp_path / "r")
    try:
        st = local_server.status(tmp_path / "r")
        assert st["running"] and st["mode"] == "single" and st["nodes"][0]["port"] == server.ports[0]
        try:
            local_server.start_single(tmp_path / "r")
            raise AssertionError("a second start in the same work dir must be refused")
        except ValueError as exc:
            assert "already runs" in str(exc)
    finally:
        out = local_server.stop(tmp_path / "r")
    assert out["stopped"] == server.ports
    assert not local_server.status(tmp_path / "r")["running"]
    assert not local_server._alive(server.pids[0])


def test_given_port_in_use_is_a_clear_error(tmp_path, redis_single):
    try:
        local_server.start_single(tmp_path / "r", port=redis_single.port)
        raise AssertionError("expected a clear error for a busy port")
    except ValueError as exc:
        assert str(redis_single.port) in str(exc)


def test_deploy_memory_conf_matches_the_local_servers():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "deploy" / "redis" / "soe-memory.conf"
    lines = [ln.split() for ln in conf.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert {k: v for k, v in lines} == local_server.MEMORY_CONF


def test_persistent_single_node_keeps_data_across_restart(tmp_path):
    server = local_server.start_single(tmp_path / "r", persist=True)
    port = server.ports[0]
    try:
        redis.Redis(port=port).set("soe:pointer-test", "m1")
    finally:
        local_server.stop(tmp_path / "r")  # SIGTERM: redis-server saves its RDB before exiting
    again = local_server.start_single(tmp_path / "r", port=port, persist=True)
    try:
        assert redis.Redis(port=again.ports[0]).get("soe:pointer-test") == b"m1"
    finally:
        local_server.stop(tmp_path / "r")


def test_a_server_with_acl_users_answers_nobody_without_credentials(redis_acl_single_server):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from store import functions

    server = redis_acl_single_server
    anonymous = redis.Redis(port=server.ports[0], retry=Retry(NoBackoff(), 0))
    try:
        anonymous.ping()
        raise AssertionError("the default user must be off")
    except redis.exceptions.AuthenticationError:
        pass
    assert local_server.ping(server.host, server.ports[0])  # up (it answers NOAUTH)
    admin = server.client()
    assert admin.acl_whoami() == "soe-admin" and functions.info(admin)["library"] == "soe"
    acl = (server.work_dir / "users.acl").read_text()
    mode = (server.work_dir / "users.acl").stat().st_mode & 0o777
    assert acl.startswith("user default off ") and mode == 0o600
    saved = (server.work_dir / "servers.json").read_text() + repr(server) + acl
    assert server.admin[1] not in saved  # the admin's password lives in memory only
    assert local_server.status(server.work_dir)["running"]
