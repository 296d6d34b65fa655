"""`soe` commands of this component (registered by soe.cli): serve, and the OpenAPI spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from soe.cli.support import friendly_errors, settings


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("serve")
    @friendly_errors
    def serve_cmd(
        ctx: typer.Context,
        host: Optional[str] = typer.Option(None, help="Bind address (default: serve.host)."),
        port: Optional[int] = typer.Option(None, help="Port (default: serve.port)."),
        openapi: Optional[Path] = typer.Option(None, help="Write the OpenAPI spec to this file and exit."),
    ) -> None:
        """Run the query service: vectors, neighbours, lookalike, candidates, /ready, /metrics."""
        from store.service.app import create_app, openapi_spec

        s = settings(ctx)
        if openapi is not None:
            openapi.write_text(json.dumps(openapi_spec(s.serve, s.graph), indent=2, sort_keys=True) + "\n")
            typer.echo(f"wrote {openapi}")
            return
        import uvicorn

        uvicorn.run(create_app(s.serve, s.graph, s.redis, s.layout()), host=host or s.serve.host, port=port or s.serve.port, log_level="info")
