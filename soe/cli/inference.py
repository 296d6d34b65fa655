"""`soe encode`: batch inference of one shard (a worker) or of every shard (one process)."""

from __future__ import annotations

import typer

from soe.cli.support import echo_json, friendly_errors, settings


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("encode")
    @friendly_errors
    def encode(
        ctx: typer.Context,
        model: str = typer.Option(
            ..., "--model", help="model version to encode with (see `soe models list`)"
        ),
        as_of: str = typer.Option(
            ..., "--as-of", help="snapshot time, e.g. 2026-01-01T05:00Z or 20260101T0500Z"
        ),
        shard: int | None = typer.Option(
            None, "--shard", help="encode only this shard (one worker); default: all"
        ),
        num_shards: int | None = typer.Option(
            None,
            "--num-shards",
            help="shard count (active: checked against the pipeline's; state: how to split)",
        ),
        source: str = typer.Option(
            "active", "--source", help="active (the hour's active users) or state (every user)"
        ),
        resume: bool = typer.Option(
            False, "--resume", help="all shards: keep shards an earlier run already published"
        ),
    ) -> None:
        """Encode sequence shards into embedding shards (atomic, idempotent per model/as_of/shard)."""
        from core.layout import utc
        from encoder.inference.engine import encode_all, encode_shard

        cfg = settings(ctx)
        t = utc(as_of)
        if shard is None:
            echo_json(
                encode_all(
                    cfg.layout(),
                    cfg.inference,
                    model,
                    t,
                    source=source,
                    num_shards=num_shards,
                    progress=True,
                    resume=resume,
                )
            )
        else:
            echo_json(
                encode_shard(
                    cfg.layout(),
                    cfg.inference,
                    model,
                    t,
                    shard,
                    num_shards=num_shards,
                    source=source,
                    progress=True,
                )
            )
