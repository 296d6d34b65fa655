"""`soe` commands of this component (registered by soe.cli): graph, lookalike, candidates, positives."""

from __future__ import annotations

from pathlib import Path

import typer

from core.progress import progress
from soe.cli.support import echo_json, friendly_errors, settings


def read_ids(text: str | None, path: Path | None) -> list[int]:
    """User ids from "1,2,3" and/or a file (one id per line, or a Parquet file with a user_id column)."""
    ids: list[int] = []
    try:
        if text:
            ids += [int(t) for t in text.replace(" ", "").split(",") if t]
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"seed file {path} does not exist")
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                ids += pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist()
            else:
                ids += [int(line) for line in path.read_text().split() if line]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"user ids must be integers: {exc}") from None
    return ids


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `soe` app."""

    @app.command("graph")
    @friendly_errors
    def graph_cmd(
        ctx: typer.Context,
        model: str = typer.Option(..., "--model", help="Model version whose embeddings to index."),
        as_of: str = typer.Option(..., "--as-of", help="Refresh time (ISO 8601 or YYYYMMDDTHHMMZ, UTC)."),
        full: bool = typer.Option(
            False, "--full", help="Rebuild from scratch instead of updating the previous graph."
        ),
        redis: bool | None = typer.Option(
            None, "--redis/--no-redis", help="Write Redis neighbour lists (default: graph.publish_redis)."
        ),
    ) -> None:
        """Build the user-similarity kNN graph (FAISS) of a model at as_of, measure its recall, publish it."""
        from store.graph.build import build_graph

        s = settings(ctx)
        with progress(None, "searching neighbours", "user") as bar:
            manifest = build_graph(
                s.graph,
                s.redis,
                s.layout(),
                model,
                as_of,
                incremental=False if full else None,
                publish_redis=redis,
                on_batch=bar.update,
            )
        echo_json(manifest)

    @app.command("lookalike")
    @friendly_errors
    def lookalike_cmd(
        ctx: typer.Context,
        model: str = typer.Option(..., "--model", help="Model version of the graph."),
        seeds: str | None = typer.Option(None, help="Seed user ids, comma separated."),
        seeds_file: Path | None = typer.Option(None, help="Seed ids: one per line, or Parquet with user_id."),
        size: int = typer.Option(1000, help="Audience size."),
        method: str | None = typer.Option(
            None, help="centroid | multi_centroid | max_seed (default: config)."
        ),
        include_seeds: bool = typer.Option(False, help="Keep the seeds in the audience."),
        out: Path | None = typer.Option(
            None, help="Write the audience (user_id, score) to this Parquet file."
        ),
    ) -> None:
        """Expand a seed set into a lookalike audience using the newest graph of a model."""
        from store.graph.lookalike import lookalike
        from store.graph.snapshot import latest_snapshot

        s = settings(ctx)
        ids = read_ids(seeds, seeds_file)
        if not ids:
            raise ValueError("give seed users with --seeds and/or --seeds-file")
        if len(ids) > s.graph.max_seeds or not 1 <= size <= s.graph.max_audience:
            raise ValueError(
                f"at most {s.graph.max_seeds} seeds and an audience size within [1, {s.graph.max_audience}]"
            )
        snap = latest_snapshot(s.layout(), model)
        if snap is None:
            raise FileNotFoundError(
                f"no published graph for model {model!r}: run `soe graph --model {model} --as-of T`"
            )
        method = method or s.graph.lookalike_method
        index = snap.searcher() if method == "max_seed" else None
        aud = lookalike(
            snap.vectors,
            ids,
            size,
            exclude_seeds=not include_seeds,
            method=method,
            n_centroids=s.graph.lookalike_centroids,
            index=index,
            seed_k=s.graph.lookalike_seed_k,
        )
        if out is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"user_id": aud.user_ids, "score": aud.scores}), out)
        echo_json(
            {
                "graph_as_of": snap.manifest["as_of"],
                "method": method,
                "size": len(aud.user_ids),
                "seeds_used": aud.n_seeds_used,
                "missing_seeds": len(aud.missing_seeds),
                "top": aud.user_ids[:20].tolist(),
                "out": str(out) if out else None,
            }
        )

    @app.command("candidates")
    @friendly_errors
    def candidates_cmd(
        ctx: typer.Context,
        model: str = typer.Option(..., "--model", help="Model version of the neighbour lists."),
        user: int = typer.Option(..., "--user", help="User id."),
        k: int = typer.Option(50, help="Candidates to return."),
    ) -> None:
        """Items the user's neighbours engaged with recently (from Redis), similarity weighted."""
        from store.graph.candidates import StoreNeighbours, StorePositives, candidates
        from store.graph.snapshot import latest_snapshot

        s = settings(ctx)
        snap = latest_snapshot(s.layout(), model)  # positives are aged at the graph's as_of
        items, scores = candidates(
            user,
            k,
            StoreNeighbours(s.redis, model),
            StorePositives(
                s.redis, s.graph.positives_window_hours, now=snap.as_of if snap is not None else None
            ),
        )
        echo_json({"user_id": user, "items": items.tolist(), "scores": [round(float(x), 5) for x in scores]})

    @app.command("positives")
    @friendly_errors
    def positives_cmd(
        ctx: typer.Context,
        as_of: str = typer.Option(..., "--as-of", help="Refresh time whose active-user sequences to read."),
    ) -> None:
        """Publish the active users' recent positive items (clicks, conversions) to Redis for candidates."""
        from store.graph.positives import publish_recent_positives

        s = settings(ctx)
        echo_json(publish_recent_positives(s.graph, s.events, s.redis, s.layout(), as_of))
