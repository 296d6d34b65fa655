"""What every `soe` command shares: the loaded settings, readable errors, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import typer

from soe.config import Settings, load_settings
from soe.flows.checks import GenerationRejected

log = logging.getLogger("soe")

# The one `soe models` group, shared by the components that manage models: the store adds the
# current-model pointer commands (current/switch/rollback/cleanup), the encoder adds `list`.
models_app = typer.Typer(
    help="Models: published artifacts and the current-model pointer readers use.", no_args_is_help=True
)

# Errors that are the user's to fix: shown as one clear line and exit code 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, LookupError)


# Every output is published atomically (temp dir, marker, rename), so an interrupted command leaves nothing
# half-published: one line says so, exit code 130, no traceback.
INTERRUPTED = "interrupted: nothing was half-published; rerun the same command to resume"


def settings(ctx: typer.Context) -> Settings:
    """The settings loaded by the `soe` callback (from --config / $SOE_CONFIG and SOE_* overrides)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings()
    return root.obj


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into a clear message (what went wrong and what to do) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        except GenerationRejected as exc:  # the run's output failed its checks: nothing was published
            typer.secho(f"rejected: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=3) from None
        except KeyboardInterrupt:
            typer.secho(INTERRUPTED, err=True)
            raise typer.Exit(code=130) from None

    return wrapper


def echo_json(payload: Any) -> None:
    """Print a result as one JSON line on stdout (for people and for scripts alike)."""
    typer.echo(json.dumps(payload, sort_keys=True, default=str))
