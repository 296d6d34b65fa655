"""The forget list: users who asked to be forgotten, kept durably under the data root and read by every stage.

``soe forget`` records a **tombstone** ``(user_id, requested_at)`` per user before it touches anything
else, so a crash half-way leaves a forget that every later stage still honours. Tombstones are
append-only files::

    <root>/forget/tombstones-<YYYYMMDDTHHMMSSZ>-<uuid8>.parquet   user_id int64, requested_at ts[ms, UTC]

each written to a hidden temp name, fsynced and renamed into place (a reader sees a whole file or
none). `read_tombstones` merges them (one row per user, the earliest request); `ForgetList.load` gives
the sorted ids and a **digest** of them. A forget is permanent: events of a forgotten user that
arrive later are quarantined with reason ``forgotten`` (`core.validation`).

Who reads it: the validator (both `soe validate` and the Spark step), the hourly state update (drops
a forgotten user's sequence even without new events), the encoder's sequence sources, publish, the
graph (index and every list), recent positives, the query service (lookalike seeds and audiences),
and retention, which rewrites every older snapshot still holding a forgotten user (`scrub_files`,
`scrub_state`). A snapshot's marker records the ``forget_digest`` it was checked against, so a
snapshot is scanned again only when the list has grown.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import read_marker, write_marker
from core.contracts import TS

TOMBSTONES = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False), pa.field("requested_at", TS, nullable=False)],
    metadata={"soe.contract": "tombstones", "soe.contract_version": "1"},
)
EMPTY_DIGEST = "none"  # the digest of an empty forget list (and of a marker that never recorded one)
DIGEST_KEY = "forget_digest"


log = logging.getLogger("soe.forget")


def forget_root(root: Path | str) -> Path:
    """``<root>/forget``: the tombstone files."""
    return Path(root) / "forget"


def tombstone_files(root: Path | str) -> list[Path]:
    d = forget_root(root)
    return sorted(d.glob("tombstones-*.parquet")) if d.is_dir() else []


def record_tombstones(root: Path | str, user_ids, requested_at: datetime | None = None) -> Path | None:
    """Append one tombstone file for ``user_ids`` (atomic: temp file, fsync, rename); None when empty."""
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    if not len(ids):
        return None
    when = (requested_at or datetime.now(UTC)).astimezone(UTC)
    d = forget_root(root)
    d.mkdir(parents=True, exist_ok=True)
    ms = np.full(len(ids), int(when.timestamp() * 1000), dtype=np.int64)
    table = pa.Table.from_arrays([pa.array(ids), pa.array(ms).cast(TS)], schema=TOMBSTONES)
    final = d / f"tombstones-{when:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = d / f".{final.name}.tmp-{uuid.uuid4().hex}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(d)
    return final


def read_tombstones(root: Path | str) -> pa.Table:
    """Every tombstone, merged: one row per user with the earliest ``requested_at``, sorted by user."""
    files = tombstone_files(root)
    if not files:
        return TOMBSTONES.empty_table()
    table = pa.concat_tables([pq.read_table(f).select(TOMBSTONES.names).cast(TOMBSTONES) for f in files])
    merged = table.group_by("user_id", use_threads=False).aggregate([("requested_at", "min")])
    merged = merged.rename_columns(["user_id", "requested_at"]).sort_by("user_id")
    return merged.cast(TOMBSTONES)


def digest(ids: np.ndarray) -> str:
    """A short fingerprint of a sorted id set (``none`` when empty)."""
    if not len(ids):
        return EMPTY_DIGEST
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ForgetList:
    """The forgotten user ids (sorted, unique) and their digest."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def load(cls, root: Path | str) -> ForgetList:
        return cls(read_tombstones(root).column("user_id").to_numpy().astype(np.int64))

    @property
    def digest(self) -> str:
        return digest(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, user_ids) -> np.ndarray:
        """True where a user id is forgotten (any shape)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if not len(self.ids):
            return np.zeros(user_ids.shape, dtype=bool)
        return np.isin(user_ids, self.ids)

    def checked(self, marker_dir: Path) -> bool:
        """Whether the published directory's marker says it was checked against this very list."""
        try:
            return read_marker(marker_dir).get(DIGEST_KEY, EMPTY_DIGEST) == self.digest
        except FileNotFoundError:
            return False


def forgotten_ids(root: Path | str) -> np.ndarray:
    """The sorted forgotten user ids under ``root`` (empty when nobody is forgotten)."""
    return ForgetList.load(root).ids


# -- rewriting files that still hold a forgotten user ---------------------------------------------------


def _user_mask(column: pa.ChunkedArray | pa.Array, forget: ForgetList) -> np.ndarray:
    """Rows of a user_id column (int64, or text as in the quarantine) that belong to a forgotten user."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_integer(col.type):
        return forget.mask(col.fill_null(-1).to_numpy(zero_copy_only=False))
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    hit = pc.is_in(text, value_set=pa.array([str(int(i)) for i in forget.ids], pa.string()))
    return np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def null_rows(table: pa.Table, mask: np.ndarray, keep: tuple[str, ...]) -> pa.Table:
    """``table`` with every column except ``keep`` set to null on the rows of ``mask``."""
    if not mask.any():
        return table
    cond = pa.array(mask)
    cols = []
    for f in table.schema:
        col = table[f.name].combine_chunks()
        cols.append(col if f.name in keep else pc.if_else(cond, pa.scalar(None, f.type), col))
    return pa.Table.from_arrays(cols, schema=table.schema)


def scrub_files(
    paths: list[Path],
    forget: ForgetList,
    *,
    column: str = "user_id",
    null_keep: tuple[str, ...] | None = None,
) -> dict[Path, np.ndarray]:
    """Rewrite the Parquet files among ``paths`` that hold a forgotten user, without that user's data.

    The rows are dropped, or with ``null_keep`` (the quarantine) kept with every column but those nulled.
    Paths that are hard links of one file (state layers, active shards) are rewritten **once** and the
    new file is linked to every one of them, so the sharing survives. Each path is replaced atomically
    (a new file renamed over it). Returns, per rewritten path, the forgotten user ids it held.
    """
    if not len(forget):
        return {}
    groups: dict[tuple[int, int], list[Path]] = {}
    for p in paths:
        st = os.stat(p)
        groups.setdefault((st.st_dev, st.st_ino), []).append(Path(p))
    out: dict[Path, np.ndarray] = {}
    for group in groups.values():
        first = group[0]
        try:
            pf = pq.ParquetFile(first)
            if column not in pf.schema_arrow.names:
                continue
            ids = pq.read_table(first, columns=[column]).column(column)
        except (OSError, pa.ArrowException) as exc:  # a corrupt file: reported, never blocks the run
            log.warning("forget: %s is unreadable (%s) and could not be scrubbed", first, type(exc).__name__)
            continue
        hit = _user_mask(ids, forget)
        if not hit.any():
            continue
        table = pq.read_table(first)
        held = table.column(column).combine_chunks().filter(pa.array(hit))
        held = np.unique(held.to_numpy(zero_copy_only=False))
        if null_keep is None:
            table = table.filter(pa.array(~hit))
        else:
            table = null_rows(table, hit, null_keep)
        tmp = first.parent / f".{first.name}.tmp-{uuid.uuid4().hex}"
        pq.write_table(table, tmp)
        for p in group:
            link = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex}"
            try:
                os.link(tmp, link)
            except OSError:  # no hard links on this filesystem: a copy per path
                import shutil

                shutil.copy2(tmp, link)
            os.replace(link, p)
            out[p] = held
        tmp.unlink()
    return out


def scrub_state(path: Path, forget: ForgetList, per_file: dict[Path, np.ndarray] | None = None) -> dict:
    """Drop forgotten users from every layer of a published state snapshot (files rewritten in place,
    hard links kept shared); the marker's layer rows, ``state_users`` and digest are updated.

    ``per_file``: the result of a `scrub_files` call that already covered this snapshot's files (retention
    scrubs every state and active file in one call, so files linked across snapshots stay shared)."""
    from core.sequence_state import LAYOUT, StateSnapshot

    snap = StateSnapshot(path)
    files = [f for _, f in snap.files()]
    if per_file is None:
        per_file = scrub_files(files, forget)
    else:
        per_file = {f: per_file[f] for f in files if f in per_file}
    removed = np.unique(np.concatenate(list(per_file.values()))) if per_file else np.zeros(0, np.int64)
    manifest = dict(snap.manifest)
    if manifest.get("layout") == LAYOUT and per_file:
        layers = []
        for layer in snap.layers:
            dropped = sum(len(v) for f, v in per_file.items() if f.parent == snap.layer_dir(layer))
            layers.append({**layer.to_json(), "rows": max(0, layer.rows - dropped)})
        manifest["layers"] = layers
        if "state_users" in manifest:
            manifest["state_users"] = max(0, int(manifest["state_users"]) - len(removed))
    manifest[DIGEST_KEY] = forget.digest
    write_marker(path, manifest)
    return {"files": len(per_file), "users": int(len(removed))}


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
