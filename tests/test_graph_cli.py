"""`soe graph`, `soe lookalike`: the commands end to end, and clear errors (exit 2) for bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from soe.cli.app import app
from store.graph.planted import PlantedConfig, planted_vectors, write_embeddings


def test_graph_and_lookalike_commands(settings, tmp_path):
    p = planted_vectors(PlantedConfig(n_users=1500, n_clusters=5, seed=2))
    write_embeddings(settings.layout(), "m1", "2026-01-01T03:00Z", p.user_ids, p.vectors)
    env = {"SOE_DATA__ROOT": str(settings.data.root), "SOE_GRAPH__RECALL_SAMPLE": "200"}
    run = CliRunner().invoke
    r = run(app, ["graph", "--model", "m1", "--as-of", "2026-01-01T03:00Z", "--no-redis"], env=env)
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout.strip().splitlines()[-1])
    assert manifest["n_users"] == 1500 and manifest["mode"] == "full" and manifest["recall_at_k"] > 0.99

    members = p.user_ids[p.cluster == 1]
    (tmp_path / "seeds.txt").write_text("\n".join(map(str, members[:50])))
    out = tmp_path / "aud.parquet"
    r = run(
        app,
        [
            "lookalike",
            "--model",
            "m1",
            "--seeds-file",
            str(tmp_path / "seeds.txt"),
            "--seeds",
            "-5",
            "--size",
            "100",
            "--out",
            str(out),
        ],
        env=env,
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["seeds_used"] == 50 and summary["missing_seeds"] == 1 and summary["size"] == 100
    assert set(pq.read_table(out).column("user_id").to_pylist()) <= set(members[50:].tolist())

    for args, message in [
        (["lookalike", "--model", "m1", "--seeds", "1,x"], "must be integers"),
        (["lookalike", "--model", "m1"], "give seed users"),
        (["lookalike", "--model", "nope", "--seeds", "1"], "no published graph"),
        (
            ["graph", "--model", "nope", "--as-of", "2026-01-01T03:00Z", "--no-redis"],
            "no published embeddings",
        ),
        (["graph", "--model", "bad/name", "--as-of", "2026-01-01T03:00Z"], "model version"),
    ]:
        r = run(app, args, env=env)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
