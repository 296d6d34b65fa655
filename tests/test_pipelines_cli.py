"""The pipeline's `soe` commands and spark-submit entry: argument handling and clear errors (no Spark)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from soe.cli.app import app


@pytest.mark.parametrize(
    "args, message",
    [
        (["sequences", "--interval", "2026-01-01T00:30Z/2026-01-01T01:00Z"], "whole hours"),
        (
            ["sequences", "--backfill", "--interval", "2026-01-01T02:00Z/2026-01-01T01:00Z"],
            "END must be after START",
        ),
        (["trainset", "bogus"], "time_split"),
        (["trainset", "time_split"], "no published event partitions"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, args, env={"SOE_DATA__ROOT": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_submit_entry_rejects_a_bad_interval(tmp_path, monkeypatch):
    from soe.flows.spark_submit import main

    monkeypatch.setenv("SOE_DATA__ROOT", str(tmp_path))
    with pytest.raises(ValueError, match="whole hours"):
        main(["sequences", "--interval", "2026-01-01T00:10Z/2026-01-01T01:00Z"])
