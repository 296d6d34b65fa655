"""The published embedding snapshots on disk: written by the encoder, read by the store and the graph.

Layout (written by `encoder.inference.engine`)::

    embeddings/<model>/as_of=<T>/shard=<iiiii>/part-00000.parquet + _SUCCESS   one worker's vectors
    embeddings/<model>/as_of=<T>/_SUCCESS                                      every shard is published

Only shard directories with a ``_SUCCESS`` marker are read; half-written temp directories are
invisible. The snapshot-level marker is written by `mark_snapshot` once all K shards exist (the
engine's `encode_all` does it; a distributed run calls it after its K workers).

* `read_embeddings(layout, model, as_of)`: every published shard of one snapshot.
* `latest_embeddings(layout, model, after=, until=)`: every user's newest vector across the snapshots
  of a window (newest as_of wins), the input of the user-similarity graph.
* `vector_array(column)`: the one converter of the ``vector`` column to a numpy (N, D) array.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete, read_marker, write_marker
from core.contracts import ContractError, embedding_contract
from core.layout import Layout, utc

log = logging.getLogger("soe.embeddings")


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
            dirs = [p for p in dirs if int(p.name[len("shard=") :]) < int(n)]
    return dirs


def snapshot_times(
    layout: Layout, model_version: str, *, after: datetime | None = None, until: datetime | None = None
) -> list[datetime]:
    """The as_of times of this model with a published shard in ``(after, until]``, oldest first."""
    root = layout.model_embeddings(model_version)
    if not root.is_dir():
        return []
    lo, hi = (utc(after) if after is not None else None), (utc(until) if until is not None else None)
    times = [utc(p.name[len("as_of=") :]) for p in root.glob("as_of=*") if p.is_dir()]
    times = [t for t in times if (lo is None or t > lo) and (hi is None or t <= hi)]
    return sorted(t for t in times if shard_dirs(layout, model_version, t))


def vector_array(
    column: pa.Array | pa.ChunkedArray, dtype: np.dtype | type | None = np.float32
) -> np.ndarray:
    """The embedding ``vector`` column (fixed_size_list<float>[D], no nulls) as an (N, D) array.

    ``dtype``: the result's dtype (float32 by default); None keeps the stored one (float16 in the
    contract), which saves a conversion when the values are re-encoded anyway.
    """
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(col.type):
        raise ContractError(f"embedding column 'vector' must be fixed_size_list<float>[dim], got {col.type}")
    if col.null_count:
        raise ContractError(f"{col.null_count} null vectors in an embedding table (the contract has none)")
    dim = col.type.list_size
    flat = col.values.to_numpy(zero_copy_only=False)[col.offset * dim : (col.offset + len(col)) * dim]
    out = flat.reshape(len(col), dim)  # (N, D)
    return out if dtype is None else out.astype(dtype, copy=False)


def _read_shards(
    dirs: list[Path], columns: list[str] | None = None, *, skip_unreadable: bool = False
) -> pa.Table:
    """The shards' Parquet files as one table in the embedding contract (only ``columns`` when given).

    ``skip_unreadable``: a file that cannot be read (corrupt, truncated) is left out with one warning
    naming it, instead of failing the read (see `latest_embeddings`).
    """
    tables = []
    for f in (f for d in dirs for f in sorted(d.glob("*.parquet"))):
        try:
            tables.append(pq.read_table(f, columns=columns))
        except (OSError, pa.ArrowException) as exc:
            if not skip_unreadable:
                raise
            log.warning(
                "embedding file %s is unreadable (%s): left out; its users keep their previous "
                "vector in this read. Restore or re-encode that snapshot.",
                f,
                type(exc).__name__,
            )
    if not tables:
        raise FileNotFoundError(f"published embedding shards hold no Parquet file: {dirs}")
    dims = {t.schema.field("vector").type.list_size for t in tables if "vector" in t.column_names}
    if len(dims) > 1:
        raise ValueError(f"embedding shards disagree on the vector dim {sorted(dims)}: {dirs}")
    schema = embedding_contract(dims.pop() if dims else 1).schema
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
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


def latest_embeddings(
    layout: Layout,
    model_version: str,
    *,
    after: datetime | None = None,
    until: datetime | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Every user's newest vector of this model across the snapshots in ``(after, until]`` (all by
    default): for each user the row of the newest as_of wins; rows sorted by user_id. An unreadable
    file is left out with a warning (its users fall back to their previous readable vector).

    ``columns``: read only these (they must include ``user_id``). Raises FileNotFoundError when no
    snapshot is published in the window.
    """
    times = snapshot_times(layout, model_version, after=after, until=until)
    if not times:
        raise FileNotFoundError(
            f"no published embeddings for model {model_version!r} in ({after}, {until}] under "
            f"{layout.model_embeddings(model_version)}; run the encoder first (soe encode)"
        )
    dirs = [d for t in reversed(times) for d in shard_dirs(layout, model_version, t)]  # newest first
    # one corrupt file of an older, finished snapshot must not block every later graph build
    table = _read_shards(dirs, columns, skip_unreadable=True)
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
