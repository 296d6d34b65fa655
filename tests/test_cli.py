"""The `soe` command line: generate -> validate with a summary, and clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from soe.cli.app import app

runner = CliRunner()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_generate_then_validate_reports_counts(tmp_path):
    env = {"SOE_DATA__ROOT": str(tmp_path)}
    r = runner.invoke(app, ["generate", "--users", "300", "--items", "1000", "--hours", "3", "--malformed", "0.02"], env=env)
    assert r.exit_code == 0, r.output
    gen = last_json(r.output)
    assert gen["partitions"] == 3 and gen["malformed_injected"] > 0
    r = runner.invoke(app, ["validate"], env=env)
    assert r.exit_code == 0, r.output
    summary = last_json(r.output)
    assert summary["quarantined"] == gen["malformed_injected"]
    assert summary["valid"] + summary["quarantined"] == gen["events"]


def test_every_command_has_help():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for name in ("generate", "validate", "config", "datasets"):
        assert name in r.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and len(sub.output) > 50


def test_user_errors_are_one_clear_line(tmp_path):
    r = runner.invoke(app, ["validate"], env={"SOE_DATA__ROOT": str(tmp_path)})
    assert r.exit_code == 2
    assert "run `soe generate` first" in r.output
    r = runner.invoke(app, ["generate", "--malformed", "0.9"], env={"SOE_DATA__ROOT": str(tmp_path)})
    assert r.exit_code == 2 and "--malformed" in r.output


def test_bad_config_is_reported(tmp_path):
    r = runner.invoke(app, ["config"], env={"SOE_REDIS__PORT": "x"})
    assert r.exit_code == 2 and "bad configuration" in r.output


def test_config_masks_the_password():
    r = runner.invoke(app, ["config"], env={"SOE_REDIS__PASSWORD": "hunter2"})
    assert r.exit_code == 0 and "hunter2" not in r.output and "***" in r.output
