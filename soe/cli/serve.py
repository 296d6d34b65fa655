"""`soe` commands of this component (registered by soe.cli): serve, and the OpenAPI spec."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from soe.cli.support import friendly_errors, settings


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("serve")
    @friendly_errors
    def serve_cmd(
        ctx: typer.Context,
        host: str | None = typer.Option(None, help="Bind address (default: serve.host)."),
        port: int | None = typer.Option(None, help="Port (default: serve.port)."),
        openapi: Path | None = typer.Option(None, help="Write the OpenAPI spec to this file and exit."),
    ) -> None:
        """Run the query service: vectors, neighbours, lookalike, candidates, /ready, /metrics."""
        from store.service.app import create_app, openapi_spec

        s = settings(ctx)
        if openapi is not None:
            openapi.write_text(json.dumps(openapi_spec(s.serve, s.graph), indent=2, sort_keys=True) + "\n")
            typer.echo(f"wrote {openapi}")
            return
        from store.service.server import make_server

        # uvicorn with read timeouts on headers (serve.header_timeout_s) and bodies (serve.body_timeout_s)
        make_server(create_app(s.serve, s.graph, s.redis, s.layout()), s.serve, host=host, port=port).run()
