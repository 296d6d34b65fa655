"""`soe train [--promote]`, `soe eval`, `soe models list`, `soe models delete`: the encoder's commands.

The model lifecycle: `soe train` publishes an artifact (not yet served); `soe backfill --model V`
(or `soe train --promote`, which runs it right after training) re-encodes every known user with it,
validates, and switches the store's current-model pointer. The encoder cannot read the store, so the
commands here compose the two: `models list` marks the current/previous model, `models delete`
refuses to remove either.

Data sources (exactly one): ``--ml100k``, ``--sasrec-file PATH``, ``--events [--interval S/E]``
(the published event log under the data root) or ``--sequences PATH|TRAINSET`` (sequence rows, e.g.
a pipeline training set). Heavy imports (torch) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from soe.cli.store import redis_errors
from soe.cli.support import echo_json, friendly_errors, models_app, settings

ML100K = typer.Option(False, "--ml100k", help="MovieLens-100K (downloaded once into the cache).")
SASREC = typer.Option(None, "--sasrec-file", help="SASRec text file: 'user item item ...' per line.")
EVENTS = typer.Option(False, "--events", help="The published event log under the data root.")
INTERVAL = typer.Option(None, "--interval", help="START/END (ISO 8601) event-time window of --events.")
SEQUENCES = typer.Option(
    None, "--sequences", help="Parquet sequence rows, or a trainset name under the data root."
)


def _headline(metrics: dict) -> dict:
    from encoder.artifact import summary_verdict

    keys = (
        "ndcg@10",
        "hr@10",
        "pop_ndcg@10",
        "bag_ndcg@10",
        "staleness_loss_pct",
        "purity20",
        "random_purity20",
        "train_s",
    )
    out = {k: round(v, 5) if isinstance(v := metrics[k], float) else v for k in keys if k in metrics}
    return {**out, "verdict": summary_verdict(metrics)}


def _pointer(cfg) -> tuple[dict | None, str | None]:
    """(the store's current-model pointer, None) or (None, why it could not be read)."""
    try:
        from store.backends import open_store

        return open_store(cfg.redis).pointer(), None
    except Exception as exc:  # unreachable Redis, refused credentials ...: the caller decides
        return None, f"{type(exc).__name__}: {exc}"


def _require_state(cfg) -> None:
    """--promote backfills from the newest sequence state snapshot: say how to make one when there is none."""
    from soe.flows import stages

    try:
        stages.newest_state(cfg)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"--promote needs a sequence state snapshot to backfill from and {cfg.layout().state_root} has "
            "none: build one with `soe sequences --interval START/END` (or `soe refresh --interval "
            "START/END`), then rerun"
        ) from None


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("train")
    @friendly_errors
    @redis_errors
    def train_cmd(
        ctx: typer.Context,
        ml100k: bool = ML100K,
        sasrec_file: Path | None = SASREC,
        events: bool = EVENTS,
        interval: str | None = INTERVAL,
        sequences: str | None = SEQUENCES,
        epochs: int | None = typer.Option(None, help="Override train.epochs."),
        pooling: str | None = typer.Option(None, help="'last' or 'attention' (overrides the model config)."),
        plain: bool = typer.Option(False, "--plain", help="Plain SASRec ablation: item ids only."),
        promote: bool = typer.Option(
            False,
            "--promote",
            help="Then make it current: backfill every known user with it, validate, switch "
            "(= soe backfill --model V).",
        ),
    ) -> None:
        """Train, evaluate (with baselines) and publish a model; prints its version and headline metrics.

        With --promote, the model is then backfilled and made current in the same command."""
        from encoder.artifact import load_model
        from encoder.baselines import plain_sasrec_overrides
        from encoder.sources import load_source
        from encoder.train import train_model

        cfg = settings(ctx)
        if epochs is not None:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
        if promote:
            _require_state(cfg)  # before training, not after
        name, seqs = load_source(cfg.layout(), cfg.events, ml100k=ml100k, sasrec_file=sasrec_file,
                                 events=events, interval=interval, sequences=sequences)
        overrides = {"pooling": pooling} if pooling else {}
        if plain:
            overrides = plain_sasrec_overrides(overrides)
        version = train_model(
            cfg.layout(),
            cfg.train,
            cfg.events,
            seqs,
            max_len=cfg.sequences.max_len,
            overrides=overrides,
            card=f"data source: {name}",
            source_name=name,
        )
        _, _, meta = load_model(cfg.layout(), version)
        out = {"version": version, "source": name, **_headline(meta["metrics"])}
        card = cfg.layout().model(version) / "MODEL_CARD.md"
        typer.echo(f"{version}: {out['verdict']} (card: {card})", err=True)
        if not promote:
            echo_json(out)
            typer.echo(
                f"next: `soe backfill --model {version}` re-encodes every known user with it and "
                "makes it current (or train with --promote)",
                err=True,
            )
            return
        from soe.flows.backfill import run_backfill

        out["backfill"] = run_backfill(cfg, version)
        echo_json(out)
        b = out["backfill"]
        typer.echo(
            f"{version} is now current: {b['users']} users backfilled from the state as_of "
            f"{b['as_of']} (previous: {b['previous'] or 'none'}; `soe models rollback` swaps back)",
            err=True,
        )

    @app.command("eval")
    @friendly_errors
    def eval_cmd(
        ctx: typer.Context,
        model: str | None = typer.Option(
            None, "--model", help="Model version (default: the newest published)."
        ),
        ml100k: bool = ML100K,
        sasrec_file: Path | None = SASREC,
        events: bool = EVENTS,
        interval: str | None = INTERVAL,
        sequences: str | None = SEQUENCES,
        truth: Path | None = typer.Option(
            None, help="Planted truth users.parquet (synthetic): adds purity@20."
        ),
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
                raise FileNotFoundError(
                    f"no published model under {cfg.layout().models}: run `soe train` first"
                )
            model = known[0]["version"]
        name, seqs = load_source(cfg.layout(), cfg.events, ml100k=ml100k, sasrec_file=sasrec_file,
                                 events=events, interval=interval, sequences=sequences)
        if truth is None and events and (cfg.layout().ground_truth / "users.parquet").is_file():
            truth = cfg.layout().ground_truth / "users.parquet"
        metrics = evaluate_model(
            cfg.layout(),
            cfg.train,
            cfg.events,
            model,
            seqs,
            truth=pq.read_table(truth) if truth else None,
            save=save,
        )
        echo_json({"version": model, "source": name, **metrics})

    @models_app.command("list")
    @friendly_errors
    def list_cmd(ctx: typer.Context) -> None:
        """Published models, newest first: NDCG@10, HR@10, best baseline, verdict, current/previous."""
        from encoder.artifact import list_models

        cfg = settings(ctx)
        models = list_models(cfg.layout())
        pointer, why = _pointer(cfg) if models else ({}, None)
        if pointer is None:
            typer.echo(
                f"warning: cannot read the store's current-model pointer ({why}): no current/previous marks",
                err=True,
            )
        for m in models:
            m["current"] = None if pointer is None else m["version"] == pointer.get("current")
            m["previous"] = None if pointer is None else m["version"] == pointer.get("previous")
        echo_json(models)

    @models_app.command("delete")
    @friendly_errors
    def delete_cmd(
        ctx: typer.Context,
        version: str = typer.Argument(..., help="The published model to remove from <root>/models/."),
        force: bool = typer.Option(
            False,
            "--force",
            help="Delete even when the store cannot be read "
            "(the current and previous models are refused regardless).",
        ),
    ) -> None:
        """Remove a model artifact (renamed aside, then deleted); never the current or previous model."""
        from encoder.artifact import check_version, delete_model

        cfg = settings(ctx)
        check_version(version)
        pointer, why = _pointer(cfg)
        if pointer is None and not force:
            raise PermissionError(
                f"cannot read the store's current-model pointer ({why}), so cannot "
                f"tell whether {version} is served: refusing to delete it (--force deletes anyway)"
            )
        for role in ("current", "previous"):
            if pointer and pointer.get(role) == version:
                hint = (
                    "switch to another model first (`soe backfill --model V`)"
                    if role == "current"
                    else "it is the rollback target; switch twice to another model first"
                )
                raise PermissionError(f"{version} is the store's {role} model: refusing to delete it; {hint}")
        removed = delete_model(cfg.layout(), version)
        typer.echo(
            f"deleted {version}: {removed['files']} files, {removed['bytes']} bytes from "
            f"{removed['path']} (its store namespace, if any, goes with `soe models cleanup`)",
            err=True,
        )
        echo_json(removed)
