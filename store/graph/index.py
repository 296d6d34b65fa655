"""Choosing, building and placing the FAISS index over every user's vector.

Vectors are L2-normalised, so the metric is inner product (= cosine). User ids live *in* the index
(``add_with_ids``: IVF natively, flat and HNSW through ``IndexIDMap2``), so search returns user ids.

Which index (``graph.index``, default ``auto``):

* ``flat``  exact search; O(N) per query. Chosen by ``auto`` up to ``graph.flat_max_users``.
* ``ivf``   IVF-Flat: k-means coarse quantiser with ``nlist`` (default 4·sqrt(N)) lists, ``nprobe``
  lists scanned per query. Chosen by ``auto`` above ``flat_max_users``. Supports ``remove_ids`` (one
  pass over every list per call, so the incremental build removes all touched users in *one* call).
* ``hnsw``  graph index, fastest queries, slow build, and it cannot remove vectors; an incremental
  build on HNSW therefore always falls back to a full rebuild (see store.graph.build).

Device: faiss GPU (``index_cpu_to_gpu``) only when ``faiss.get_num_gpus() > 0`` (``use_gpu=auto``) or
when asked (``always``: error without a GPU); HNSW has no GPU version and stays on the CPU. Indexes are
always saved in their CPU form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from store.graph.settings import GraphSettings
from store.graph.vectors import UserVectors


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # "flat" | "ivf" | "hnsw"
    nlist: int = 0  # ivf: inverted lists
    nprobe: int = 0  # ivf: lists scanned per query
    hnsw_m: int = 0  # hnsw: links per node
    ef_construction: int = 0  # hnsw: build beam
    ef_search: int = 0  # hnsw: search beam

    def params(self) -> dict:
        """The parameters that matter for this kind (for the manifest)."""
        keep = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_construction", "ef_search")}
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k in keep[self.kind]}}


def choose_spec(n_users: int, cfg: GraphSettings) -> IndexSpec:
    """The index for ``n_users`` under the config (``auto``: flat when small, IVF when large)."""
    kind = cfg.index
    if kind == "auto":
        kind = "flat" if n_users <= cfg.flat_max_users else "ivf"
    if kind == "ivf":
        nlist = cfg.ivf_nlist or int(4 * math.sqrt(max(n_users, 1)))
        nlist = max(1, min(nlist, n_users // 39 or 1))  # faiss k-means wants >= 39 training points per list
        return IndexSpec("ivf", nlist=nlist, nprobe=min(cfg.ivf_nprobe, nlist))
    if kind == "hnsw":
        return IndexSpec("hnsw", hnsw_m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                         ef_search=cfg.hnsw_ef_search)
    return IndexSpec("flat")


def empty_index(spec: IndexSpec, dim: int):
    """An untrained, empty CPU index of this spec that accepts ``add_with_ids``."""
    import faiss

    if spec.kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{spec.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.nprobe = spec.nprobe
        return index
    if spec.kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap2,HNSW{spec.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.downcast_index(index.index).hnsw
        hnsw.efConstruction = spec.ef_construction
        hnsw.efSearch = spec.ef_search
        return index
    return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def build_index(uv: UserVectors, spec: IndexSpec, cfg: GraphSettings):
    """Train (IVF: k-means on a seeded sample) and fill a CPU index with every user's vector."""
    index = empty_index(spec, uv.dim)
    if spec.kind == "ivf":
        rng = np.random.default_rng(cfg.seed)
        n_train = min(len(uv), spec.nlist * cfg.ivf_train_per_list)
        sample = np.sort(rng.choice(len(uv), n_train, replace=False))
        index.cp.seed = cfg.seed + 1234
        index.train(uv.vectors[sample])
    if len(uv):
        index.add_with_ids(uv.vectors, uv.ids)
    return index


def set_search_params(index, spec: IndexSpec) -> None:
    """Apply the query-time knobs (nprobe / efSearch) to a CPU index read back from disk."""
    import faiss

    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = spec.ef_search


def choose_device(use_gpu: str, num_gpus: int, kind: str) -> str:
    """``"gpu"`` or ``"cpu"``: the GPU only when one exists (``auto``) or is demanded (``always``)."""
    if use_gpu not in ("auto", "never", "always"):
        raise ValueError(f"graph.use_gpu must be auto, never or always, got {use_gpu!r}")
    if use_gpu == "always" and num_gpus < 1:
        raise ValueError("graph.use_gpu=always but faiss sees no GPU (faiss-cpu installed, or no device)")
    if use_gpu == "never" or num_gpus < 1 or kind == "hnsw":  # faiss has no GPU HNSW
        return "cpu"
    return "gpu"


def on_device(index, device: str):
    """The index to search with: a GPU copy on ``gpu``, the index itself on ``cpu``."""
    if device == "cpu":
        return index
    import faiss

    return faiss.index_cpu_to_all_gpus(index)


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
