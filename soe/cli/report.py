"""`soe report`: the run report of a model over a time range, as one self-contained HTML page.

Register with ``soe.cli.report.register(app)`` (soe/cli/app.py). Reads the run manifests and the
model artifact under the data root; needs neither Redis nor Spark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soe.cli.support import echo_json, friendly_errors, settings


def register(app: typer.Typer) -> None:
    """Add `soe report` to the `soe` app."""

    @app.command("report")
    @friendly_errors
    def report_cmd(
        ctx: typer.Context,
        model: Annotated[
            str | None,
            typer.Option("--model", help="Model version (default: the model of the newest done hourly run)."),
        ] = None,
        interval: Annotated[
            str | None,
            typer.Option(
                "--interval",
                help="START/END (ISO 8601): runs whose data interval ends in (START, END] "
                "(default: every done run of the model).",
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", help="HTML file to write (default: <root>/reports/<model>_<start>_<end>.html)."
            ),
        ] = None,
    ) -> None:
        """Write an HTML run report (stage times, throughput, checks, quarantine, training, baselines)."""
        from core.layout import parse_interval, stamp
        from soe.report.data import default_interval, default_model
        from soe.report.page import write_report

        s = settings(ctx)
        layout = s.layout()
        model = model or default_model(layout)
        if not model:
            raise LookupError(f"no done hourly or backfill run under {layout.root}/manifests: pass --model")
        start, end = parse_interval(interval) if interval else default_interval(layout, model)
        out = out or Path(layout.root) / "reports" / f"{model}_{stamp(start)}_{stamp(end)}.html"
        echo_json(write_report(layout, model, start, end, out, norm_tolerance=s.orchestration.norm_tolerance))
