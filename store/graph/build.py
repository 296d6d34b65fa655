"""`build_graph`: one refresh of the user-similarity graph of a model (``soe graph``).

Full build::

    every user's latest vector (store.graph.vectors) -> choose + train + fill the index
    -> batched k+1 search of every user, self dropped -> recall@k on a sample vs exact search
    -> graph/<model>/as_of=<T>/ published atomically (+ Redis neighbour lists of every user)

Incremental build (the hourly default once a graph exists; see store.graph.incremental): previous
snapshot + only the embedding snapshots newer than it -> update the index -> search the touched users
-> repair the other lists -> recall check -> publish (+ Redis lists of the changed users only).

A full rebuild replaces the incremental one when: asked (``--full``), there is no previous graph, the
index is HNSW (it cannot remove vectors), the dim changed, the last full build is older than
``graph.full_rebuild_every_hours``, more than ``graph.max_incremental_fraction`` of users changed, or
the incremental result's sampled recall falls below ``graph.min_recall``. The manifest records which
mode ran and why. Re-running the same (model, as_of) rewrites the same directory (idempotent).

Memory (store.graph.memory): before the vectors are read, the build knows N (the window's user ids, or
the previous graph's size plus the hour's users) and estimates its peak from N, D, k and the index.
Over ``graph.memory_budget_mb`` it raises `MemoryBudgetError` at once (nothing built, nothing
published); under it, the row-wise passes run in blocks of ``graph.chunk_rows`` rows or fewer, as the
budget allows. The estimate goes into the manifest (``memory``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from core.atomic import publish_dir
from core.contracts import NEIGHBOURS
from core.embeddings import snapshot_times
from core.forget import DIGEST_KEY, ForgetList
from core.layout import HOUR, Layout, stamp, utc
from store.graph.cell_join import ListJoin, bulk_scan, bulk_searcher, concat_pairs, join_workers
from store.graph.exact_sample import ExactSample, SampleKey, carry_exact, fresh_exact
from store.graph.incremental import (
    carry_over,
    changed_lists,
    drop_forgotten,
    local_neighbours,
    mean_entries,
    repair_untouched,
    rescore,
    reverse_search,
    thin,
    update_index,
)
from store.graph.index import (
    IVF_KINDS,
    IndexSpec,
    build_index,
    choose_device,
    choose_spec,
    num_gpus,
)
from store.graph.knn import drop_self, recall_at_k, search_neighbours
from store.graph.memory import Estimate, plan
from store.graph.redis_io import write_neighbour_lists
from store.graph.settings import GraphSettings
from store.graph.snapshot import GraphSnapshot, latest_snapshot, write_snapshot
from store.graph.tune import calibrate, knob
from store.graph.vectors import CHUNK_ROWS, UserVectors, WindowVectors, window_vectors
from store.keys import check_name
from store.settings import RedisSettings

log = logging.getLogger(__name__)


@dataclass
class GraphResult:
    """What one build produced, before it is written."""

    uv: UserVectors
    nbr_ids: np.ndarray  # (N, k + B) int64, -1 padded (B = graph.spare_neighbours, never served)
    nbr_scores: np.ndarray  # (N, k + B) float32
    next_scores: np.ndarray  # (N,) float32 each list's bar: its (k+B+1)-th score, raised by evictions
    index: object  # CPU faiss index
    spec: IndexSpec
    changed_rows: np.ndarray  # rows whose lists changed (all rows on a full build)
    exact: ExactSample  # the calibration and recall samples' exact lists (store.graph.exact_sample)
    stats: dict = field(default_factory=dict)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The served lists: the first ``k`` entries of each row (views, no copy)."""
        return self.nbr_ids[:, :k], self.nbr_scores[:, :k]


def width(cfg: GraphSettings) -> int:
    """Entries kept per list: k served + ``graph.spare_neighbours``."""
    return cfg.k + cfg.spare_neighbours


def sample_key(cfg: GraphSettings) -> SampleKey:
    """What the build's exact sample lists are made for (store.graph.exact_sample)."""
    return SampleKey(cfg.seed, cfg.calibration_sample, cfg.recall_sample, cfg.k)


def build_full(
    uv: UserVectors, cfg: GraphSettings, on_batch: Callable[[int], object] | None = None
) -> GraphResult:
    t0 = time.perf_counter()
    ivf_device = choose_device(cfg.use_gpu, num_gpus(), "ivf")  # where an IVF index would be searched
    spec = choose_spec(len(uv), cfg, uv.dim, device=ivf_device)
    index = build_index(uv, spec, cfg)
    tc = time.perf_counter()
    exact = fresh_exact(uv, sample_key(cfg))
    te = time.perf_counter()
    spec, tried = calibrate(index, spec, uv, exact.checks(uv)[0], cfg.target_recall, cfg.max_nprobe)
    t1 = time.perf_counter()
    device = choose_device(cfg.use_gpu, num_gpus(), spec.kind)
    search_index = bulk_searcher(index, spec, uv, cfg.scan_with, device)
    batch = getattr(search_index, "batch", cfg.search_batch)
    nbr, scores, nxt = search_neighbours(
        search_index, uv, np.arange(len(uv)), width(cfg), batch, on_batch, with_next=True
    )
    t2 = time.perf_counter()
    stats = {
        "index_s": round(tc - t0, 3),
        "exact_s": round(te - tc, 3),  # the samples' exact lists
        "calibrate_s": round(t1 - te, 3),
        "search_s": round(t2 - t1, 3),
        "n_touched": len(uv),
        "calibration": tried,
        "search_knob": knob(spec),  # the nprobe / efSearch the lists were searched with
        "scan": bulk_scan(spec, cfg.scan_with),  # graph.scan_with as applied
        "exact_searched": len(exact.ids),
    }
    return GraphResult(uv, nbr, scores, nxt, index, spec, np.arange(len(uv)), exact, stats)


def build_incremental(
    prev: GraphSnapshot, new: UserVectors, cfg: GraphSettings, forget: ForgetList | None = None
) -> GraphResult:
    t0 = time.perf_counter()
    old = prev.vectors
    index = prev.index()
    old_nbr, old_scores = prev.neighbours(cfg.chunk_rows, spare=True)
    old_next = prev.next_scores()
    # forgotten since the previous graph: out of the index and the lists; holed: lists that named one
    old, old_nbr, old_scores, old_next, holed, n_forgotten = drop_forgotten(
        forget, index, old, old_nbr, old_scores, old_next
    )
    update_index(index, old, new)
    uv = old.merged(new, cfg.chunk_rows)
    old_ids, n_old = old.ids, len(old)
    del old  # the merged vectors replace the previous ones: one (N, D) copy held, not two
    prev.drop_vectors()
    nbr, scores, nxt = carry_over(old_ids, old_nbr, old_scores, uv, old_next, width(cfg))
    del old_scores, old_next  # carried over; the previous ids stay to tell which lists changed
    tc = time.perf_counter()
    # the samples' exact lists: last build's, updated by the hour's users (S x T, not S x N)
    exact, exact_stats = carry_exact(prev.exact_sample(), uv, new.ids, sample_key(cfg), cfg.chunk_rows)
    te = time.perf_counter()
    inc_target = min(cfg.target_recall + cfg.incremental_recall_margin, 1.0) if cfg.target_recall > 0 else 0.0
    spec, tried = calibrate(  # the hour's vectors moved: re-check the knob, never below the last one
        index, prev.spec, uv, exact.checks(uv)[0], inc_target, cfg.max_nprobe, floor=knob(prev.spec) or 0
    )
    t1 = time.perf_counter()
    touched = uv.positions(new.ids)
    device = choose_device(cfg.use_gpu, num_gpus(), spec.kind)
    search_index = bulk_searcher(index, spec, uv, cfg.scan_with, device)
    found = None  # the reverse search's pairs: from the forward scan, or its own search below
    reverse_stats: dict = {}
    if cfg.reverse_search and reverse_in_forward_scan(cfg, spec) and len(touched):
        join = search_index if isinstance(search_index, ListJoin) else ListJoin(index, spec, uv, copy=False)
        found = search_both_ways(join, uv, touched, cfg, nbr, scores, nxt)
        reverse_stats = {"reverse_method": "forward_scan", "reverse_found": len(found[0])}
        del join  # its list ids and rows (32 B per user) are not needed by the repair
    else:
        search_into(search_index, uv, touched, cfg, nbr, scores, nxt)
    forward_s = time.perf_counter() - t1
    dropped = thinned = np.zeros(0, np.int64)
    if cfg.research_dropped and cfg.spare_neighbours > 0:  # drop what fell below the bar; search rows < k
        dropped, thinned = thin(uv, nbr, scores, touched, new.ids, nxt, cfg.k, cfg.chunk_rows)
    elif cfg.research_dropped:  # rows a moved neighbour fell out of: search them again
        dropped = np.setdiff1d(rescore(uv, nbr, scores, touched, new.ids, nxt, cfg.chunk_rows), touched)
    if len(dropped):
        if cfg.research_with == "local":  # their 2-hop neighbourhood, ~k² dot products per row
            nbr[dropped], scores[dropped], nxt[dropped] = local_neighbours(uv, nbr, dropped, width(cfg))
        else:  # the index, as a full build would
            search_into(search_index, uv, dropped, cfg, nbr, scores, nxt)
    holes = np.setdiff1d(uv.positions(holed), np.union1d(touched, dropped))  # lost a forgotten neighbour
    if len(holes):
        search_into(search_index, uv, holes, cfg, nbr, scores, nxt)
    fixed = np.union1d(np.union1d(touched, dropped), holes)
    if cfg.reverse_search and len(touched) and found is None:  # every other list's look at the touched users
        found, reverse_stats = reverse_search(uv, touched, fixed, nxt, width(cfg), cfg, inc_target)
    tr = time.perf_counter()
    repaired = repair_untouched(
        uv,
        nbr,
        scores,
        touched,
        nxt,
        fixed=fixed,
        chunk=cfg.chunk_rows,
        resort=np.setdiff1d(thinned, holes),
        found=found,
    )
    t2 = time.perf_counter()
    k = cfg.k  # a list changed when its served top k did
    changed = changed_lists(nbr[:, :k], uv.positions(old_ids), old_nbr[:, :k], cfg.chunk_rows)
    changed = np.union1d(np.union1d(changed, touched), holes)
    stats = {
        "index_s": round(tc - t0, 3),
        "exact_s": round(te - tc, 3),  # the samples' exact lists
        "calibrate_s": round(t1 - te, 3),
        "search_s": round(t2 - t1, 3),  # of which: forward, reverse, repair below
        "forward_search_s": round(forward_s, 3),
        "repair_s": round(t2 - tr, 3),
        "n_touched": len(touched),
        "calibration": tried,
        "search_knob": knob(spec),  # the nprobe / efSearch the hour searched with
        "scan": bulk_scan(spec, cfg.scan_with),  # graph.scan_with as applied
        "n_new_users": int(len(uv) - n_old),
        "n_researched": len(dropped),
        "n_thinned": len(thinned),  # rows that dropped spare entries and kept >= k (not searched again)
        "n_repaired": int(repaired),
        "n_forgotten": n_forgotten,
        "n_relisted": len(holes),
        **exact_stats,
    }
    stats.update(reverse_stats)  # graph.reverse_search: what the other lists found (store.graph.incremental)
    if cfg.spare_neighbours > 0:  # entries left per list (k + B when full): how fast the spares wear down
        stats["mean_entries"] = round(mean_entries(nbr, cfg.chunk_rows), 3)
    return GraphResult(uv, nbr, scores, nxt, index, spec, changed, exact, stats)


def search_into(index, uv: UserVectors, rows: np.ndarray, cfg: GraphSettings, nbr, scores, nxt) -> None:
    """`search_neighbours` of ``rows`` written into the (N, k) lists and (N,) bars one search batch at
    a time (the same searches; no (rows, k+1) result of every row at once)."""
    batch = getattr(index, "batch", cfg.search_batch)  # a ListJoin wants more queries per call
    for lo in range(0, len(rows), batch):
        r = rows[lo : lo + batch]
        nbr[r], scores[r], nxt[r] = search_neighbours(index, uv, r, width(cfg), batch, with_next=True)


def reverse_in_forward_scan(cfg: GraphSettings, spec: IndexSpec) -> bool:
    """Whether the hour's reverse search comes out of the touched users' own scan
    (``graph.reverse_search_by: forward_scan``): only an IVF index has the lists the join scans, and
    only where the index is searched on the CPU (on a GPU faiss's own search of both indexes stays)."""
    on_cpu = choose_device(cfg.use_gpu, num_gpus(), spec.kind) == "cpu"
    return cfg.reverse_search_by == "forward_scan" and spec.kind in IVF_KINDS and on_cpu


def uses_list_join(cfg: GraphSettings, spec: IndexSpec) -> bool:
    """Whether an hour's build scans the full index through a `ListJoin` (its memory is planned)."""
    return cfg.scan_with == "join" or (cfg.reverse_search and reverse_in_forward_scan(cfg, spec))


def search_both_ways(
    join: ListJoin, uv: UserVectors, touched: np.ndarray, cfg: GraphSettings, nbr, scores, nxt
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`search_into` for the ``touched`` rows by one scan of the full index's lists that also returns
    the reverse search's pairs: (row, touched id, score) for every scanned pair above the other row's
    bar (``nxt`` before this search; never a touched row, whose own list is searched here). The rows of
    one inverted list go together (they probe the same nearest list; ~4 % faster than random order)."""
    bars = nxt.copy()
    bars[touched] = np.inf
    m = width(cfg)
    found = []
    rows = join.in_list_order(touched)
    for lo in range(0, len(rows), join.batch):
        r = rows[lo : lo + join.batch]
        s, ids, (t_rows, q, t_scores) = join.search_both_ways(uv.vectors[r], m + 2, bars)  # (b, m + 2)
        ids, s = drop_self(uv.ids[r], ids, s, m + 1)  # the user itself out: (b, m + 1)
        nbr[r], scores[r], nxt[r] = ids[:, :m], s[:, :m], s[:, m]
        found.append((t_rows, uv.ids[r[q]], t_scores))
    return concat_pairs(found)


def measured_recall(result: GraphResult, cfg: GraphSettings) -> tuple[float, int]:
    """(recall@k of the built lists against exact search on the recall sample, sample size)."""
    rows, exact = result.exact.checks(result.uv)[1]
    return recall_at_k(result.top(cfg.k)[0][rows], exact), len(rows)


def full_reason(
    cfg: GraphSettings, incremental: bool, prev: GraphSnapshot | None, as_of: datetime
) -> str | None:
    """Why this build must be a full one (None: incremental is allowed)."""
    if not incremental:
        return "full build requested"
    if prev is None:
        return "no previous graph of this model"
    if prev.spec.kind == "hnsw":
        return "HNSW cannot remove vectors"
    if prev.k != cfg.k:
        return f"k changed from {prev.k} to {cfg.k}"
    last_full = utc(prev.manifest.get("last_full_as_of", prev.manifest["as_of"]))
    if as_of - last_full >= cfg.full_rebuild_every_hours * HOUR:
        return f"scheduled: last full build {stamp(last_full)} is {cfg.full_rebuild_every_hours}h or more old"
    return None


def build_graph(
    cfg: GraphSettings,
    redis: RedisSettings,
    layout: Layout,
    model_version: str,
    as_of: datetime | str,
    *,
    incremental: bool | None = None,
    publish_redis: bool | None = None,
    accept: bool = True,
    on_batch: Callable[[int], object] | None = None,
) -> dict:
    """Build (full or incremental) and publish the graph of ``model_version`` at ``as_of``; the manifest.

    ``redis`` is the store the neighbour lists go to (when ``graph.publish_redis`` or ``publish_redis``).
    ``accept=False`` publishes the snapshot unaccepted (invisible to readers, see store.graph.snapshot)
    for a flow that judges it first, then calls `accept_snapshot` and `publish_lists`.
    """
    check_name("model version", model_version)
    as_of = utc(as_of)
    t0 = time.perf_counter()
    incremental = cfg.incremental if incremental is None else incremental
    prev = latest_snapshot(layout, model_version, before=as_of)
    forget = ForgetList.load(layout.root)  # forgotten users: in no index and no list
    reason = full_reason(cfg, incremental, prev, as_of)
    result: GraphResult | None = None
    estimate: Estimate | None = None
    if reason is None and prev is not None:  # full_reason is None only when there is a previous graph
        window = newer_window(layout, model_version, prev, as_of, forget, cfg.chunk_rows)
        reason = incremental_blocker(cfg, prev, window)
        if reason is None:
            # N: the previous graph's users plus the hour's (an upper bound: most of them are known);
            # from the manifest and the window's ids, before any vector is read
            scan_both_ways = cfg.reverse_search and reverse_in_forward_scan(cfg, prev.spec)
            estimate = plan(
                prev.n_users + len(window),
                prev.dim,
                cfg.k,
                prev.spec,
                "incremental",
                cfg.chunk_rows,
                cfg.memory_budget_mb,
                cfg.spare_neighbours,
                len(window) if cfg.reverse_search and not scan_both_ways else 0,
                cfg.scan_with == "join",
                join_workers() if uses_list_join(cfg, prev.spec) else 0,
                len(window),  # the touched users: the join's queries
            )
            inc_cfg = cfg.model_copy(update={"chunk_rows": estimate.block_rows})
            result = build_incremental(prev, window.load(inc_cfg.chunk_rows), inc_cfg, forget)
            recall, n_sample = measured_recall(result, cfg)
            if recall < cfg.min_recall:
                reason = f"incremental recall {recall:.3f} below graph.min_recall {cfg.min_recall}"
                result = None
    mode = "incremental" if result is not None else "full"
    if result is None:
        window = window_vectors(layout, model_version, as_of, forget=forget, chunk=cfg.chunk_rows)
        spec = choose_spec(len(window), cfg, window.dim, device=choose_device(cfg.use_gpu, num_gpus(), "ivf"))
        estimate = plan(
            len(window),
            window.dim,
            cfg.k,
            spec,
            "full",
            cfg.chunk_rows,
            cfg.memory_budget_mb,
            cfg.spare_neighbours,
            join_workers=join_workers() if cfg.scan_with == "join" else 0,
            join_queries=len(window),
        )
        full_cfg = cfg.model_copy(update={"chunk_rows": estimate.block_rows})
        result = build_full(window.load(full_cfg.chunk_rows), full_cfg, on_batch)
        recall, n_sample = measured_recall(result, cfg)
    assert estimate is not None
    chunk = estimate.block_rows
    device = choose_device(cfg.use_gpu, num_gpus(), result.spec.kind)
    last_full = (
        stamp(as_of)
        if mode == "full" or prev is None
        else prev.manifest.get("last_full_as_of", prev.manifest["as_of"])
    )
    manifest = {
        "model_version": model_version,
        "as_of": stamp(as_of),
        "mode": mode,
        "full_reason": reason,
        "n_users": len(result.uv),
        "dim": result.uv.dim,
        "k": cfg.k,
        "spare_neighbours": cfg.spare_neighbours,
        "index": result.spec.params(),
        "device": device,
        "recall_at_k": round(recall, 5),
        "recall_sample": n_sample,
        "n_changed_lists": len(result.changed_rows),
        **result.stats,
        "last_full_as_of": last_full,
        "previous_as_of": stamp(prev.as_of) if prev is not None else None,
        "contract": {"neighbours": NEIGHBOURS.version},
        "accepted": bool(accept),
        "memory": {**estimate.as_dict(), "budget_mb": cfg.memory_budget_mb},
        DIGEST_KEY: forget.digest,
    }
    with publish_dir(layout.graph(model_version, as_of), manifest) as tmp:
        write_snapshot(
            tmp,
            result.uv,
            result.nbr_ids,
            result.nbr_scores,
            result.next_scores,
            result.index,
            model_version,
            as_of,
            changed_rows=result.changed_rows,
            chunk=chunk,
            k=cfg.k,
            exact=result.exact,
        )
        manifest["build_s"] = round(time.perf_counter() - t0, 3)
    if cfg.publish_redis if publish_redis is None else publish_redis:
        t1 = time.perf_counter()
        manifest["redis_lists"] = write_lists_in_blocks(
            redis,
            model_version,
            result.uv,
            *result.top(cfg.k),
            result.changed_rows,
            as_of,
            chunk,
        )
        manifest["redis_s"] = round(time.perf_counter() - t1, 3)
    log.info(
        "graph %s as_of=%s: %s build of %d users, recall@%d=%.3f in %.1fs",
        model_version,
        stamp(as_of),
        mode,
        len(result.uv),
        cfg.k,
        recall,
        manifest["build_s"],
    )
    return manifest


def publish_lists(
    redis: RedisSettings,
    layout: Layout,
    model_version: str,
    as_of: datetime | str,
    *,
    every_list: bool = False,
) -> dict:
    """Write a published graph snapshot's neighbour lists to the store: the lists its build changed,
    or ``every_list`` (a repair after the store lost data). Conditional on as_of, like every upsert."""
    snap = GraphSnapshot(layout.graph(check_name("model version", model_version), utc(as_of)))
    nbr_ids, nbr_scores = snap.neighbours()
    ids = snap.vectors.ids
    rows = np.arange(len(ids)) if every_list else np.searchsorted(ids, snap.changed_ids())
    t0 = time.perf_counter()
    counts = write_lists_in_blocks(redis, model_version, snap.vectors, nbr_ids, nbr_scores, rows, snap.as_of)
    return {"lists": int(len(rows)), "redis_lists": counts, "seconds": round(time.perf_counter() - t0, 3)}


def write_lists_in_blocks(
    redis: RedisSettings,
    model_version: str,
    uv: UserVectors,
    nbr_ids: np.ndarray,
    nbr_scores: np.ndarray,
    rows: np.ndarray,
    as_of: datetime,
    chunk: int = CHUNK_ROWS,
) -> dict[str, int]:
    """`write_neighbour_lists` of the lists at ``rows``, gathered ``chunk`` rows at a time (a full build
    writes every list: one gathered copy of all of them would add ~12k bytes per user to the peak), in
    the store's write order (Redis: bucket by bucket)."""
    from store.backends import open_store

    store = open_store(redis)
    rows = rows[store.write_order(model_version, uv.ids[rows])]
    total: dict[str, int] = {}
    for lo in range(0, len(rows), chunk):
        r = rows[lo : lo + chunk]
        counts = write_neighbour_lists(
            redis, model_version, uv.dim, uv.ids[r], nbr_ids[r], nbr_scores[r], as_of, store=store
        )
        total = {key: total.get(key, 0) + n for key, n in counts.items()}
    return total


def newer_window(
    layout: Layout,
    model_version: str,
    prev: GraphSnapshot,
    as_of: datetime,
    forget: ForgetList | None = None,
    chunk: int = CHUNK_ROWS,
) -> WindowVectors | UserVectors:
    """The users of the embedding snapshots published after ``prev``, vectors not read yet (an empty
    `UserVectors` when there are none), without the forgotten users."""
    if not snapshot_times(layout, model_version, after=prev.as_of, until=as_of):
        return UserVectors(np.zeros(0, np.int64), np.zeros((0, prev.dim), np.float32))
    return window_vectors(layout, model_version, as_of, after=prev.as_of, forget=forget, chunk=chunk)


def newer_vectors(
    layout: Layout, model_version: str, prev: GraphSnapshot, as_of: datetime, forget: ForgetList | None = None
) -> UserVectors:
    """The vectors of the embedding snapshots published after ``prev`` (empty when there are none),
    without the forgotten users."""
    new = newer_window(layout, model_version, prev, as_of, forget)
    return new if isinstance(new, UserVectors) else new.load()


def incremental_blocker(
    cfg: GraphSettings, prev: GraphSnapshot, new: UserVectors | WindowVectors
) -> str | None:
    """Why the new vectors cannot be applied incrementally (None: they can)."""
    if len(new) and new.dim != prev.dim:
        return f"vector dim changed from {prev.dim} to {new.dim}"
    if len(new) > cfg.max_incremental_fraction * max(prev.n_users, 1):
        return f"{len(new)} changed users exceed {cfg.max_incremental_fraction:.0%} of the graph"
    return None
