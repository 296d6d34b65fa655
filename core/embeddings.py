"""The published embedding snapshots on disk: written by the encoder, read by the store and the graph.

Layout (written by `encoder.inference.engine`)::

    embeddings/<model>/as_of=<T>/shard=<iiiii>/part-00000.parquet + _SUCCESS   one worker's vectors
    embeddings/<model>/as_of=<T>/_SUCCESS                                      every shard is published

Only shard directories with a ``_SUCCESS`` marker are read; half-written temp directories are
invisible. The snapshot-level marker is written by `mark_snapshot` once all K shards exist (the
engine's `encode_all` does it; a distributed run calls it after its K workers).

* `read_embeddings(layout, model, as_of)`: every published shard of one snapshot.
* `latest_embeddings(layout, model)`: every user's newest vector across snapshots (newest as_of wins),
  the input of the user-similarity graph.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete, read_marker, write_marker
from core.contracts import embedding_contract
from core.layout import Layout, utc


def model_root(layout: Layout, model_version: str) -> Path:
    return Path(layout.root) / "embeddings" / model_version


def shard_dirs(layout: Layout, model_version: str, as_of: datetime) -> list[Path]:
    """The published shard directories of one snapshot, in shard order.

    Once the snapshot is marked complete, only its shards ``0..num_shards-1`` count: a leftover shard
    of an earlier run with more shards is ignored rather than read twice.
    """
    root = layout.embeddings(model_version, as_of)
    if not root.is_dir():
        return []
    dirs = sorted(p for p in root.glob("shard=*") if p.is_dir() and is_complete(p))
    if is_complete(root):
        n = read_marker(root).get("num_shards")
        if n is not None:
            dirs = [p for p in dirs if int(p.name[len("shard="):]) < int(n)]
    return dirs


def snapshot_times(layout: Layout, model_version: str) -> list[datetime]:
    """The as_of times of this model that have at least one published shard, oldest first."""
    root = model_root(layout, model_version)
    if not root.is_dir():
        return []
    times = [utc(p.name[len("as_of="):]) for p in root.glob("as_of=*") if p.is_dir()]
    return sorted(t for t in times if shard_dirs(layout, model_version, t))


def _read_shards(dirs: list[Path]) -> pa.Table:
    tables = [pq.read_table(f) for d in dirs for f in sorted(d.glob("*.parquet"))]
    if not tables:
        raise FileNotFoundError(f"published embedding shards hold no Parquet file: {dirs}")
    dims = {t.schema.field("vector").type.list_size for t in tables}
    if len(dims) > 1:
        raise ValueError(f"embedding shards disagree on the vector dim {sorted(dims)}: {dirs}")
    schema = embedding_contract(dims.pop()).schema
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])


def read_embeddings(layout: Layout, model_version: str, as_of: datetime) -> pa.Table:
    """Every published shard of the (model, as_of) snapshot, as one embedding-contract table."""
    dirs = shard_dirs(layout, model_version, as_of)
    if not dirs:
        raise FileNotFoundError(
            f"no published embedding shard under {layout.embeddings(model_version, as_of)}: "
            f"run `soe encode --model {model_version} --as-of {utc(as_of):%Y-%m-%dT%H:%MZ}` first"
        )
    return _read_shards(dirs)


def latest_embeddings(layout: Layout, model_version: str) -> pa.Table:
    """Every user's newest vector of this model across all snapshots (newest as_of wins), by user_id."""
    times = snapshot_times(layout, model_version)
    if not times:
        raise FileNotFoundError(f"no published embeddings of model {model_version} under {model_root(layout, model_version)}")
    table = _read_shards([d for t in reversed(times) for d in shard_dirs(layout, model_version, t)])  # newest first
    uid = table.column("user_id").to_numpy()  # (R,)
    order = np.argsort(uid, kind="stable")  # equal ids keep newest-first order
    first = np.ones(len(order), dtype=bool)
    first[1:] = uid[order][1:] != uid[order][:-1]
    return table.take(pa.array(order[first]))


def mark_snapshot(layout: Layout, model_version: str, as_of: datetime, num_shards: int) -> dict:
    """Write the snapshot-level ``_SUCCESS`` once shards 0..num_shards-1 are all published."""
    root = layout.embeddings(model_version, as_of)
    manifests = []
    for i in range(num_shards):
        d = root / f"shard={i:05d}"
        if not is_complete(d):
            raise FileNotFoundError(f"embedding shard {d} is not published; cannot mark {root} complete")
        manifests.append(read_marker(d))
    summary = {
        "model_version": model_version,
        "as_of": utc(as_of).isoformat(),
        "num_shards": num_shards,
        "users": sum(int(m.get("users", 0)) for m in manifests),
        "dim": manifests[0].get("dim") if manifests else None,
    }
    write_marker(root, summary)
    return summary
