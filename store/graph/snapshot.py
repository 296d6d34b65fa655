"""One published graph: ``graph/<model>/as_of=<T>/`` and how to read it back.

::

    neighbours.parquet   the kNN graph (neighbours contract), one row per user, rows in user-id order
    ids.npy              (N,) int64 user ids, sorted: the users the graph covers
    vectors.npy          (N, D) float32 L2-normalised vectors those users had at this as_of
    index.faiss          the CPU form of the FAISS index (user ids inside), ready for incremental updates
    next_scores.npy      (N,) float32 each list's bar: the score an outsider must beat (its (k+B+1)-th
                         score, raised when an incremental build evicts an entry)
    spare_ids.npy        (N, B) int64 the spare entries k+1 .. k+B of each list (-1 padded), only when
    spare_scores.npy     (N, B) float32  graph.spare_neighbours B > 0; never served (see below)
    changed_ids.npy      (C,) int64 the users whose lists this build changed (all users on a full build)
    exact_sample.npz     the calibration and recall samples' exact lists, carried to the next build
                         (store.graph.exact_sample)
    _SUCCESS             the manifest: N, k, index params, recall@k, build time, model, as_of, mode, accepted

**Spare neighbours.** With ``graph.spare_neighbours`` B > 0 a build keeps k + B entries per list so
that the next incremental hour can drop moved entries without searching the row again (store.graph.
incremental `thin`). ``neighbours.parquet`` still holds exactly the top k (the neighbours contract is
unchanged, every reader sees k as before); the B spare entries lie beside it in two arrays, and the
manifest records B (``spare_neighbours``; absent = 0: older snapshots load with no spare entries).

**Accepted.** A flow builds the hour's graph before it has judged it (``accepted: false`` in the
manifest) and marks it accepted (`accept_snapshot`) only once its checks pass. Every reader — the query
service, lookalike, the next incremental build — lists accepted snapshots only (`graph_times`), so a
rejected graph is never served nor built upon. Snapshots without the key (offline `soe graph` builds,
older snapshots) are accepted.

**Forget.** `scrub_snapshot` rewrites a snapshot without the forgotten users (`core.forget`): their rows,
vectors and index entries go, every list that named one is searched again on the scrubbed index (so
it is full and exact again) and joins ``changed_ids``. ``soe forget`` does it to each model's newest
snapshot at once (and writes the re-searched lists to the store); retention does it to the older ones.

Keeping the vectors beside the index makes the snapshot self-contained: the next hourly build updates
it without re-reading 48 hours of embedding snapshots, and lookalike scores seeds against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import is_complete, publish_dir, read_marker, write_marker
from core.contracts import NEIGHBOURS
from core.forget import DIGEST_KEY, ForgetList
from core.layout import Layout, snapshot_times, utc
from store.graph.exact_sample import ExactSample
from store.graph.index import IndexSpec, load_index, save_index
from store.graph.knn import PAD, neighbours_from_table, neighbours_table, search_neighbours
from store.graph.vectors import CHUNK_ROWS, UserVectors

NEIGHBOURS_FILE = "neighbours.parquet"
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
INDEX_FILE = "index.faiss"
NEXT_FILE = "next_scores.npy"
CHANGED_FILE = "changed_ids.npy"
SPARE_IDS_FILE = "spare_ids.npy"
SPARE_SCORES_FILE = "spare_scores.npy"


def write_snapshot(
    tmp: Path,
    uv: UserVectors,
    nbr_ids: np.ndarray,
    nbr_scores: np.ndarray,
    next_scores: np.ndarray,
    index,
    model_version: str,
    as_of: datetime,
    changed_rows: np.ndarray | None = None,
    chunk: int = CHUNK_ROWS,
    k: int | None = None,
    exact: ExactSample | None = None,
) -> None:
    """Write the files of a snapshot into ``tmp`` (the caller publishes the directory atomically).

    The neighbours table is written ``chunk`` rows at a time, one row group each: neither the whole
    Arrow table nor its encoded file is ever held in memory, and readers can stream it back. Lists
    wider than ``k`` (default: their width) keep their first k entries there and the rest, the spare
    entries, in ``spare_ids.npy`` / ``spare_scores.npy``."""
    k = nbr_ids.shape[1] if k is None else k
    if nbr_ids.shape[1] > k:
        np.save(tmp / SPARE_IDS_FILE, nbr_ids[:, k:])
        np.save(tmp / SPARE_SCORES_FILE, nbr_scores[:, k:])
        nbr_ids, nbr_scores = nbr_ids[:, :k], nbr_scores[:, :k]
    with pq.ParquetWriter(tmp / NEIGHBOURS_FILE, NEIGHBOURS.schema) as writer:
        for lo in range(0, max(len(uv), 1), chunk):
            sl = slice(lo, lo + chunk)
            table = neighbours_table(uv.ids[sl], nbr_ids[sl], nbr_scores[sl], model_version, as_of)
            writer.write_table(table, row_group_size=chunk)
    np.save(tmp / IDS_FILE, uv.ids)
    np.save(tmp / VECTORS_FILE, uv.vectors)
    np.save(tmp / NEXT_FILE, next_scores.astype(np.float32))
    save_index(index, tmp / INDEX_FILE)
    np.save(tmp / CHANGED_FILE, uv.ids if changed_rows is None else uv.ids[changed_rows])
    if exact is not None:
        exact.save(tmp)


@dataclass
class GraphSnapshot:
    path: Path

    @cached_property
    def manifest(self) -> dict:
        return read_marker(self.path)

    @property
    def as_of(self) -> datetime:
        return utc(self.manifest["as_of"])

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def spare(self) -> int:
        """Spare entries kept per list beyond k (0 for snapshots older than ``graph.spare_neighbours``)."""
        return int(self.manifest.get("spare_neighbours", 0))

    @property
    def spec(self) -> IndexSpec:
        return IndexSpec(**self.manifest["index"])

    @property
    def n_users(self) -> int:
        """Users in the graph, from the manifest (no array is read)."""
        n = self.manifest.get("n_users")
        return int(n) if n is not None else len(np.load(self.path / IDS_FILE, mmap_mode="r"))

    @property
    def dim(self) -> int:
        """The vectors' width, from the manifest (no array is read)."""
        dim = self.manifest.get("dim")
        return int(dim) if dim is not None else int(np.load(self.path / VECTORS_FILE, mmap_mode="r").shape[1])

    @cached_property
    def vectors(self) -> UserVectors:
        return UserVectors(np.load(self.path / IDS_FILE), np.load(self.path / VECTORS_FILE))

    def drop_vectors(self) -> None:
        """Forget the cached `vectors` (a build that merged them into new ones frees the old copy);
        the next access reads them again."""
        self.__dict__.pop("vectors", None)

    def index(self):
        """A fresh CPU copy of the saved index (callers may mutate it)."""
        return load_index(self.path / INDEX_FILE, self.spec)

    def next_scores(self) -> np.ndarray:
        """(N,) the (k+1)-th score of each list (+inf when unknown: every drop then forces a re-search)."""
        path = self.path / NEXT_FILE
        return np.load(path) if path.is_file() else np.full(len(self.vectors), np.inf, np.float32)

    def searcher(self):
        """What to call ``.search(x, k)`` on for exact-scored results: the index, re-ranked for ivf_pq."""
        from store.graph.index import searcher

        return searcher(self.index(), self.spec, self.vectors)

    def exact_sample(self) -> ExactSample | None:
        """The calibration and recall samples' exact lists at this snapshot (None for older ones)."""
        return ExactSample.load(self.path)

    def changed_ids(self) -> np.ndarray:
        """The users whose lists this build changed (every user for snapshots older than the file)."""
        path = self.path / CHANGED_FILE
        return np.load(path) if path.is_file() else self.vectors.ids

    def neighbours(self, chunk: int = CHUNK_ROWS, spare: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(nbr_ids (N, k), scores (N, k)) row-aligned with ``vectors.ids``, read ``chunk`` rows at a
        time into the two arrays (the Arrow table of every list is never materialised). With ``spare``
        (the incremental build) the lists are k + `spare` wide: the spare entries follow the top k."""
        file = pq.ParquetFile(self.path / NEIGHBOURS_FILE, pre_buffer=False)  # one row group at a time
        NEIGHBOURS.check_version(file.schema_arrow)
        n, k = file.metadata.num_rows, self.k
        extra = self.spare if spare else 0
        user_ids = np.empty(n, np.int64)
        ids = np.full((n, k + extra), PAD, dtype=np.int64)
        scores = np.full((n, k + extra), -np.inf, dtype=np.float32)
        if extra:
            ids[:, k:] = np.load(self.path / SPARE_IDS_FILE, mmap_mode="r")
            scores[:, k:] = np.load(self.path / SPARE_SCORES_FILE, mmap_mode="r")
        top_ids, top_scores = ids[:, :k], scores[:, :k]
        lo = 0
        for batch in file.iter_batches(batch_size=chunk, columns=["user_id", "neighbor_ids", "scores"]):
            hi = lo + batch.num_rows
            part = pa.Table.from_batches([batch])
            user_ids[lo:hi], top_ids[lo:hi], top_scores[lo:hi] = neighbours_from_table(part, k)
            lo = hi
        pa.default_memory_pool().release_unused()  # the decoded batches' pages, kept by the allocator
        if lo != n or not np.array_equal(user_ids, self.vectors.ids):
            raise ValueError(f"{self.path}: neighbours rows are not aligned with ids.npy (corrupt snapshot?)")
        return ids, scores


def scrub_snapshot(
    path: Path,
    forget: ForgetList,
    search_batch: int = 16_384,
    on_relisted: Callable[[np.ndarray, np.ndarray, np.ndarray, GraphSnapshot], object] | None = None,
) -> dict:
    """Rewrite a published graph snapshot without the forgotten users (see the module docstring).

    Returns ``users`` (rows removed), ``relisted`` (ids of the users whose lists named a forgotten user
    and were searched again) and ``rewritten``. A snapshot already checked against this forget list
    (``forget_digest`` in its marker) is not read again. ``on_relisted(ids, nbr_ids, scores, snapshot)``
    is called with the re-searched lists **before** the snapshot is rewritten (``soe forget`` writes
    them to the store there), so a failure leaves the snapshot unscrubbed and a rerun redoes both.
    """
    empty = {"users": 0, "relisted": np.zeros(0, np.int64), "rewritten": False}
    if not len(forget) or forget.checked(path):
        return empty
    snap = GraphSnapshot(Path(path))
    manifest = dict(snap.manifest)
    uv = snap.vectors
    nbr, scores = snap.neighbours(spare=True)  # k + B wide: the spare entries are scrubbed too
    gone_rows, listed = forget.mask(uv.ids), forget.mask(nbr)
    if not gone_rows.any() and not listed.any():
        write_marker(path, {**manifest, DIGEST_KEY: forget.digest})
        return empty
    keep = ~gone_rows
    relisted = uv.ids[listed.any(axis=1) & keep]
    nxt, changed = snap.next_scores()[keep], snap.changed_ids()
    index = snap.index()
    out = UserVectors(uv.ids[keep], uv.vectors[keep])
    if snap.spec.kind == "hnsw":  # HNSW cannot remove a vector: rebuilt from the kept ones
        from store.graph.index import build_index
        from store.graph.settings import GraphSettings

        index = build_index(out, snap.spec, GraphSettings())
    elif gone_rows.any():
        import faiss

        gone = np.ascontiguousarray(uv.ids[gone_rows])
        index.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone)))
    nbr = np.where(listed, PAD, nbr)[keep]
    scores = np.where(listed, -np.inf, scores)[keep].astype(np.float32)
    rows = out.positions(relisted)
    if len(rows) and len(out) > 1:
        from store.graph.index import searcher

        found = search_neighbours(
            searcher(index, snap.spec, out), out, rows, snap.k + snap.spare, search_batch, with_next=True
        )
        nbr[rows], scores[rows], nxt[rows] = found
    if on_relisted is not None and len(rows):
        on_relisted(relisted, nbr[rows, : snap.k], scores[rows, : snap.k], snap)
    changed = np.union1d(changed[~forget.mask(changed)], relisted)
    manifest.update(
        {
            "n_users": len(out),
            DIGEST_KEY: forget.digest,
            "forgotten_removed": int(manifest.get("forgotten_removed", 0)) + int(gone_rows.sum()),
        }
    )
    with publish_dir(Path(path), manifest) as tmp:
        write_snapshot(
            tmp,
            out,
            nbr,
            scores,
            nxt,
            index,
            snap.model_version,
            snap.as_of,
            changed_rows=out.positions(changed),
            k=snap.k,
            exact=snap.exact_sample(),  # the next build drops the forgotten users from it
        )
    return {"users": int(gone_rows.sum()), "relisted": relisted, "rewritten": True}


def is_accepted(path: Path) -> bool:
    """A published graph snapshot that passed its checks (or was built outside a flow)."""
    return is_complete(path) and bool(read_marker(path).get("accepted", True))


def graph_times(layout: Layout, model_version: str) -> list[datetime]:
    """as_of times of the model's published, accepted graphs, oldest first."""
    return [
        t
        for t in snapshot_times(layout.model_graphs(model_version))
        if is_accepted(layout.graph(model_version, t))
    ]


def accept_snapshot(layout: Layout, model_version: str, as_of: datetime) -> dict:
    """Mark a judged graph snapshot accepted (an atomic rewrite of its marker); returns its manifest."""
    path = layout.graph(model_version, as_of)
    manifest = {**read_marker(path), "accepted": True}
    write_marker(path, manifest)
    return manifest


def latest_snapshot(
    layout: Layout, model_version: str, before: datetime | None = None
) -> GraphSnapshot | None:
    """The newest published graph of the model (strictly before ``before`` when given), or None."""
    times = [t for t in graph_times(layout, model_version) if before is None or t < utc(before)]
    return GraphSnapshot(layout.graph(model_version, times[-1])) if times else None


def latest_any_model(layout: Layout) -> GraphSnapshot | None:
    """The newest published graph of any model (the query service's default)."""
    root = Path(layout.root) / "graph"
    best: GraphSnapshot | None = None
    if root.is_dir():
        for model_dir in root.iterdir():
            snap = latest_snapshot(layout, model_dir.name) if model_dir.is_dir() else None
            if snap is not None and is_complete(snap.path) and (best is None or snap.as_of > best.as_of):
                best = snap
    return best
