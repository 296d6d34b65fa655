"""Streaming, bounded-memory readers of the sequences one inference worker encodes.

A worker never holds more than one *window* of users (``inference.window_users`` rows) in memory: the
Parquet files are read with ``ParquetFile.iter_batches`` and re-cut into windows, which the engine
sorts by length into batches (see `encoder.inference.batching`).

Two sources, one small interface (`SequenceSource`: ``windows(n)``, ``num_rows``, ``describe``):

* ``active``: the hourly path. The pipeline publishes ``active/as_of=T/`` (``_SUCCESS`` manifest with
  ``num_shards``) holding K balanced files ``shard=iiiii.parquet``; worker i reads file i.
* ``state``: the backfill path (a new model encodes every known user). ``state/as_of=T/`` is a
  layered snapshot (`core.sequence_state`: a base plus hourly deltas, the newest layer holding a user
  wins; superseded rows are dropped while reading). Its files are split over ``num_shards`` workers
  either by file (worker i reads files i, i+n, ... : each byte read once, balanced when there are
  many files) or by a hash of ``user_id`` (balanced for any file count, but every worker scans every
  file). ``state_split=auto`` picks files when there are at least as many files as workers.

Both sources skip the users on the forget list (`core.forget`, read from the data root when the source
is opened): a forgotten user is never encoded, even from a snapshot written before the forget.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete, read_marker
from core.contracts import SEQUENCE, ContractError, conform
from core.forget import ForgetList
from core.hashing import splitmix64
from core.layout import Layout
from core.sequence_state import StateSnapshot

log = logging.getLogger("soe.inference")

SOURCES = ("active", "state")


def user_hash(user_ids: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of int64 user ids (`core.hashing.splitmix64`): the shard of a user is hash % n."""
    return splitmix64(user_ids)


class SequenceSource(ABC):
    """The sequences (SEQUENCE contract) one worker encodes, streamed in windows of rows."""

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Rows this source will yield (an estimate is fine for progress bars)."""

    @abstractmethod
    def windows(self, window_users: int) -> Iterator[pa.Table]:
        """Yield SEQUENCE-contract tables of at most ``window_users`` rows, never the whole source."""

    @abstractmethod
    def describe(self) -> dict:
        """What was read (for the shard manifest)."""


def _check_file(path: Path) -> pq.ParquetFile:
    pf = pq.ParquetFile(path)
    try:
        SEQUENCE.check_version(pf.schema_arrow)
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from None
    missing = [c for c in SEQUENCE.required if c not in pf.schema_arrow.names]
    if missing:
        raise ContractError(f"{path} is not a sequence file: missing column(s) {missing}")
    return pf


def _rewindow(batches: Iterator[pa.RecordBatch], window_users: int) -> Iterator[pa.Table]:
    """Re-cut a stream of record batches into tables of exactly ``window_users`` rows (last may be short)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        while batch.num_rows:
            take = min(batch.num_rows, window_users - rows)
            pending.append(batch.slice(0, take))
            rows += take
            batch = batch.slice(take)
            if rows == window_users:
                yield pa.Table.from_batches(pending)
                pending, rows = [], 0
    if rows:
        yield pa.Table.from_batches(pending)


@dataclass
class ParquetSequenceSource(SequenceSource):
    """Rows of some Parquet files, optionally only those whose ``user_hash % num_shards == shard``."""

    files: list[Path]  # read in this order
    hash_shard: tuple[int, int] | None = None  # (shard, num_shards) filter, or None for every row
    read_batch_rows: int = 8192  # Parquet batch size (the unit of streaming)
    info: dict = field(default_factory=dict)  # extra manifest fields
    forget: ForgetList = field(default_factory=ForgetList)  # users never encoded (`core.forget`)

    def __post_init__(self) -> None:
        self._parquet = [_check_file(f) for f in self.files]

    @property
    def num_rows(self) -> int:
        total = sum(pf.metadata.num_rows for pf in self._parquet)
        return total if self.hash_shard is None else -(-total // self.hash_shard[1])

    def _file_batches(self) -> Iterator[pa.RecordBatch]:
        """Every row of the files, in Parquet batches."""
        for pf in self._parquet:
            columns = [c for c in SEQUENCE.schema.names if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=self.read_batch_rows, columns=columns)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self._file_batches():
            if self.hash_shard is not None:
                shard, n = self.hash_shard
                uid = batch.column("user_id").to_numpy(zero_copy_only=False)
                keep = (user_hash(uid) % np.uint64(n)) == np.uint64(shard)
                batch = batch.filter(pa.array(keep))
            if len(self.forget) and batch.num_rows:
                gone = self.forget.mask(batch.column("user_id").to_numpy(zero_copy_only=False))
                if gone.any():
                    batch = batch.filter(pa.array(~gone))
            if batch.num_rows:
                yield batch

    def windows(self, window_users: int) -> Iterator[pa.Table]:
        if window_users <= 0:
            raise ValueError(f"inference.window_users must be positive, got {window_users}")
        for window in _rewindow(self._batches(), window_users):
            yield conform(window, SEQUENCE)

    def describe(self) -> dict:
        return {"files": [str(f) for f in self.files], "hash_shard": self.hash_shard, **self.info}


@dataclass
class StateSequenceSource(ParquetSequenceSource):
    """Some files of a layered state snapshot: rows superseded by a newer layer are skipped and every
    row's ``as_of`` is the snapshot's time. ``num_rows`` counts superseded rows too (an upper bound)."""

    snapshot: StateSnapshot | None = None
    layer_of: dict[Path, int] = field(default_factory=dict)  # file -> index of its layer

    def _file_batches(self) -> Iterator[pa.RecordBatch]:
        for path in self.files:
            yield from self.snapshot.iter_file(self.layer_of[path], path, self.read_batch_rows)


def _published(path: Path, what: str) -> dict:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} {path} does not exist: run the sequence pipeline for this as_of first"
        )
    if not is_complete(path):
        raise FileNotFoundError(
            f"{what} {path} is not published (no _SUCCESS marker): its writer has not finished"
        )
    return read_marker(path)


def active_source(
    layout: Layout, as_of: datetime, shard: int, num_shards: int | None = None
) -> SequenceSource:
    """Worker ``shard`` of the hourly active-user shards published by the pipeline."""
    root = layout.active(as_of)
    manifest = _published(root, "active-user snapshot")
    published = manifest.get("num_shards")
    if published is None:
        published = len(list(root.glob("shard=*.parquet")))
    published = int(published)
    if num_shards is not None and num_shards != published:
        raise ValueError(
            f"--num-shards {num_shards} does not match the {published} shard(s) published in {root}"
        )
    if not 0 <= shard < published:
        raise ValueError(
            f"shard {shard} is out of range: {root} has {published} shard(s) (0..{published - 1})"
        )
    path = layout.active_shard(as_of, shard)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing although {root} is published with {published} shard(s)")
    return ParquetSequenceSource(
        [path], info={"source": "active", "num_shards": published}, forget=ForgetList.load(layout.root)
    )


def state_source(
    layout: Layout, as_of: datetime, shard: int, num_shards: int | None = None, split: str = "auto"
) -> SequenceSource:
    """Worker ``shard`` of ``num_shards`` over the full state snapshot (every known user)."""
    root = layout.state(as_of)
    _published(root, "state snapshot")
    n = 1 if num_shards is None else int(num_shards)
    if n <= 0 or not 0 <= shard < n:
        raise ValueError(f"shard {shard} is out of range for --num-shards {n}")
    snapshot = StateSnapshot(root)
    layer_of = {path: i for i, path in snapshot.files()}
    files = list(layer_of)
    if split not in ("auto", "files", "hash"):
        raise ValueError(f"inference.state_split {split!r}: use auto, files or hash")
    if split == "auto":
        split = "files" if len(files) >= n else "hash"
    info = {"source": "state", "num_shards": n, "split": split, "layers": len(snapshot.layers)}
    forget = ForgetList.load(layout.root)
    if n == 1 or split == "files":
        return StateSequenceSource(
            files[shard::n], info=info, snapshot=snapshot, layer_of=layer_of, forget=forget
        )
    return StateSequenceSource(
        files, hash_shard=(shard, n), info=info, snapshot=snapshot, layer_of=layer_of, forget=forget
    )


def open_source(
    layout: Layout,
    as_of: datetime,
    shard: int,
    *,
    num_shards: int | None = None,
    source: str = "active",
    split: str = "auto",
) -> SequenceSource:
    """The sequences of one worker: ``source`` is ``active`` (hourly) or ``state`` (backfill)."""
    if source == "active":
        return active_source(layout, as_of, shard, num_shards)
    if source == "state":
        return state_source(layout, as_of, shard, num_shards, split)
    raise ValueError(f"source {source!r}: use one of {SOURCES}")


def source_num_shards(layout: Layout, as_of: datetime, source: str, num_shards: int | None = None) -> int:
    """How many shards a full encoding of this snapshot has (the active manifest's K, or ``num_shards``)."""
    if source == "active":
        return int(
            _published(layout.active(as_of), "active-user snapshot").get("num_shards")
            or len(list(layout.active(as_of).glob("shard=*.parquet")))
        )
    _published(layout.state(as_of), "state snapshot")
    return int(num_shards or 1)
