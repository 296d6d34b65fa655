"""The published embedding snapshots on disk: written by the encoder, read by the store and the graph.

Layout (written by `encoder.inference.engine`)::

    embeddings/<model>/as_of=<T>/shard=<iiiii>/part-00000.parquet + _SUCCESS   one worker's vectors
    embeddings/<model>/as_of=<T>/_SUCCESS                                      every shard is published

Only shard directories with a ``_SUCCESS`` marker are read; half-written temp directories are
invisible. The snapshot-level marker is written by `mark_snapshot` once all K shards exist (the
engine's `encode_all` does it; a distributed run calls it after its K workers).

* `read_embeddings(layout, model, as_of)`: every published shard of one snapshot.
* `latest_embeddings(layout, model, after=, until=)`: every user's newest vector across the snapshots
  of a window (newest as_of wins), as one table.
* `latest_ids(layout, model, after=, until=)` then `latest_vectors_of(latest, ids)`: the same merge,
  streamed (the user-similarity graph's input): the window's user ids first, then each user's newest
  vector batch by batch, so memory follows one batch, never every shard at once.
* `vector_array(column)`: the one converter of the ``vector`` column to a numpy (N, D) array.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
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


def _contract_schema(dim: int, columns: list[str] | None) -> pa.Schema:
    schema = embedding_contract(dim).schema
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    return schema


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
    schema = _contract_schema(dims.pop() if dims else 1, columns)
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


def _window_dirs(
    layout: Layout, model_version: str, after: datetime | None, until: datetime | None
) -> list[Path]:
    """The published shard directories of the snapshots in ``(after, until]``, newest snapshot first."""
    times = snapshot_times(layout, model_version, after=after, until=until)
    if not times:
        raise FileNotFoundError(
            f"no published embeddings for model {model_version!r} in ({after}, {until}] under "
            f"{layout.model_embeddings(model_version)}; run the encoder first (soe encode)"
        )
    return [d for t in reversed(times) for d in shard_dirs(layout, model_version, t)]


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

    The plain, whole-table form of the merge: the graph reads the same rows streamed (`latest_ids`,
    then `latest_vectors_of`), and tests compare the two bit for bit.
    """
    dirs = _window_dirs(layout, model_version, after, until)  # newest first
    # one corrupt file of an older, finished snapshot must not block every later graph build
    table = _read_shards(dirs, columns, skip_unreadable=True)
    uid = table.column("user_id").to_numpy()  # (R,)
    order = np.argsort(uid, kind="stable")  # equal ids keep newest-first order
    first = np.ones(len(order), dtype=bool)
    first[1:] = uid[order][1:] != uid[order][:-1]
    return table.take(pa.array(order[first]))


@dataclass(frozen=True)
class LatestIds:
    """The users of a window of snapshots, before any vector is read (`latest_ids`)."""

    files: tuple[Path, ...]  # the readable Parquet files, newest snapshot first (the merge order)
    ids: np.ndarray  # (N,) int64 sorted unique user ids: every user with a row in ``files``
    dim: int  # the vector width all files agree on
    rows: int  # rows in ``files`` (>= N: a user active in several hours has several)


# rows per batch of the streamed read, at most: batches that span row groups (the encoder writes ~32k
# rows per group) cost the allocator ~100 MB of retained pages at 64k rows, ~25 MB at 8k (measured at 1M)
READ_BATCH_ROWS = 8192
DEFAULT_BATCH_ROWS = 65_536  # a caller's block size when it names none (capped by READ_BATCH_ROWS)


def _batches(path: Path, columns: list[str], dim: int, batch_rows: int) -> Iterator[pa.Table]:
    """The file's ``columns`` in the embedding contract, ``batch_rows`` rows (at most `READ_BATCH_ROWS`)
    at a time."""
    schema = _contract_schema(dim, columns)
    file = pq.ParquetFile(path, pre_buffer=False)
    batch_rows = max(1, min(batch_rows, READ_BATCH_ROWS))
    for batch in file.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
        yield pa.Table.from_batches([batch]).select(schema.names).cast(schema)


def latest_ids(
    layout: Layout,
    model_version: str,
    *,
    after: datetime | None = None,
    until: datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> LatestIds:
    """Pass 1 of the streamed `latest_embeddings`: which users the window holds, reading one batch of
    one file at a time. Every file is read through (vectors decoded and dropped), so a file that cannot
    be read is left out here with the same warning, and the second pass (`latest_vectors_of`) reads
    exactly the files this one could. Memory: the ids (8 B per user, twice while merging) + one batch.
    """
    dirs = _window_dirs(layout, model_version, after, until)
    paths = [f for d in dirs for f in sorted(d.glob("*.parquet"))]
    files: list[Path] = []
    seen = np.zeros(0, np.int64)
    dims: dict[int, Path] = {}
    rows = 0
    for f in paths:
        try:
            dim = pq.read_schema(f).field("vector").type.list_size
            parts = [
                np.unique(t.column("user_id").to_numpy())
                for t in _batches(f, ["user_id", "vector"], dim, batch_rows)
            ]
            n_rows = pq.ParquetFile(f).metadata.num_rows
        except (OSError, pa.ArrowException, KeyError, AttributeError) as exc:
            log.warning(
                "embedding file %s is unreadable (%s): left out; its users keep their previous "
                "vector in this read. Restore or re-encode that snapshot.",
                f,
                type(exc).__name__,
            )
            continue
        dims.setdefault(dim, f)
        files.append(f)
        rows += n_rows
        # sorted runs merged by a stable sort (timsort: linear in the runs), then deduplicated
        merged = np.sort(np.concatenate([seen, *parts]), kind="stable")
        keep = np.ones(len(merged), bool)
        keep[1:] = merged[1:] != merged[:-1]
        seen = merged[keep]
        del merged, keep, parts
    if not files:
        raise FileNotFoundError(f"published embedding shards hold no Parquet file: {dirs}")
    if len(dims) > 1:
        raise ValueError(f"embedding shards disagree on the vector dim {sorted(dims)}: {dirs}")
    pa.default_memory_pool().release_unused()
    return LatestIds(tuple(files), seen, dims.popitem()[0], rows)


def latest_vectors_of(
    latest: LatestIds, ids: np.ndarray, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pass 2: ``(rows, vectors)`` batch by batch, ``vectors`` (n, D) in the stored dtype (float16)
    being the newest vector of the users ``ids[rows]``; ``ids`` is a sorted subset of ``latest.ids``
    (e.g. without the forgotten users). Every user of ``ids`` comes exactly once, from the row that
    `latest_embeddings` keeps (the newest snapshot's; within it the first row), so the two agree bit
    for bit. Memory: one byte per user (written yet?) + one batch."""
    ids = np.asarray(ids, np.int64)
    written = np.zeros(len(ids), bool)
    for f in latest.files:
        for t in _batches(f, ["user_id", "vector"], latest.dim, batch_rows):
            uid = t.column("user_id").to_numpy()
            pos = np.minimum(np.searchsorted(ids, uid), max(len(ids) - 1, 0))
            hit = np.flatnonzero((ids[pos] == uid) & ~written[pos]) if len(ids) else np.zeros(0, np.int64)
            if not len(hit):
                continue
            _, first = np.unique(pos[hit], return_index=True)  # a user twice in one batch: its first row
            hit = hit[np.sort(first)]
            written[pos[hit]] = True
            yield pos[hit], vector_array(t.column("vector"), dtype=None)[hit]
    pa.default_memory_pool().release_unused()
    if not written.all():
        missing = ids[~written][:5]
        raise ValueError(
            f"{int((~written).sum())} users (e.g. {missing.tolist()}) have no row in {latest.files}"
        )


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
