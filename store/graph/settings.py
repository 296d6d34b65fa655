"""Config section of the user-similarity graph (composed in soe.config as `graph`)."""

from __future__ import annotations

from typing import Literal

from core.section import Section


class GraphSettings(Section):
    k: int = 20  # neighbours per user
    # spare entries kept beyond k per list (never served): an incremental hour searches a row again only
    # when fewer than k of its k + this entries stay above its bar (docs/graph.md "Incremental hourly
    # builds"). 0 = lists of exactly k (~80 % of lists searched again per hour on encoder vectors)
    spare_neighbours: int = 10
    # the other users' lists are also searched from their side: every user not searched again queries an
    # index of the hour's touched users only, for the touched users that moved into its list
    # (store.graph.incremental.reverse_search; docs/graph.md "Incremental hourly builds"). With spare
    # neighbours it keeps the real hour's recall (1M: 0.963; spares alone 0.920) at 1.4x less graph work
    reverse_search: bool = True
    # how the reverse search runs: "forward_scan" = the touched users' own search of the full index is a
    # cell join (store.graph.cell_join) that also keeps, from the same products, every scanned pair above
    # the *other* user's bar: no second index, no second scan; it finds a pair when the other user's list
    # is among those the touched user probes. "touched_index" = every list not searched again queries an
    # index of the touched users' new vectors ((N - T) queries against T). Same world, one hour each
    # (BENCHMARKS.md "Reverse search"): 10M / 1M graph 668 s vs 1,414 s, recall 0.969 vs 0.970; 1M / 100k
    # 44.6 s vs 65.5 s, recall 0.958 vs 0.963. IVF indexes searched on the CPU only: a flat index, or an
    # index on the GPU (use_gpu), uses touched_index
    reverse_search_by: Literal["forward_scan", "touched_index"] = "forward_scan"
    # how a build's bulk searches scan the IVF lists (the full build's kNN, the hour's searches and its
    # reverse search): "index" = faiss's own search (CPU or GPU); "join" = each probed list's queries
    # scored against its vectors in one matrix product, exact float scores over the same lists
    # (store.graph.cell_join; CPU). 2-core 1M hour: forward search 7.8 s vs 7.6 s, the touched index's
    # reverse search 7.1 s vs 17.7 s (BENCHMARKS.md "Reverse search"); index stays the default: the default
    # forward_scan above runs the hour's touched search as a join anyway, full builds are unmeasured
    scan_with: Literal["index", "join"] = "index"
    # -- index choice (see store.graph.index) ------------------------------------------------
    index: Literal["auto", "flat", "ivf", "ivf_sq8", "ivf_pq", "hnsw"] = "auto"  # auto: by N
    flat_max_users: int = 50_000  # auto: exact (flat) index up to this many users
    ivf_max_users: int = 300_000  # auto: IVF-Flat up to this many users, IVF-SQ8 + exact re-rank above
    ivf_nlist: int = 0  # IVF inverted lists; 0 = 4 * sqrt(N)
    ivf_nprobe: int = 16  # IVF lists scanned per query when not calibrated (target_recall = 0)
    ivf_train_per_list: int = 16  # IVF k-means training sample = nlist * this (capped at N)
    sq_k_factor: int = 2  # ivf_sq8: re-rank this many x k approximate candidates exactly
    pq_k_factor: int = 4  # ivf_pq: re-rank this many x k approximate candidates exactly
    hnsw_quantizer_min_nlist: int = 8192  # IVF on CPU: an HNSW coarse quantiser from this many lists
    hnsw_m: int = 32  # HNSW links per node
    hnsw_ef_construction: int = 80  # HNSW build beam width
    hnsw_ef_search: int = 96  # HNSW search beam width
    use_gpu: Literal["auto", "never", "always"] = "auto"  # auto = faiss GPU when faiss.get_num_gpus() > 0
    search_batch: int = 16_384  # queries per faiss search call
    # rows per block of the passes over all N users (vector merge, re-scoring, change detection, neighbour
    # lists read / written as Parquet row groups): their scratch memory follows this, not N; results don't
    chunk_rows: int = 65_536
    # most memory (MB) a build may add to its process (peak RSS above its start); 0 = no cap. The build
    # estimates its need from N, D, k and the index first (store.graph.memory, docs/graph.md "Memory"):
    # over the budget it stops at once, publishing nothing; under it, chunk_rows shrinks to what fits
    memory_budget_mb: int = 0
    seed: int = 0  # training sample / recall sample seed (reruns are identical)
    # -- quality and incremental refresh ------------------------------------------------------
    target_recall: float = 0.95  # full builds calibrate nprobe / efSearch to reach this (0 = fixed values)
    calibration_sample: int = 1_000  # users whose recall is measured per calibration step
    max_nprobe: int = 256  # calibration ceiling (IVF nprobe / HNSW efSearch)
    recall_sample: int = 1_000  # users whose neighbours are checked against exact search per build
    min_recall: float = 0.93  # incremental build whose sampled recall@k falls below this -> full rebuild
    # incremental builds re-calibrate (the knob only climbs until the next full build) to target_recall
    # + this: the lists they keep drift a little below the lists they search again
    incremental_recall_margin: float = 0.005
    incremental: bool = True  # hourly builds update the previous graph when one exists
    full_rebuild_every_hours: int = 24  # ... and rebuild from scratch when the last full build is this old
    research_dropped: bool = True  # incremental: search again the lists a moved user left (incremental.py)
    research_with: Literal["index", "local"] = "index"  # ... through the index, or their 2-hop neighbourhood
    max_incremental_fraction: float = 0.3  # more touched users than this share -> full rebuild is cheaper
    publish_redis: bool = True  # write neighbour lists to Redis (off for offline builds / benchmarks)
    # -- lookalike / candidates -------------------------------------------------------------
    # seed scoring (max_seed: the best in bench.graph)
    lookalike_method: Literal["centroid", "multi_centroid", "max_seed"] = "max_seed"
    lookalike_centroids: int = 16  # multi_centroid: k-means centroids over the seed vectors
    lookalike_seed_k: int = 100  # max_seed: neighbours searched per seed
    max_seeds: int = 100_000  # largest seed set accepted
    max_audience: int = 1_000_000  # largest audience returned
    positives_window_hours: int = 168  # recent positives kept per user (and their Redis TTL)
    positives_per_user: int = 50  # newest distinct positive items kept per user
