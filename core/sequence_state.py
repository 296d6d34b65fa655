"""The sequence state snapshot: layers of sequence rows, where the newest layer holding a user wins.

Every known user's last N events as of ``T`` live in ``state/as_of=<T>/`` as a short stack of
*layers*, each a directory of sequence-contract Parquet files::

    state/as_of=<T>/
        _SUCCESS                    manifest: "layout": "layers/1", "layers": [oldest ... newest], ...
        layer=<T0>/part-*.parquet   base: every user known at T0 (a full build or a compaction)
        layer=<T1>/shard=*.parquet  delta: the users active in the hour ending at T1 (their new last N)
        ...
        layer=<T>/shard=*.parquet   delta of this hour: hard links of active/as_of=<T>/shard=*.parquet

A user's sequence is the row in the newest layer that holds the user; older rows of that user are
*superseded*. An hourly update therefore writes only the active users' new sequences (which it
writes anyway, as the encoder's active shards) and hard-links the unchanged files of the previous
snapshot, so its cost follows the new events and the active users, not the history. When the
deltas grow past `sequences.compact_*` the update writes a new base instead (a *compaction*).

Each snapshot directory is self-contained (hard links, not references), so deleting an old snapshot
never breaks a newer one, and a published snapshot is never modified. Rows carry the ``as_of`` of
the layer that wrote them; `StateSnapshot` readers set it to the snapshot's time, because every
sequence in the snapshot is complete as of ``T``.

A directory without a layered manifest (a plain Spark output, a training set, a test fixture) reads
as one base layer: its own Parquet files.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import read_marker
from core.contracts import SEQUENCE, TS
from core.layout import stamp, utc

log = logging.getLogger("soe.state")

LAYOUT = "layers/1"  # the value of "layout" in a layered snapshot's manifest
BASE, DELTA = "base", "delta"


def layer_name(as_of: datetime) -> str:
    """The directory of the layer written at ``as_of``: ``layer=20260101T0500Z``."""
    return f"layer={stamp(as_of)}"


def data_files(directory: Path) -> list[Path]:
    """The Parquet data files directly in ``directory`` (no markers, hidden or temp files)."""
    return sorted(p for p in Path(directory).glob("*.parquet") if not p.name.startswith((".", "_")))


def data_rows(directory: Path) -> int:
    """Rows in the data files of ``directory`` (Parquet footers only)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in data_files(directory))


@dataclass(frozen=True)
class Layer:
    name: str  # directory inside the snapshot ("." for a plain, unlayered directory)
    kind: str  # BASE | DELTA
    as_of: datetime | None  # when the layer was written (the as_of of its rows); None: a plain directory
    rows: int  # users in the layer

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, d: dict) -> Layer:
        return cls(d["name"], d["kind"], utc(d["as_of"]), int(d["rows"]))


class StateSnapshot:
    """A published state snapshot (or any directory of sequence files), read layer-aware."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"state snapshot {self.path} does not exist")
        try:
            self.manifest = read_marker(self.path)
        except FileNotFoundError:
            self.manifest = {}
        if self.manifest.get("layout") == LAYOUT:
            self.layers = [Layer.from_json(d) for d in self.manifest["layers"]]
            self.as_of: datetime | None = utc(self.manifest["as_of"])
        else:  # a plain directory of sequence files: one base layer
            files = data_files(self.path)
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            as_of = self.manifest.get("as_of") or (
                self.path.name[len("as_of=") :] if self.path.name.startswith("as_of=") else None
            )
            self.as_of = utc(as_of) if as_of else None
            self.layers = [Layer(".", BASE, self.as_of, rows)]

    # -- what is in it ------------------------------------------------------------------------
    @property
    def layered(self) -> bool:
        return self.manifest.get("layout") == LAYOUT

    @property
    def base_rows(self) -> int:
        return sum(layer.rows for layer in self.layers if layer.kind == BASE)

    @property
    def delta_rows(self) -> int:
        return sum(layer.rows for layer in self.layers if layer.kind == DELTA)

    @property
    def num_users(self) -> int:
        if "state_users" in self.manifest:
            return int(self.manifest["state_users"])
        return int(self.user_ids().size)

    def layer_dir(self, layer: Layer) -> Path:
        return self.path / layer.name

    def layer_files(self, layer: Layer) -> list[Path]:
        return data_files(self.layer_dir(layer))

    def files(self) -> list[tuple[int, Path]]:
        """(layer index, file) of every data file, oldest layer first."""
        return [(i, f) for i, layer in enumerate(self.layers) for f in self.layer_files(layer)]

    # -- superseded rows ------------------------------------------------------------------------
    @cached_property
    def _newer_ids(self) -> list[pa.Array | None]:
        """Per layer: the (unique) user ids of all newer layers, or None when there is no newer layer."""
        out: list[pa.Array | None] = [None] * len(self.layers)
        acc: list[pa.Array] = []
        for i in range(len(self.layers) - 1, -1, -1):
            out[i] = pc.unique(pa.concat_arrays(acc)) if acc else None
            ids = [
                pq.read_table(f, columns=["user_id"]).column("user_id").combine_chunks()
                for f in self.layer_files(self.layers[i])
            ]
            acc.extend(a.cast(pa.int64()) for a in ids if len(a))
        return out

    def current_rows(self, batch: pa.RecordBatch | pa.Table, layer_index: int):
        """The rows of ``batch`` (read from layer ``layer_index``) that no newer layer supersedes."""
        newer = self._newer_ids[layer_index]
        if newer is None or len(newer) == 0 or batch.num_rows == 0:
            return batch
        return batch.filter(pc.invert(pc.is_in(batch.column("user_id"), value_set=newer)))

    def with_as_of(self, batch: pa.RecordBatch | pa.Table):
        """``batch`` with ``as_of`` set to the snapshot's time (every sequence is complete as of T).

        Only for layered snapshots; a plain directory (e.g. a training set) keeps each row's own as_of."""
        if (
            not self.layered or self.as_of is None or "as_of" not in batch.schema.names
        ):  # plain dirs keep theirs
            return batch
        i = batch.schema.get_field_index("as_of")
        column = pa.array(np.full(batch.num_rows, int(self.as_of.timestamp() * 1000), dtype=np.int64)).cast(
            TS
        )
        return batch.set_column(i, pa.field("as_of", TS, nullable=False), column)

    def iter_file(
        self, layer_index: int, path: Path, batch_rows: int = 8192, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The current rows of one data file, in batches, ``as_of`` = the snapshot time."""
        pf = pq.ParquetFile(path)
        wanted = columns or [c for c in SEQUENCE.schema.names if c in pf.schema_arrow.names]
        read = wanted if "user_id" in wanted else ["user_id", *wanted]
        # one schema for every file (Spark and pyarrow writers differ in nullability), so batches concatenate
        schema = pa.schema(
            [
                SEQUENCE.schema.field(c) if c in SEQUENCE.schema.names else pf.schema_arrow.field(c)
                for c in wanted
            ]
        )
        for batch in pf.iter_batches(batch_size=batch_rows, columns=read):
            batch = self.with_as_of(self.current_rows(batch, layer_index))
            if batch.num_rows:
                yield pa.RecordBatch.from_arrays(
                    [batch.column(c).cast(schema.field(c).type) for c in wanted], schema=schema
                )

    def iter_batches(
        self, batch_rows: int = 8192, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        for i, path in self.files():
            yield from self.iter_file(i, path, batch_rows, columns)

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """Every current row (one per user) as one table. For tests and small snapshots."""
        parts = []
        for i, path in self.files():
            table = pq.read_table(
                path, columns=columns if columns is None or "user_id" in columns else ["user_id", *columns]
            )
            parts.append(self.with_as_of(self.current_rows(table, i)))
        if not parts:
            return (
                SEQUENCE.schema.empty_table()
                if columns is None
                else SEQUENCE.schema.empty_table().select(columns)
            )
        table = pa.concat_tables(parts, promote_options="permissive")
        return table if columns is None else table.select(columns)

    def user_ids(self) -> np.ndarray:
        """Every user id in the snapshot, each once."""
        table = self.read_table(columns=["user_id"])
        return table.column("user_id").to_numpy() if table.num_rows else np.zeros(0, dtype=np.int64)


def read_state(path: Path | str) -> pa.Table:
    """The current sequence rows of a state snapshot, or of any file/directory of sequence rows."""
    path = Path(path)
    if path.is_file():
        return pq.read_table(path)
    return StateSnapshot(path).read_table()


def link_files(files: list[Path], target_dir: Path) -> int:
    """Hard-link ``files`` into ``target_dir`` (same names); copy where the filesystem cannot link.

    Returns how many were copied instead of linked (0 on a local/POSIX data root).
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    for f in files:
        dst = target_dir / f.name
        try:
            os.link(f, dst)
        except OSError as exc:  # another filesystem, or no hard links (some FUSE/object mounts)
            if copied == 0:
                log.warning("cannot hard-link %s (%s): copying state files instead", f, exc)
            shutil.copy2(f, dst)
            copied += 1
    return copied
