"""The batch inference engine: sequence shards in, embedding shards out, one worker per shard.

One worker (`encode_shard`) does, in bounded memory::

    SequenceSource.windows()          Parquet iter_batches, W users at a time      (reader.py)
      -> plan_batches(lengths)        sort the window by length, cut by token budget (batching.py)
      -> featurize(rows)              hashed ids, action, time buckets; left-padded to the batch's
                                      longest user, pinned when on GPU             (encoder.features)
      -> forward(batch)               the transformer along ``inference.path`` (paths.py; default: the
                                      last block only at the newest position, fastpath.py) under
                                      inference_mode (+ bf16/fp16 autocast on GPU), non_blocking
                                      host->device copies                          (BatchEncoder)
      -> ShardWriter                  float16 unit vectors, original row order, one row group per
                                      window, published atomically               (writer.py)

On a GPU, featurisation runs in a loader thread (`loader.prefetch`) that stays ``prefetch_batches``
ahead of the device, so host work overlaps device work (numpy, pyarrow and torch release the GIL in
their kernels). On the CPU, one worker thread per available core featurises and encodes whole
batches with one intra-op thread each (see `BatchEncoder`); ``torch.compile`` is optional (off by
default: measured in ``bench.inference``). `encode_all` runs every shard of a snapshot in one
process and marks the snapshot complete; a cluster runs `encode_shard` once per shard instead (one
GPU each).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import torch

from core.atomic import is_complete, read_marker
from core.embeddings import mark_snapshot
from core.layout import Layout, utc
from core.progress import progress as progress_bar
from encoder.artifact import load_model
from encoder.device import DeviceChoice, autocast, autocast_dtype, select_device
from encoder.features import featurize
from encoder.inference.batching import BatchPlan, plan_batches
from encoder.inference.device import (
    activation_bytes_per_token,
    available_cores,
    batch_token_budget,
    configure_threads,
)
from encoder.inference.loader import prefetch
from encoder.inference.paths import forward_for, resolve_path
from encoder.inference.reader import open_source, source_num_shards
from encoder.inference.settings import InferenceSettings, Source
from encoder.inference.writer import open_shard, shard_dir
from encoder.model import UserEncoder

log = logging.getLogger("soe.inference")


@dataclass
class EncodeStats:
    users: int = 0  # vectors produced
    tokens: int = 0  # real (non-padded) events encoded
    padded_tokens: int = 0  # tokens actually computed, padding included
    batches: int = 0  # forward passes

    @classmethod
    def of(cls, plan: BatchPlan) -> EncodeStats:
        return cls(len(plan.rows), plan.tokens, len(plan.rows) * plan.padded_len, 1)

    def add(self, other: EncodeStats) -> None:
        self.users += other.users
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.batches += other.batches


class BatchEncoder:
    """A loaded model on its device, encoding SEQUENCE windows in length-bucketed batches.

    Two schedules, same vectors:

    * **stream** (GPU, or ``cpu_workers=1``): one batch at a time on the device; a loader thread
      featurises (and pins) the next batches meanwhile. On the CPU the batch uses ``threads`` cores.
    * **batch-parallel** (CPU default): ``cpu_workers`` threads (one per core) each featurise and
      encode whole batches with one intra-op thread. Small d = 64 ops split over cores spend their
      time in OpenMP barriers, which collapse when the host is shared; independent batches do not.
    """

    def __init__(self, model: UserEncoder, choice: DeviceChoice, settings: InferenceSettings):
        self.model, self.cfg, self.choice, self.settings = model.eval(), model.cfg, choice, settings
        cfg = model.cfg
        self.device = choice.device
        self.workers = 1 if choice.is_cuda else (settings.cpu_workers or available_cores())
        if choice.is_cuda:
            self.threads = torch.get_num_threads()
        elif self.workers == 1:
            self.threads = configure_threads(settings.threads)
        else:
            self.threads = 1  # per worker thread (OpenMP thread counts are per thread: see _batch_parallel)
        self.amp_dtype = autocast_dtype(self.device, settings.gpu_dtype)
        per_token = activation_bytes_per_token(cfg.d_model, cfg.n_heads, cfg.max_len, cfg.mlp_ratio)
        self.max_batch_tokens = batch_token_budget(
            settings.max_batch_tokens,
            self.device,
            per_token,
            settings.memory_fraction / self.workers,
            min_tokens=cfg.max_len,
        )
        self.path = resolve_path(cfg, settings.path)  # the one switch between the inference paths
        self.forward: Callable = forward_for(model, self.path)
        if settings.compile:
            self.forward = torch.compile(self.forward, dynamic=True)
        log.info(
            "encoder on %s: workers=%d threads=%d autocast=%s max_batch_tokens=%d path=%s attention=%s "
            "compile=%s",
            self.device,
            self.workers,
            self.threads,
            self.amp_dtype,
            self.max_batch_tokens,
            self.path,
            model.attention,
            settings.compile,
        )

    @classmethod
    def load(cls, layout: Layout, inference: InferenceSettings, model_version: str) -> BatchEncoder:
        """Load a published model of ``layout`` for inference under the ``inference`` section."""
        choice = select_device(inference.device, strict=inference.strict_device, purpose="inference")
        model, _cfg, _meta = load_model(layout, model_version, device=choice.device)
        return cls(model, choice, inference)

    # -- host side ----------------------------------------------------------------------------
    def lengths(self, window: pa.Table) -> np.ndarray:
        """(W,) events each user will keep (the sequence lists' lengths, capped at max_len)."""
        offsets = window["item_id"].combine_chunks().offsets.to_numpy()
        return np.minimum(np.diff(offsets), self.cfg.max_len)

    def plan(self, window: pa.Table) -> list[BatchPlan]:
        return plan_batches(self.lengths(window), self.max_batch_tokens)

    def featurize(self, window: pa.Table, plan: BatchPlan, as_of: datetime):
        """The featurised batch of one plan (left-padded to its longest user; pinned for a GPU)."""
        batch = featurize(window.take(pa.array(plan.rows)), self.cfg, as_of=as_of)
        return batch.pin_memory() if self.choice.is_cuda else batch

    def _stream_items(self, windows: Iterable[pa.Table], as_of: datetime) -> Iterator[tuple]:
        """("batch", plan, featurised batch) for each batch of a window, then ("window", window).

        With ``loader_workers > 1`` the batches of a window are featurised by that many threads
        (in order): one thread featurises ~30k users/s, less than a GPU encodes.
        """
        pool = ThreadPoolExecutor(self.settings.loader_workers) if self.settings.loader_workers > 1 else None
        try:
            for window in windows:
                plans = self.plan(window)
                if pool is None:
                    batches = (self.featurize(window, plan, as_of) for plan in plans)
                else:
                    batches = pool.map(functools.partial(self.featurize, window, as_of=as_of), plans)
                for plan, batch in zip(plans, batches, strict=True):
                    yield "batch", plan, batch
                yield "window", window, None
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    # -- device side --------------------------------------------------------------------------
    def encode_batch(self, batch) -> torch.Tensor:
        """(B, D) float32 unit vectors of one featurised batch, on the device."""
        batch = batch.to(self.device, non_blocking=self.choice.is_cuda)
        with autocast(self.device, self.amp_dtype):
            vectors = self.forward(batch)  # (B, D)
        return torch.nn.functional.normalize(vectors.float(), dim=-1)

    def encode_adaptive(self, batch) -> torch.Tensor:
        """`encode_batch`, splitting the batch in halves (and lowering the token budget) when out of memory.

        The budget from free memory is an estimate; allocator fragmentation or a neighbour process
        can still exhaust a GPU. Halving costs a retry of one batch, and later batches are planned
        with the lower budget, so a worker degrades instead of failing.
        """
        try:
            return self.encode_batch(batch)
        except torch.OutOfMemoryError:
            if len(batch) <= 1:
                raise
            if self.choice.is_cuda:
                torch.cuda.empty_cache()
            self.max_batch_tokens = max(self.cfg.max_len, self.max_batch_tokens // 2)
            log.warning(
                "out of memory on a batch of %d users: splitting it, token budget now %d",
                len(batch),
                self.max_batch_tokens,
            )
            half = len(batch) // 2
            first = self.encode_adaptive(batch.select(torch.arange(half)))
            return torch.cat([first, self.encode_adaptive(batch.select(torch.arange(half, len(batch))))])

    def encode_windows(
        self, windows: Iterable[pa.Table], as_of: datetime, on_batch: Callable[[int], None] | None = None
    ) -> Iterator[tuple[pa.Table, np.ndarray, EncodeStats]]:
        """For each window: (window, (W, D) float32 vectors in the window's row order, stats)."""
        if self.workers > 1:
            return self._batch_parallel(windows, as_of, on_batch)
        return self._stream(windows, as_of, on_batch)

    @torch.inference_mode()
    def _stream(self, windows, as_of, on_batch) -> Iterator[tuple[pa.Table, np.ndarray, EncodeStats]]:
        items = self._stream_items(windows, as_of)
        if self.settings.loader_thread:
            items = prefetch(items, self.settings.prefetch_batches)
        done, stats = [], EncodeStats()  # the current window's (rows, vectors) so far
        for kind, item, batch in items:
            if kind == "batch":
                done.append(
                    (torch.as_tensor(item.rows, device=self.device), self.encode_adaptive(batch))
                )  # (B,), (B, D)
                stats.add(EncodeStats.of(item))
                if on_batch:
                    on_batch(len(item.rows))
            else:  # the window is complete: restore its row order
                result = torch.empty(item.num_rows, self.cfg.d_model, device=self.device)  # (W, D)
                for rows, vectors in done:
                    result[rows] = vectors
                yield item, result.cpu().numpy(), stats
                done, stats = [], EncodeStats()

    def _batch_parallel(self, windows, as_of, on_batch) -> Iterator[tuple[pa.Table, np.ndarray, EncodeStats]]:
        def one_thread() -> None:
            torch.set_num_threads(1)

        def job(window: pa.Table, plan: BatchPlan) -> tuple[BatchPlan, torch.Tensor]:  # in a worker thread
            with torch.inference_mode():
                return plan, self.encode_adaptive(self.featurize(window, plan, as_of))

        if self.settings.loader_thread:
            windows = prefetch(windows, 1)  # read the next window while this one is encoded
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="soe-encode", initializer=one_thread)
        try:
            for window in windows:
                plans = sorted(self.plan(window), key=lambda p: -len(p.rows) * p.padded_len)  # biggest first
                result = np.empty((window.num_rows, self.cfg.d_model), dtype=np.float32)  # (W, D)
                stats = EncodeStats()
                for plan, vectors in pool.map(functools.partial(job, window), plans):
                    result[plan.rows] = vectors.numpy()
                    stats.add(EncodeStats.of(plan))
                    if on_batch:
                        on_batch(len(plan.rows))
                yield window, result, stats
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error, drop the window's queued batches

    def encode_table(self, table: pa.Table, as_of: datetime, window_users: int | None = None) -> np.ndarray:
        """(R, D) float32 vectors of a whole in-memory SEQUENCE table, in row order (tests, benches)."""
        w = window_users or self.settings.window_users
        windows = (table.slice(i, w) for i in range(0, table.num_rows, w))
        parts = [vectors for _window, vectors, _stats in self.encode_windows(windows, as_of)]
        return np.concatenate(parts) if parts else np.zeros((0, self.cfg.d_model), np.float32)


def _n_events(window: pa.Table) -> np.ndarray:
    return window["n_events"].to_numpy().astype(np.int32)


def encode_with(
    encoder: BatchEncoder,
    layout: Layout,
    model_version: str,
    as_of: datetime,
    shard: int,
    *,
    num_shards: int | None = None,
    source: Source = "active",
    progress: bool = False,
) -> dict:
    """`encode_shard` with an already loaded encoder (so `encode_all` loads the model once)."""
    as_of = utc(as_of)
    cfg, inference = encoder.cfg, encoder.settings
    src = open_source(layout, as_of, shard, num_shards=num_shards, source=source, split=inference.state_split)
    t0 = time.perf_counter()
    total = EncodeStats()
    manifest = {
        "model_version": model_version,
        "as_of": as_of.isoformat(),
        "shard": shard,
        "dim": cfg.d_model,
        "device": str(encoder.device),
        "device_reason": encoder.choice.reason,
        "path": encoder.path,
        "source": src.describe(),
    }
    bar = progress_bar(src.num_rows, f"encode shard {shard}", unit="user") if progress else None
    try:
        with open_shard(layout, model_version, as_of, shard, cfg.d_model, manifest) as writer:
            windows = src.windows(inference.window_users)
            on_batch = bar.update if bar is not None else None
            for window, vectors, stats in encoder.encode_windows(windows, as_of, on_batch=on_batch):
                writer.write(window["user_id"].to_numpy(), vectors, _n_events(window))
                total.add(stats)
            seconds = time.perf_counter() - t0
            manifest.update(
                seconds=round(seconds, 3),
                tokens=total.tokens,
                padded_tokens=total.padded_tokens,
                batches=total.batches,
                users_per_s=round(total.users / seconds, 1) if seconds > 0 else None,
            )
    finally:
        if bar is not None:
            bar.close()
    log.info(
        "encoded shard %d of %s at %s: %d users in %.1fs",
        shard,
        model_version,
        as_of,
        manifest["users"],
        seconds,
    )
    return manifest


def encode_shard(
    layout: Layout,
    inference: InferenceSettings,
    model_version: str,
    as_of: datetime,
    shard: int,
    *,
    num_shards: int | None = None,
    source: Source = "active",
    progress: bool = False,
) -> dict:
    """Encode one shard of (model, as_of); publish ``embeddings/<model>/as_of=T/shard=i``; its manifest.

    ``source="active"``: the pipeline's hourly active-user shard i. ``source="state"``: part i of
    ``num_shards`` of the full state snapshot (backfill of a new model). Idempotent: a rerun replaces
    the shard with the same vectors; a crash publishes nothing.
    """
    encoder = BatchEncoder.load(layout, inference, model_version)
    return encode_with(
        encoder, layout, model_version, as_of, shard, num_shards=num_shards, source=source, progress=progress
    )


def encode_all(
    layout: Layout,
    inference: InferenceSettings,
    model_version: str,
    as_of: datetime,
    *,
    source: Source = "active",
    num_shards: int | None = None,
    progress: bool = False,
    resume: bool = False,
) -> list[dict]:
    """Every shard of (model, as_of) in this process (model loaded once), then the snapshot marker.

    ``resume``: keep shards already published by an earlier run of the same (model, as_of, source,
    shard count), e.g. after a crash half-way through a backfill, and encode only the others.
    """
    as_of = utc(as_of)
    n = source_num_shards(layout, as_of, source, num_shards)
    encoder = BatchEncoder.load(layout, inference, model_version)
    manifests = []
    for i in range(n):
        done = _published_manifest(layout, model_version, as_of, i) if resume else None
        if (
            done is not None
            and done.get("source", {}).get("source") == source
            and done["source"].get("num_shards") == n
        ):
            log.info("shard %d of %s at %s already published: kept (resume)", i, model_version, as_of)
            manifests.append(done)
            continue
        manifests.append(
            encode_with(
                encoder, layout, model_version, as_of, i, num_shards=n, source=source, progress=progress
            )
        )
    mark_snapshot(layout, model_version, as_of, n)
    return manifests


def _published_manifest(layout, model_version: str, as_of: datetime, shard: int) -> dict | None:
    path = shard_dir(layout, model_version, as_of, shard)
    return read_marker(path) if is_complete(path) else None
