"""The graph build's memory: an estimate from N, D, k and the index, and the budget it must fit.

``graph.memory_budget_mb`` (0 = no cap) bounds the build's peak resident memory above the process's
resident memory when the build starts (what ``python -m bench.graph_memory`` measures). Before any heavy
work (the vectors are not read yet: only the window's user ids, or the previous graph's manifest) the
build estimates its peak as

    peak = FIXED + N · per_user(D, k, index, mode) + block_rows · per_block_row(D, k)

* ``per_user``: the arrays of N rows that are alive together at the build's worst moment (`per_user`
  itemises them: the float32 vectors, the neighbour lists, the index's codes and ids, ...). They grow
  with N and no setting shrinks them.
* ``per_block_row``: the scratch of the passes that work ``graph.chunk_rows`` rows at a time (vector
  merge, re-scoring, the neighbour lists' Parquet row groups), ~2 x (12k + 4D) bytes per row.
* ``FIXED``: what does not depend on N: the search batches, the re-rank of quantised candidates, the
  readers' and the allocators' retained pages (measured, BENCHMARKS.md "Graph build memory"), plus
  the IVF centroids (nlist x D x 4 bytes: 3 MB at 10M users), plus, with ``graph.reverse_search``,
  the index of the hour's T touched users (`touched_index_bytes`: at most T x (8D + 56) bytes, a
  copy of their vectors and flat codes; + T x (4D + 8) for the cell join's list-ordered copy under
  ``graph.scan_with: join``; T is known before the build: the window's users).

If ``FIXED + N · per_user`` plus the smallest block (`MIN_BLOCK_ROWS`) exceeds the budget the build
stops at once with `MemoryBudgetError` (a ValueError: ``soe graph`` prints it as one line), before it
reads a vector and with nothing published. Otherwise the blocks get what is left: ``graph.chunk_rows``,
or fewer rows when the budget leaves less (`block_rows`). Block sizes never change the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.graph.cell_join import SEARCH_BLOCK
from store.graph.index import IVF_KINDS, IndexSpec

MB = 2**20
FIXED_MB = 128  # not proportional to N (see the module docstring); measured at 100k and 1M
MIN_BLOCK_ROWS = 1024  # the smallest block the budget may shrink graph.chunk_rows to
HNSW_LEVEL_BYTES = 16  # HNSW: upper levels + per-node bookkeeping (assumed, levels thin out by 1/M)
IDMAP_BYTES = 48  # IndexIDMap2's id -> position hash map entry (node, pointer, bucket)
# the cell join's scratch per query and list probed (`join_scratch_bytes`), measured: 10M users' index
# (nprobe 48), 2 workers of 32k-query blocks searching both ways: 1,451 MB above the start
JOIN_BYTES_PER_PROBE = 460


class MemoryBudgetError(ValueError):
    """The build's unavoidable memory exceeds ``graph.memory_budget_mb`` (raised before any heavy work)."""


def index_bytes_per_user(spec: IndexSpec, dim: int) -> float:
    """Bytes per user of the index's codes and ids (what faiss holds per vector)."""
    if spec.kind == "flat":  # IDMap2,Flat: float32 codes, the id, the reverse map
        return 4 * dim + 8 + IDMAP_BYTES
    if spec.kind == "ivf":  # float32 codes + id in its inverted list
        return 4 * dim + 8
    if spec.kind == "ivf_sq8":  # 8-bit codes + id
        return dim + 8
    if spec.kind == "ivf_pq":  # 4-bit fast-scan codes (pq_m x 4 bits) + id
        return spec.pq_m / 2 + 8
    if spec.kind == "hnsw":  # IDMap2,HNSW<M>,Flat: float32 codes, 2M level-0 links, levels, ids
        return 4 * dim + 2 * spec.hnsw_m * 4 + HNSW_LEVEL_BYTES + 8 + IDMAP_BYTES
    raise ValueError(f"unknown index kind {spec.kind!r}")


def per_user(
    dim: int, k: int, spec: IndexSpec, mode: str, spare: int = 0, list_join: bool = False
) -> dict[str, float]:
    """Bytes per user of the N-row arrays alive together at the worst moment of a ``mode`` build
    ("full" or "incremental"), item by item. Lists hold k + ``spare`` entries (graph.spare_neighbours).
    ``list_join``: the build scans the index through a `store.graph.cell_join.ListJoin` of every user
    (``graph.scan_with: join``, or ``graph.reverse_search_by: forward_scan``)."""
    vectors = 4 * dim  # (N, D) float32
    k = k + spare  # entries per list: the served k and the spare ones
    lists = 12 * k + 4  # (N, k+B) int64 ids + (N, k+B) float32 scores + (N,) float32 bar
    parts: dict[str, float] = {"vectors": vectors, "ids + id->row table": 8 + 4}
    parts["index"] = index_bytes_per_user(spec, dim)
    if list_join and spec.kind in IVF_KINDS:  # int64 list ids, their rows and ids, each row's list
        parts["cell join"] = 32
    if mode == "full":
        # the search writes (N, k+B+1) ids and scores (the lists are views of them) and copies the bar out;
        # the rows searched and the changed rows (np.arange), the changed ids written
        parts["neighbour lists"] = 12 * (k + 1) + 4
        parts["row numbers"] = 8 + 8
        return parts
    if mode != "incremental":
        raise ValueError(f"mode must be full or incremental, got {mode!r}")
    # two moments compete (store.graph.build.build_incremental): the merge holds the previous and the
    # merged vectors with the previous lists and its sort scratch (~33 B); carrying the lists over holds
    # the previous and the new lists; the previous ids are kept (with their rows) to find changed lists
    merge = vectors + lists + 33
    carry = 2 * lists + 8
    parts["previous ids, rows"] = 8 + 8
    parts["neighbour lists (new + previous)" if carry >= merge else "previous vectors + lists"] = max(
        merge, carry
    )
    return parts


def per_block_row(dim: int, k: int) -> float:
    """Scratch bytes per row of a block of the row-wise passes (~2 copies of a list row and a vector);
    ``k``: entries per list (k + spare)."""
    return 2 * (12 * k + 4 * dim)


@dataclass(frozen=True)
class Estimate:
    """The build's estimated peak above its start, in bytes, and where it comes from."""

    n_users: int
    dim: int
    k: int
    mode: str
    index: str
    parts: dict[str, float]  # bytes per user, item by item
    block_rows: int  # rows per block of the row-wise passes (graph.chunk_rows, or fewer under a budget)
    centroid_bytes: float = 0.0  # IVF: nlist x D float32
    spare: int = 0  # spare entries per list beyond k (graph.spare_neighbours)
    touched_bytes: float = 0.0  # graph.reverse_search_by touched_index: the index of the hour's touched users
    join_bytes: float = 0.0  # a cell join's search scratch (`join_scratch_bytes`)

    @property
    def bytes_per_user(self) -> float:
        return sum(self.parts.values())

    @property
    def resident_bytes(self) -> float:
        """What no block size changes: FIXED + the centroids + N x per-user bytes."""
        extra = self.centroid_bytes + self.touched_bytes + self.join_bytes
        return FIXED_MB * MB + extra + self.n_users * self.bytes_per_user

    @property
    def peak_bytes(self) -> float:
        return self.resident_bytes + self.block_rows * per_block_row(self.dim, self.k + self.spare)

    def as_dict(self) -> dict:
        """For the manifest and the bench (MB, rounded)."""
        return {
            "mode": self.mode,
            "index": self.index,
            "n_users": self.n_users,
            "bytes_per_user": round(self.bytes_per_user, 1),
            "resident_mb": round(self.resident_bytes / MB, 1),
            "block_rows": self.block_rows,
            "peak_mb": round(self.peak_bytes / MB, 1),
            **({"touched_index_mb": round(self.touched_bytes / MB, 1)} if self.touched_bytes else {}),
            **({"join_scratch_mb": round(self.join_bytes / MB, 1)} if self.join_bytes else {}),
        }


def touched_index_bytes(n_touched: int, dim: int, join: bool = False) -> float:
    """``graph.reverse_search``'s index of the touched users, bounded above: a float32 copy of their
    vectors and the codes of a flat index (IVF-Flat holds fewer bytes, IVF-SQ8 a quarter); with
    ``join`` (``graph.scan_with: join``) also the cell join's list-ordered float32 copy with each
    vector's row (`store.graph.cell_join`)."""
    return n_touched * (4 * dim + index_bytes_per_user(IndexSpec("flat"), dim) + (4 * dim + 8 if join else 0))


def join_scratch_bytes(spec: IndexSpec, workers: int, queries: int) -> float:
    """The cell join's search scratch (`store.graph.cell_join.ListJoin.search`) for ``queries``, bounded
    by its blocks, not by N: each of ``workers`` threads holds a block of at most `SEARCH_BLOCK` queries'
    pairs above their floors (~6 per list probed on encoder vectors) and their sort:
    `JOIN_BYTES_PER_PROBE` per query and list probed. 0 for no join or no IVF index."""
    if workers <= 0 or queries <= 0 or spec.kind not in IVF_KINDS:
        return 0.0
    block = min(SEARCH_BLOCK, -(-queries // workers))
    return min(workers, queries) * block * spec.nprobe * JOIN_BYTES_PER_PROBE


def block_rows(budget_mb: int, resident: float, dim: int, k: int, chunk_rows: int) -> int:
    """``chunk_rows``, or fewer when the budget leaves less room for the blocks' scratch (never fewer
    than `MIN_BLOCK_ROWS`; 0 budget = no cap)."""
    if budget_mb <= 0:
        return chunk_rows
    room = int((budget_mb * MB - resident) // per_block_row(dim, k))
    return max(MIN_BLOCK_ROWS, min(chunk_rows, room // MIN_BLOCK_ROWS * MIN_BLOCK_ROWS))


def plan(
    n_users: int,
    dim: int,
    k: int,
    spec: IndexSpec,
    mode: str,
    chunk_rows: int,
    budget_mb: int = 0,
    spare: int = 0,
    reverse_touched: int = 0,
    reverse_join: bool = False,
    join_workers: int = 0,
    join_queries: int = 0,
) -> Estimate:
    """The estimate of a ``mode`` build of ``n_users`` with lists of k + ``spare`` entries under
    ``budget_mb`` (0: none); ``reverse_touched``: the touched users of an hour whose reverse search
    builds their own index (0: none); ``reverse_join``: as in `touched_index_bytes`; ``join_workers``:
    the threads of a cell join over every user (0: none; `per_user`'s ``list_join``, `join_scratch_bytes`).
    Raises `MemoryBudgetError` when even the smallest blocks do not fit."""
    parts = per_user(dim, k, spec, mode, spare, list_join=join_workers > 0)
    centroids = 4.0 * spec.nlist * dim if spec.kind in IVF_KINDS else 0.0
    touched = touched_index_bytes(reverse_touched, dim, reverse_join)
    join = join_scratch_bytes(spec, join_workers, join_queries)
    est = Estimate(n_users, dim, k, mode, spec.kind, parts, chunk_rows, centroids, spare, touched, join)
    rows = block_rows(budget_mb, est.resident_bytes, dim, k + spare, chunk_rows)
    est = Estimate(n_users, dim, k, mode, spec.kind, parts, rows, centroids, spare, touched, join)
    if budget_mb > 0 and est.peak_bytes > budget_mb * MB:
        plus = f"+{spare}" if spare else ""  # spare entries per list
        raise MemoryBudgetError(
            f"graph build needs ~{est.peak_bytes / MB:,.0f} MB > graph.memory_budget_mb={budget_mb:,} "
            f"({mode}, {n_users:,} users x {est.bytes_per_user:,.0f} B [D={dim}, k={k}{plus}, {spec.kind}] "
            f"+ {FIXED_MB} MB fixed + {rows:,}-row blocks); raise the budget or shard the graph; "
            f"nothing was built or published"
        )
    return est
