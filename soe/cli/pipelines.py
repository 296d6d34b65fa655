"""`soe sequences [--backfill]`, `soe trainset`: the Spark sequence pipeline's commands.

(`soe backfill` is the model backfill of soe.flows; the sequence backfill is ``--backfill``.)

Each command builds (or, under spark-submit, reuses) the Spark session from ``settings.spark``
and prints its run manifest as one JSON line. Heavy imports (pyspark) happen inside the commands.
"""

from __future__ import annotations

import typer

from soe.cli.support import echo_json, friendly_errors, settings

INTERVAL = typer.Option(
    ..., "--interval", help="START/END (ISO 8601, whole UTC hours), e.g. 2026-01-01T00:00Z/2026-01-01T01:00Z."
)


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("sequences")
    @friendly_errors
    def sequences_cmd(
        ctx: typer.Context,
        interval: str = INTERVAL,
        backfill: bool = typer.Option(
            False,
            "--backfill",
            help="One update per hour of the interval (each hour gets its state and active shards).",
        ),
    ) -> None:
        """Validate the interval's events, merge them into the last-N state, shard the active users."""
        from core.layout import parse_interval
        from pipelines.hourly import backfill_sequences, update_sequences

        start, end = parse_interval(interval)
        if not backfill:
            echo_json(update_sequences(settings(ctx).pipeline(), start, end))
            return
        runs = backfill_sequences(settings(ctx).pipeline(), start, end)
        keys = ("as_of", "mode", "valid_events", "quarantined", "active_users", "state_users")
        echo_json({"hours": len(runs), "runs": [{k: r.get(k) for k in keys} for r in runs]})

    @app.command("trainset")
    @friendly_errors
    def trainset_cmd(
        ctx: typer.Context,
        kind: str = typer.Argument(..., help="time_split or leave_last_out."),
        split_time: str | None = typer.Option(
            None, help="time_split: T (ISO 8601); default: newest event - window."
        ),
        window_hours: int = typer.Option(24, help="time_split: targets are positives in (T, T + window]."),
        name: str | None = typer.Option(
            None, help="Directory name under <root>/trainsets/ (default from kind and T)."
        ),
    ) -> None:
        """Build a training set (inputs in the sequence contract + target lists) from the event log."""
        from core.atomic import read_marker
        from core.layout import utc
        from pipelines.trainset import build_trainset

        path = build_trainset(
            settings(ctx).pipeline(),
            kind,
            split_time=utc(split_time) if split_time else None,
            window_hours=window_hours,
            name=name,
        )
        echo_json({"path": str(path), **read_marker(path)})
