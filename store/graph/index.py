"""Choosing, building and placing the FAISS index over every user's vector.

Vectors are L2-normalised, so the metric is inner product (= cosine). User ids live *in* the index
(``add_with_ids``: IVF natively, flat and HNSW through ``IndexIDMap2``), so search returns user ids.

Which index (``graph.index``, default ``auto``):

* ``flat``  exact search; O(N) per query. Chosen by ``auto`` up to ``graph.flat_max_users``.
* ``ivf``   IVF-Flat: k-means coarse quantiser with ``nlist`` (default 4·sqrt(N)) lists, ``nprobe``
  lists scanned per query. Chosen by ``auto`` above ``flat_max_users``. Supports ``remove_ids`` (one
  pass over every list per call, so the incremental build removes all touched users in *one* call).
* ``ivf_sq8`` the same IVF lists holding 8-bit scalar-quantised vectors (64 bytes per user at d=64,
  4x less than float32), then the ``sq_k_factor`` x k best candidates re-ranked exactly against the
  stored float vectors (`Searcher`). Chosen by ``auto`` above ``graph.ivf_max_users``. Supports
  ``remove_ids``; faiss has a GPU version.
* ``ivf_pq`` the same IVF lists holding 4-bit product-quantised codes scanned with SIMD ("fast scan",
  16 bytes per user at d=64), re-ranked like ``ivf_sq8`` (``pq_k_factor``). Good on well-separated
  clusters, but on trained encoder vectors (low intrinsic dimension, neighbours within ~1e-4 cosine
  of each other) its codes cannot rank the neighbourhood: recall@20 0.25-0.72 at 1M where IVF-Flat
  and IVF-SQ8 reach 0.97 (BENCHMARKS.md). Never chosen by ``auto``.
* ``hnsw``  graph index, fastest queries, slow build, and it cannot remove vectors; an incremental
  build on HNSW therefore always falls back to a full rebuild (see store.graph.build).

Large ``nlist`` (>= ``graph.hnsw_quantizer_min_nlist``, e.g. 10M users): the coarse quantiser is an
HNSW graph over the centroids instead of an exact scan of them (``IVF<nlist>_HNSW32``, what the FAISS
guidelines suggest for 1M-100M vectors), on the CPU; a GPU scans the centroids exactly.

Device: faiss GPU (``index_cpu_to_gpu``) only when ``faiss.get_num_gpus() > 0`` (``use_gpu=auto``) or
when asked (``always``: error without a GPU); HNSW has no GPU version and stays on the CPU. Indexes are
always saved in their CPU form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from store.graph.settings import GraphSettings
from store.graph.vectors import UserVectors


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # "flat" | "ivf" | "ivf_sq8" | "ivf_pq" | "hnsw"
    nlist: int = 0  # ivf*: inverted lists
    nprobe: int = 0  # ivf*: lists scanned per query
    quantizer_hnsw_m: int = 0  # ivf*: HNSW links of the coarse quantiser (0: exact scan of the centroids)
    pq_m: int = 0  # ivf_pq: sub-quantisers (4 bits each)
    k_factor: int = 0  # ivf_sq8, ivf_pq: candidates re-ranked exactly = k_factor x k
    hnsw_m: int = 0  # hnsw: links per node
    ef_construction: int = 0  # hnsw: build beam
    ef_search: int = 0  # hnsw: search beam

    def params(self) -> dict:
        """The parameters that matter for this kind (for the manifest)."""
        keep = {
            "flat": (),
            "ivf": ("nlist", "nprobe", "quantizer_hnsw_m"),
            "ivf_sq8": ("nlist", "nprobe", "quantizer_hnsw_m", "k_factor"),
            "ivf_pq": ("nlist", "nprobe", "quantizer_hnsw_m", "pq_m", "k_factor"),
            "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
        }
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k in keep[self.kind]}}


IVF_KINDS = ("ivf", "ivf_sq8", "ivf_pq")
IVF_CODES = {"ivf": "Flat", "ivf_sq8": "SQ8", "ivf_pq": None}  # ivf_pq: PQ<pq_m>x4fs


def choose_spec(n_users: int, cfg: GraphSettings, dim: int = 64, device: str = "cpu") -> IndexSpec:
    """The index for ``n_users`` under the config (``auto``: flat when small, IVF-Flat, then IVF-SQ8
    with exact re-ranking when large); ``device``: where it will be searched (a GPU quantiser is exact)."""
    kind = cfg.index
    if kind == "auto":
        kind = (
            "flat" if n_users <= cfg.flat_max_users else "ivf" if n_users <= cfg.ivf_max_users else "ivf_sq8"
        )
    if kind in IVF_KINDS:
        nlist = cfg.ivf_nlist or int(4 * math.sqrt(max(n_users, 1)))
        nlist = max(1, min(nlist, n_users // 39 or 1))  # faiss k-means wants >= 39 training points per list
        hnsw_m = 32 if device == "cpu" and nlist >= cfg.hnsw_quantizer_min_nlist else 0
        ivf = IndexSpec(kind, nlist=nlist, nprobe=min(cfg.ivf_nprobe, nlist), quantizer_hnsw_m=hnsw_m)
        if kind == "ivf_sq8":
            return replace(ivf, k_factor=cfg.sq_k_factor)
        if kind == "ivf_pq":
            pq_m = max(m for m in range(1, dim // 2 + 1) if dim % m == 0)  # 2 dims per 4-bit code
            return replace(ivf, pq_m=pq_m, k_factor=cfg.pq_k_factor)
        return ivf
    if kind == "hnsw":
        return IndexSpec(
            "hnsw", hnsw_m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef_search=cfg.hnsw_ef_search
        )
    return IndexSpec("flat")


def empty_index(spec: IndexSpec, dim: int):
    """An untrained, empty CPU index of this spec that accepts ``add_with_ids``."""
    import faiss

    index: Any  # faiss's SWIG proxies: index_factory returns the concrete subclass at run time
    if spec.kind in IVF_KINDS:
        quantizer = f"_HNSW{spec.quantizer_hnsw_m}" if spec.quantizer_hnsw_m else ""
        codes = IVF_CODES[spec.kind] or f"PQ{spec.pq_m}x4fs"
        index = faiss.index_factory(dim, f"IVF{spec.nlist}{quantizer},{codes}", faiss.METRIC_INNER_PRODUCT)
        set_search_params(index, spec)
        return index
    if spec.kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap2,HNSW{spec.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw = _hnsw(index)
        hnsw.efConstruction = spec.ef_construction
        hnsw.efSearch = spec.ef_search
        return index
    return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def build_index(uv: UserVectors, spec: IndexSpec, cfg: GraphSettings):
    """Train (IVF: k-means on a seeded sample) and fill a CPU index with every user's vector."""
    import faiss

    index = empty_index(spec, uv.dim)
    if spec.kind in IVF_KINDS:
        rng = np.random.default_rng(cfg.seed)
        n_train = min(len(uv), spec.nlist * cfg.ivf_train_per_list)
        sample = np.sort(rng.choice(len(uv), n_train, replace=False))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = cfg.seed + 1234
        ivf.cp.min_points_per_centroid = 1  # the sample size is our choice (ivf_train_per_list): no warning
        index.train(uv.vectors[sample])
    if len(uv):
        index.add_with_ids(uv.vectors, uv.ids)
    return index


def set_search_params(index, spec: IndexSpec) -> None:
    """Apply the query-time knobs (nprobe / efSearch) to a CPU index read back from disk."""
    import faiss

    if spec.kind in IVF_KINDS:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = spec.nprobe
        if spec.quantizer_hnsw_m:  # the centroid graph's beam must cover the lists probed
            quantizer: Any = faiss.downcast_index(ivf.quantizer)  # IndexHNSWFlat at run time
            quantizer.hnsw.efSearch = max(64, 2 * spec.nprobe)
    elif spec.kind == "hnsw":
        _hnsw(index).efSearch = spec.ef_search


def _hnsw(index: Any) -> Any:
    """The HNSW graph inside an ``IDMap2,HNSW..`` index (its ``.index`` is the IndexHNSW)."""
    import faiss

    inner: Any = faiss.downcast_index(index.index)  # IndexHNSWFlat at run time
    return inner.hnsw


def choose_device(use_gpu: str, num_gpus: int, kind: str) -> str:
    """``"gpu"`` or ``"cpu"``: the GPU only when one exists (``auto``) or is demanded (``always``)."""
    if use_gpu not in ("auto", "never", "always"):
        raise ValueError(f"graph.use_gpu must be auto, never or always, got {use_gpu!r}")
    if use_gpu == "always" and num_gpus < 1:
        raise ValueError("graph.use_gpu=always but faiss sees no GPU (faiss-cpu installed, or no device)")
    if use_gpu == "never" or num_gpus < 1 or kind in ("hnsw", "ivf_pq"):  # no GPU HNSW / fast-scan PQ
        return "cpu"
    return "gpu"


def on_device(index, device: str):
    """The index to search with: a GPU copy on ``gpu``, the index itself on ``cpu``."""
    if device == "cpu":
        return index
    import faiss

    return faiss.index_cpu_to_all_gpus(index)


class Searcher:
    """``index.search`` with exact re-ranking: the ``k_factor`` x k best approximate candidates are
    re-scored against the float vectors of ``uv`` (ids in the index are user ids). Same call shape
    as a faiss index, so every caller (kNN, calibration, lookalike) takes either."""

    def __init__(self, index, uv: UserVectors, k_factor: int, chunk: int = 2048):
        self.index, self.uv, self.k_factor, self.chunk = index, uv, k_factor, chunk

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_d = np.full((len(x), k), -np.inf, np.float32)
        out_i = np.full((len(x), k), -1, np.int64)
        for lo in range(0, len(x), self.chunk):
            q = x[lo : lo + self.chunk]
            _, cand = self.index.search(q, k * self.k_factor)  # (b, m) approximate
            pos = self.uv.positions(cand)  # -1 for padding / unknown
            exact = np.einsum("bd,bmd->bm", q, self.uv.vectors[np.maximum(pos, 0)])  # (b, m)
            exact[pos < 0] = -np.inf
            top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            out_d[lo : lo + len(q)] = np.take_along_axis(exact, top, axis=1)
            out_i[lo : lo + len(q)] = np.where(
                np.isfinite(out_d[lo : lo + len(q)]), np.take_along_axis(cand, top, axis=1), -1
            )
        return out_d, out_i


def searcher(index, spec: IndexSpec, uv: UserVectors):
    """What to call ``.search`` on: the index itself, or a re-ranking `Searcher` for quantised codes."""
    return Searcher(index, uv, spec.k_factor) if spec.k_factor else index


def num_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def save_index(index, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def load_index(path: Path, spec: IndexSpec):
    import faiss

    index = faiss.read_index(str(path))
    set_search_params(index, spec)
    return index
