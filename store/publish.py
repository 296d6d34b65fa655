"""Publish a model's embeddings for one as_of from Parquet (the source of truth) into the store.

The inference engine writes one directory per shard, ``layout.embeddings(model, as_of)/shard=<i>``,
each published atomically (it holds ``_SUCCESS``) with Parquet files in the embedding contract.
`publish_embeddings` streams those files in batches of ``redis.publish_batch`` rows, encodes each
batch in one numpy pass (store.format), and upserts it (`VectorStore.upsert`; in Redis one Lua call
per few buckets, many calls per pipeline, grouped by cluster node). The upsert is conditional on
as_of, so publishing is idempotent and a late rerun of an older hour cannot overwrite newer vectors.
Each published shard leaves a manifest (counts, as_of, model) in the store:
``<ns>:manifests:<model>`` field ``<as_of>/<shard>``. Forgotten users (`core.forget`) are never
published, even from a snapshot written before their forget (a reconcile republishing an old hour).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete
from core.contracts import ContractError, embedding_contract
from core.embeddings import shard_dirs as embedding_shard_dirs
from core.embeddings import vector_array
from core.forget import ForgetList
from core.layout import Layout, epoch_ms, stamp, utc
from store.backends import open_store
from store.base import UpsertCounts, VectorStore
from store.format import encode_vectors
from store.settings import RedisSettings

log = logging.getLogger("soe.store.publish")


def shard_dirs(layout: Layout, model_version: str, as_of: datetime, shard: int | None = None) -> list[Path]:
    """The published shard directories of (model, as_of): all (`core.embeddings.shard_dirs`) or ``shard``."""
    if shard is not None:
        d = layout.embeddings(model_version, as_of) / f"shard={shard:05d}"
        if not is_complete(d):
            raise FileNotFoundError(
                f"embedding shard {d} is not published (no _SUCCESS): run inference first"
            )
        return [d]
    dirs = embedding_shard_dirs(layout, model_version, as_of)
    if not dirs:
        where = layout.embeddings(model_version, as_of)
        raise FileNotFoundError(
            f"no published embedding shards under {where}: run inference for model "
            f"{model_version!r} at as_of {stamp(as_of)} first"
        )
    return dirs


def read_batches(files: list[Path], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of embedding files, checked against the embedding contract."""
    for f in files:
        pf = pq.ParquetFile(f)
        if pf.schema_arrow.get_field_index("vector") < 0:
            raise ContractError(f"{f} has no 'vector' column: not an embedding file")
        embedding_contract(pf.schema_arrow.field("vector").type.list_size).check_version(pf.schema_arrow)
        yield from pf.iter_batches(batch_size=batch_size)


def rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Concatenate consecutive record batches into batches of about ``rows`` rows (the last may be less)."""
    buf, n = [], 0
    for b in batches:
        buf.append(b)
        n += b.num_rows
        if n >= rows:
            yield _concat(buf)
            buf, n = [], 0
    if buf:
        yield _concat(buf)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches).combine_chunks()
    return table.to_batches(max_chunksize=table.num_rows)[0]


def prefetch(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead (Parquet decoding releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def run():
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer and raised there
            put(exc)

    threading.Thread(target=run, daemon=True).start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # a producer blocked on a full queue gives up within 0.1 s


def publish_batch(
    store: VectorStore, model_version: str, batch: pa.RecordBatch, dtype: str, buckets: int
) -> UpsertCounts:
    """Encode and upsert one record batch of the embedding contract."""
    models = set(batch.column("model_version").unique().to_pylist())
    if models - {model_version}:
        raise ContractError(
            f"embedding file holds model_version {sorted(models)}, expected {model_version!r}"
        )
    x = vector_array(batch.column("vector"), dtype=None)  # (B, D) as stored (float16)
    ids = batch.column("user_id").to_numpy().astype(np.int64)  # (B,)
    as_of = batch.column("as_of").cast(pa.int64()).to_numpy()  # (B,) ms UTC
    store.ensure_model(model_version, x.shape[1], dtype, buckets)
    rows = encode_vectors(x, as_of, model_version, dtype)  # (B, value_size) uint8
    return store.upsert_vectors(model_version, ids, rows, as_of)


def publish_embeddings(
    redis: RedisSettings,
    layout: Layout,
    model_version: str,
    as_of: datetime | str,
    shard: int | None = None,
    *,
    store: VectorStore | None = None,
    on_rows: Callable[[int], object] | None = None,
) -> dict:
    """Upsert the (model, as_of) embeddings, one shard or all, into the store; returns the counts.

    Raises FileNotFoundError when the shards are not published yet, ContractError for files that
    break the embedding contract.
    """
    as_of = utc(as_of)
    store = store if store is not None else open_store(redis)
    dirs = shard_dirs(layout, model_version, as_of, shard)
    files = [f for d in dirs for f in sorted(d.glob("*.parquet"))]
    counts, rows = UpsertCounts(), 0
    forget = ForgetList.load(layout.root)
    t0 = time.perf_counter()
    # batches span shard boundaries: bigger batches put more users of one bucket into one call
    for batch in prefetch(rebatch(read_batches(files, redis.publish_batch), redis.publish_batch)):
        if len(forget):
            batch = batch.filter(pa.array(~forget.mask(batch.column("user_id").to_numpy())))
            if not batch.num_rows:
                continue
        counts += publish_batch(store, model_version, batch, redis.dtype, redis.buckets)
        rows += batch.num_rows
        if on_rows:
            on_rows(batch.num_rows)
    seconds = time.perf_counter() - t0
    part = f"{shard:05d}" if shard is not None else "all"
    manifest = {
        "model": model_version,
        "as_of": as_of.isoformat(),
        "shard": part,
        "shards": [d.name for d in dirs],
        "rows": rows,
        "files": len(files),
        **counts.as_dict(),
        "dtype": store_dtype(store, model_version, redis.dtype),
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if rows:
        store.record_manifest(model_version, f"{stamp(as_of)}/{part}", manifest)
        _advance_last_as_of(store, model_version, as_of)
    log.info(
        "published %s as_of=%s shard %s: %d rows, %d written, %d unchanged, %d stale, %.1fs",
        model_version,
        stamp(as_of),
        part,
        rows,
        counts.written,
        counts.unchanged,
        counts.stale,
        seconds,
    )
    return {
        "model": model_version,
        "as_of": as_of.isoformat(),
        "shards": len(dirs),
        "rows": rows,
        **counts.as_dict(),
        "seconds": round(seconds, 3),
        "vectors_per_s": round(rows / seconds, 1) if seconds else None,
    }


def store_dtype(store: VectorStore, model_version: str, default: str) -> str:
    meta = store.model_meta(model_version)
    return meta.dtype if meta else default


def _advance_last_as_of(store: VectorStore, model_version: str, as_of: datetime) -> None:
    meta = store.model_meta(model_version)
    if meta is None:
        return
    last = meta.extra.get("last_as_of")
    if last is None or epoch_ms(utc(last)) < epoch_ms(as_of):
        store.update_meta(model_version, last_as_of=as_of.isoformat())
