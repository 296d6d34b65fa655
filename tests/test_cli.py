"""The `soe` command line: generate -> validate with a summary, and clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from soe.cli.app import app

runner = CliRunner()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_generate_then_validate_reports_counts(tmp_path):
    env = {"SOE_DATA__ROOT": str(tmp_path)}
    r = runner.invoke(
        app, ["generate", "--users", "300", "--items", "1000", "--hours", "3", "--malformed", "0.02"], env=env
    )
    assert r.exit_code == 0, r.output
    gen = last_json(r.output)
    assert gen["partitions"] == 3 and gen["malformed_injected"] > 0
    r = runner.invoke(app, ["validate"], env=env)
    assert r.exit_code == 0, r.output
    summary = last_json(r.output)
    assert summary["quarantined"] == gen["malformed_injected"]
    assert summary["valid"] + summary["quarantined"] == gen["events"]


def leaf_commands() -> dict:
    """Every runnable `soe` command by its full name ("models switch"), walked from the click tree."""
    out: dict = {}

    def walk(cmd, path: list[str]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_documents_itself_and_its_options():
    commands = leaf_commands()
    assert {
        "generate",
        "validate",
        "config",
        "sequences",
        "train",
        "encode",
        "publish",
        "lookup",
        "graph",
        "lookalike",
        "candidates",
        "serve",
        "refresh",
        "backfill",
        "models list",
        "models switch",
    } <= set(commands)
    for name, cmd in commands.items():
        assert cmd.help and cmd.help.strip(), f"`soe {name}` has no help text"
        r = runner.invoke(app, [*name.split(), "--help"])
        assert r.exit_code == 0, (name, r.output)
        first_line = cmd.help.strip().splitlines()[0].split("(")[0].strip()[:40]
        flat = " ".join(r.output.split())
        assert " ".join(first_line.split()) in flat, f"`soe {name} --help` does not show its summary"
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and not getattr(param, "hidden", False):
                    assert opt in r.output, f"`soe {name} --help` does not list {opt}"


def test_every_command_is_run_by_some_test():
    """Each leaf command appears as the start of an argument list in the tests (not just its --help)."""
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))

    def invoked(name: str) -> bool:
        words = r'",\s*"'.join(map(re.escape, name.split()))
        return any(
            re.search(r'[\[(,]\s*"' + words + r'"\s*[,\]]', line) and "--help" not in line
            for line in sources.splitlines()
        )

    untested = [name for name in leaf_commands() if not invoked(name)]
    assert untested == [], f"commands that no test runs: {untested}"


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
