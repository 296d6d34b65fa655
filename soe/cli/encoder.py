"""`soe train`, `soe eval`, `soe models list`: the encoder's commands (registered by soe.cli).

Data sources (exactly one): ``--ml100k``, ``--sasrec-file PATH``, ``--events [--interval S/E]``
(the published event log under the data root) or ``--sequences PATH|TRAINSET`` (sequence rows, e.g.
a pipeline training set). Heavy imports (torch) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from soe.cli.support import echo_json, friendly_errors, models_app, settings

ML100K = typer.Option(False, "--ml100k", help="MovieLens-100K (downloaded once into the cache).")
SASREC = typer.Option(None, "--sasrec-file", help="SASRec text file: 'user item item ...' per line.")
EVENTS = typer.Option(False, "--events", help="The published event log under the data root.")
INTERVAL = typer.Option(None, "--interval", help="START/END (ISO 8601) event-time window of --events.")
SEQUENCES = typer.Option(None, "--sequences", help="Parquet sequence rows, or a trainset name under the data root.")


def _headline(metrics: dict) -> dict:
    keys = ("ndcg@10", "hr@10", "pop_ndcg@10", "bag_ndcg@10", "staleness_loss_pct", "purity20", "random_purity20", "train_s")
    return {k: round(metrics[k], 5) if isinstance(metrics[k], float) else metrics[k] for k in keys if k in metrics}


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("train")
    @friendly_errors
    def train_cmd(
        ctx: typer.Context,
        ml100k: bool = ML100K,
        sasrec_file: Optional[Path] = SASREC,
        events: bool = EVENTS,
        interval: Optional[str] = INTERVAL,
        sequences: Optional[str] = SEQUENCES,
        epochs: Optional[int] = typer.Option(None, help="Override train.epochs."),
        pooling: Optional[str] = typer.Option(None, help="'last' or 'attention' (overrides the model config)."),
        plain: bool = typer.Option(False, "--plain", help="Plain SASRec ablation: item ids only."),
    ) -> None:
        """Train, evaluate (with baselines) and publish a model; prints its version and headline metrics."""
        from encoder.baselines import plain_sasrec_overrides
        from encoder.sources import load_source
        from encoder.train import train_model

        cfg = settings(ctx)
        if epochs is not None:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
        name, seqs = load_source(cfg.layout(), cfg.events, ml100k=ml100k, sasrec_file=sasrec_file, events=events,
                                 interval=interval, sequences=sequences)
        overrides = {"pooling": pooling} if pooling else {}
        if plain:
            overrides = plain_sasrec_overrides(overrides)
        version = train_model(cfg.layout(), cfg.train, cfg.events, seqs, max_len=cfg.sequences.max_len,
                              overrides=overrides, card=f"data source: {name}")
        from encoder.artifact import load_model

        _, _, meta = load_model(cfg.layout(), version)
        echo_json({"version": version, "source": name, **_headline(meta["metrics"])})

    @app.command("eval")
    @friendly_errors
    def eval_cmd(
        ctx: typer.Context,
        model: Optional[str] = typer.Option(None, "--model", help="Model version (default: the newest published)."),
        ml100k: bool = ML100K,
        sasrec_file: Optional[Path] = SASREC,
        events: bool = EVENTS,
        interval: Optional[str] = INTERVAL,
        sequences: Optional[str] = SEQUENCES,
        truth: Optional[Path] = typer.Option(None, help="Planted truth users.parquet (synthetic): adds purity@20."),
        save: bool = typer.Option(False, help="Merge the metrics into the model's metrics.json."),
    ) -> None:
        """Leave-last-out full ranking (+ popularity and bag-of-items), staleness, and planted purity."""
        import pyarrow.parquet as pq

        from encoder.artifact import list_models
        from encoder.evaluate import evaluate_model
        from encoder.sources import load_source

        cfg = settings(ctx)
        if model is None:
            known = list_models(cfg.layout())
            if not known:
                raise FileNotFoundError(f"no published model under {cfg.layout().models}: run `soe train` first")
            model = known[0]["version"]
        name, seqs = load_source(cfg.layout(), cfg.events, ml100k=ml100k, sasrec_file=sasrec_file, events=events,
                                 interval=interval, sequences=sequences)
        if truth is None and events and (cfg.layout().ground_truth / "users.parquet").is_file():
            truth = cfg.layout().ground_truth / "users.parquet"
        metrics = evaluate_model(cfg.layout(), cfg.train, cfg.events, model, seqs,
                                 truth=pq.read_table(truth) if truth else None, save=save)
        echo_json({"version": model, "source": name, **metrics})

    @models_app.command("list")
    @friendly_errors
    def list_cmd(ctx: typer.Context) -> None:
        """Published models, newest first, with headline metrics."""
        from encoder.artifact import list_models

        echo_json(list_models(settings(ctx).layout()))
