"""The store's `soe` commands end to end against a real redis-server."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from soe.cli.app import app
from tests.test_store_redis import T0, unit, write_shard


def run(env, *args, code=0):
    res = CliRunner().invoke(app, list(args), env=env)
    assert res.exit_code == code, (res.exit_code, res.output)
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else None


def test_publish_switch_lookup_forget(settings, redis_single, tmp_path):
    env = {
        "SOE_DATA__ROOT": str(settings.data.root),
        "SOE_REDIS__PORT": str(redis_single.port),
        "SOE_REDIS__BUCKETS": "64",
    }
    x = unit(100, 8)
    write_shard(settings.layout(), "m1", T0, 0, np.arange(100), x)
    out = run(env, "publish", "--model", "m1", "--as-of", "2026-01-01T05:00Z", "--shard", "0")
    assert out["written"] == 100
    assert run(env, "publish", "--model", "m1", "--as-of", "20260101T0500Z")["unchanged"] == 100
    run(env, "lookup", "7", code=2)  # no current model yet: a clear error
    assert run(env, "models", "switch", "m1")["current"] == "m1"
    got = run(env, "lookup", "7")
    assert got["found"] and got["model"] == "m1" and got["as_of"].startswith("2026-01-01T05:00")
    np.testing.assert_allclose(got["vector"], x[7], atol=1e-3)
    assert run(env, "models", "current")["models"][0]["role"] == "current"
    (tmp_path / "u.txt").write_text("7\n8\n")
    assert run(env, "forget", "--users", str(tmp_path / "u.txt"))["removed"]["v:m1"] == 2
    assert run(env, "lookup", "7", code=1)["found"] is False
    run(env, "models", "rollback", code=2)  # nothing to roll back to
    run(env, "publish", "--model", "m2", "--as-of", "2026-01-01T05:00Z", code=2)  # nothing published


def test_unreachable_redis_is_a_clear_error(settings):
    from store.local_server import free_ports

    env = {"SOE_DATA__ROOT": str(settings.data.root), "SOE_REDIS__PORT": str(free_ports(1)[0])}
    res = CliRunner().invoke(app, ["lookup", "1"], env=env)
    assert res.exit_code == 2 and "cannot reach Redis" in res.output and "Traceback" not in res.output


def test_redis_start_status_stop(settings):
    env = {"SOE_DATA__ROOT": str(settings.data.root)}
    started = run(env, "redis", "start", "--port", "0", "--no-persist")
    try:
        st = run(env, "redis", "status")
        assert st["running"] and st["nodes"][0]["port"] == started["ports"][0]
        run(env, "redis", "start", "--port", "0", code=2)  # already running
    finally:
        assert run(env, "redis", "stop")["stopped"] == started["ports"]
    assert run(env, "redis", "status", code=1)["running"] is False


def test_redis_acl_applies_users_locks_the_default_user_and_writes_a_file(settings, tmp_path):
    import pytest
    import redis

    from store import local_server
    from store.client import LookupClient

    server = local_server.start_single(tmp_path / "r")  # its own server: the default user gets locked
    try:
        env = {"SOE_DATA__ROOT": str(settings.data.root), "SOE_REDIS__PORT": str(server.ports[0])}
        pws = ["--admin-password", "apw-789", "--writer-password", "wpw-123", "--reader-password", "rpw-456"]
        # the library is loaded by the admin, its writer may call it
        out = run(env, "redis", "acl", *pws)
        assert out["users"] == ["soe-admin", "soe-writer", "soe-reader"] and out["default_user"] == "off"
        with pytest.raises(redis.exceptions.AuthenticationError):  # no connection without credentials
            redis.Redis(port=server.ports[0]).ping()
        run(env, "redis", "functions", "status", code=2)  # as the (now locked) default user: a clear error
        admin_env = {**env, "SOE_REDIS__USERNAME": "soe-admin", "SOE_REDIS__PASSWORD": "apw-789"}
        status = run(admin_env, "redis", "functions", "status")
        assert [v["version"] for v in status["nodes"].values()] == [str(status["expected_version"])]
        reader = server.redis_settings().with_credentials("soe-reader", "rpw-456")
        with pytest.raises(LookupError, match="no current model"):  # authenticated, may read; no model yet
            LookupClient(reader).get([1])
        run(env, "redis", "acl", *pws, "--file", str(tmp_path / "u.acl"))
        text = (tmp_path / "u.acl").read_text()
        assert text.startswith("user default off ") and "user soe-reader on #" in text
        assert not any(pw in text for pw in ("apw-789", "rpw-456", "wpw-123"))
        assert oct((tmp_path / "u.acl").stat().st_mode & 0o777) == "0o600"
    finally:
        local_server.stop(tmp_path / "r")
