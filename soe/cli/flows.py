"""`soe refresh`, `soe retrain`, `soe backfill`, `soe demo`: the flows without Airflow.

Register with ``soe.cli.flows.register(app)`` in soe/cli.py. Each command calls the same step
functions the DAGs call (soe.flows.hourly / training / backfill), so there is no second
implementation: ``soe refresh --interval A/B`` is the hourly DAG for every hour of [A, B).
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from soe.cli.support import echo_json, friendly_errors, settings


def refresh_summary(result: dict) -> str:
    """One human line per refreshed hour: verdict, per-stage seconds (summed over shards), counts."""
    st = result["stages"]
    parts = []
    for name, stage in st.items():
        shards = f" x{stage['shards']}" if stage.get("shards", 1) > 1 else ""
        parts.append(f"{name} {stage.get('seconds', 0.0):.1f}s{shards}")
    users = st.get("encode", {}).get("users", result.get("active_users"))
    verdict = "validated" if st.get("validate", {}).get("ok") else "REJECTED"
    return (
        f"{result['as_of']} {result['model']}: {verdict}, {users} users encoded, "
        f"{st.get('publish', {}).get('written', 0)} vectors written | {' | '.join(parts)} "
        f"| manifest {result['manifest']}"
    )


def register(app: typer.Typer) -> None:
    """Add the flow commands to the `soe` app."""

    @app.command("refresh")
    @friendly_errors
    def refresh_cmd(
        ctx: typer.Context,
        interval: str = typer.Option(
            ..., help="START/END (ISO 8601, whole hours): every hour of it is refreshed in turn."
        ),
        model: str | None = typer.Option(None, help="Encode with this model instead of the current one."),
    ) -> None:
        """Run the hourly refresh: sequences, encode, validate, graph, publish, manifest, retention."""
        from core.layout import parse_interval
        from soe.flows.hourly import run_hourly

        start, end = parse_interval(interval)
        for result in run_hourly(settings(ctx), start, end, model):
            typer.echo(refresh_summary(result), err=True)
            echo_json(result)

    @app.command("retrain")
    @friendly_errors
    def retrain_cmd(
        ctx: typer.Context,
        as_of: str | None = typer.Option(
            None, "--as-of", help="Training as_of (ISO 8601; default: the newest state)."
        ),
        backfill: bool = typer.Option(
            True, "--backfill/--no-backfill", help="Backfill and switch when promoted."
        ),
    ) -> None:
        """Training flow: trainset -> train -> evaluate vs current -> promotion gate -> backfill + switch."""
        from soe.flows import stages
        from soe.flows.training import parse_as_of, run_training

        s = settings(ctx)
        t = parse_as_of(as_of, stages.newest_state(s) if not as_of else datetime.now(UTC))
        echo_json(run_training(s, t, backfill=backfill))

    @app.command("backfill")
    @friendly_errors
    def backfill_cmd(
        ctx: typer.Context,
        model: str = typer.Option(
            ..., "--model", help="Model version to backfill into its namespace and switch to."
        ),
        as_of: str | None = typer.Option(
            None, "--as-of", help="Use the newest state at or before this time."
        ),
    ) -> None:
        """Re-encode every known user with MODEL, publish, build its graph, validate, switch the pointer."""
        from core.layout import utc
        from soe.flows.backfill import run_backfill

        echo_json(run_backfill(settings(ctx), model, utc(as_of) if as_of else None))

    @app.command("demo")
    def demo_cmd(
        users: int = typer.Option(3000, help="Users in the synthetic demo log."),
        runs: int = typer.Option(3, help="Consecutive hourly DAG runs."),
        no_airflow: bool = typer.Option(
            False, "--no-airflow", help="Run the hours in-process instead of `airflow dags test`."
        ),
    ) -> None:
        """The main job: local Redis, demo events, a small model, hourly DAG runs, a readable summary."""
        from soe.flows.main_job import main

        raise typer.Exit(
            main(["--users", str(users), "--runs", str(runs), *(["--no-airflow"] if no_airflow else [])])
        )
