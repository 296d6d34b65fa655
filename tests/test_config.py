"""One typed configuration: defaults, YAML, SOE_* overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from soe.config import ConfigError, load_settings


def test_defaults_are_the_embedded_single_machine_setup():
    s = load_settings(environ={})
    assert s.data.root == Path("data")
    assert s.spark.master == "local[*]"
    assert s.redis.host == "127.0.0.1" and s.redis.mode == "single"
    assert s.inference.device == "auto"
    assert s.sequences.max_len == 200


def test_yaml_then_environment_overrides(tmp_path):
    cfg = tmp_path / "soe.yaml"
    cfg.write_text("redis:\n  port: 7001\n  mode: cluster\nsequences:\n  max_len: 50\n")
    s = load_settings(cfg, environ={"SOE_REDIS__PORT": "7002", "SOE_EVENTS__EVENT_TYPES": "[view, click]"})
    assert s.redis.port == 7002  # env beats YAML
    assert s.redis.mode == "cluster"  # YAML beats defaults
    assert s.sequences.max_len == 50
    assert s.events.event_types == ["view", "click"]


def test_config_path_from_environment(tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("data:\n  root: /srv/soe\n")
    assert load_settings(environ={"SOE_CONFIG": str(cfg)}).data.root == Path("/srv/soe")


def test_unknown_keys_and_bad_types_are_errors(tmp_path):
    """One ConfigError naming each field path; never the offending value (it may be a secret)."""
    with pytest.raises(ConfigError, match=r"redis\.prot: Extra inputs are not permitted"):
        load_settings(environ={"SOE_REDIS__PROT": "1"})
    with pytest.raises(ConfigError, match=r"redis\.port: Input should be a valid integer") as exc:
        load_settings(environ={"SOE_REDIS__PORT": "not-a-port"})
    assert "not-a-port" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"spark\.launcher"):
        load_settings(environ={"SOE_SPARK__LAUNCHER": "yarn-client"})  # closed choices are Literals
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_layout_paths_live_under_one_root(tmp_path):
    s = load_settings(environ={"SOE_DATA__ROOT": str(tmp_path)})
    from core.layout import utc

    lay = s.layout()
    t = utc("2026-01-01T05:00Z")
    assert lay.event_partition(t) == tmp_path / "events" / "dt=2026-01-01" / "hour=05"
    assert lay.active_shard(t, 3) == tmp_path / "active" / "as_of=20260101T0500Z" / "shard=00003.parquet"
    assert utc("20260101T0500Z") == t


def test_a_secret_from_the_environment_is_taken_verbatim():
    """YAML would read 0123 as 83 and 12:30 as 750: the password would silently change."""
    for raw in ("0123", "1_000", "12:30", "1.50", "20240229", "yes"):
        s = load_settings(environ={"SOE_REDIS__PASSWORD": raw})
        assert s.redis.secret() == raw
