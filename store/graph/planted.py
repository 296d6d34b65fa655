"""Planted-cluster user vectors and engagements: data whose right answers are known.

Used by the tests and `bench.graph` in place of real encoder output (stated in docs/graph.md):

* vectors: ``n_clusters`` unit centroids in ``dim`` dims, in families of ``family_size`` siblings
  (centroid = family direction + ``sibling_spread`` x a random direction); a user is its cluster's centroid
  plus a point of a per-cluster random ``rank``-dimensional subspace (scale ``spread``) plus isotropic
  noise (``noise`` per dim), L2-normalised. Real embeddings have a low intrinsic dimension; pure
  isotropic noise in 64 dims would make every neighbour nearly equidistant.
* engagements: every cluster owns ``items_per_cluster`` items with Zipf popularity; each positive of
  a user is an item of its own cluster with probability ``in_cluster``, else a globally popular item.
  Two independent days are drawn: day 1 feeds the candidates, day 2 is the held-out truth.

`write_embeddings` writes vectors as an encoder snapshot (embedding contract, shard directory with
``_SUCCESS``), so tests and the benchmark exercise the same reader as production.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import publish_dir
from core.contracts import TS, embedding_contract
from core.layout import Layout, utc


@dataclass(frozen=True)
class PlantedConfig:
    n_users: int = 10_000  # users
    dim: int = 64  # vector dim
    n_clusters: int = 50  # planted clusters
    family_size: int = 10  # clusters are grouped in families of this many siblings
    # cluster centroid = family centroid + this x random direction (small = similar siblings)
    sibling_spread: float = 1.0
    rank: int = 8  # intrinsic dim of the variation inside a cluster
    spread: float = 0.6  # scale of the in-cluster variation
    noise: float = 0.04  # isotropic noise per dim
    items_per_cluster: int = 200  # items owned by each cluster
    positives_per_day: float = 5.0  # mean positives per user per day
    in_cluster: float = 0.8  # share of positives on the user's own cluster's items
    zipf: float = 1.1  # item popularity exponent
    seed: int = 0  # the same seed gives the same data


@dataclass
class Planted:
    user_ids: np.ndarray  # (N,) int64
    cluster: np.ndarray  # (N,) int64 planted cluster of each user
    vectors: np.ndarray  # (N, D) float32 unit rows
    centroids: np.ndarray  # (C, D) float32


def planted_vectors(cfg: PlantedConfig) -> Planted:
    rng = np.random.default_rng(cfg.seed)
    n_fam = -(-cfg.n_clusters // cfg.family_size)
    fam = rng.standard_normal((n_fam, cfg.dim)).astype(np.float32)
    fam /= np.linalg.norm(fam, axis=1, keepdims=True)
    r = rng.standard_normal((cfg.n_clusters, cfg.dim)).astype(np.float32)
    direction = r / np.linalg.norm(r, axis=1, keepdims=True)
    c = fam[np.arange(cfg.n_clusters) // cfg.family_size] + cfg.sibling_spread * direction
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    basis = rng.standard_normal((cfg.n_clusters, cfg.rank, cfg.dim)).astype(np.float32) / np.sqrt(cfg.dim)
    cluster = rng.integers(0, cfg.n_clusters, cfg.n_users)
    x = c[cluster]  # (N, D)
    for lo in range(0, cfg.n_users, 100_000):  # chunked: (n, rank) @ (rank, D) per user
        sl = slice(lo, lo + 100_000)
        z = rng.standard_normal((len(cluster[sl]), cfg.rank)).astype(np.float32) * cfg.spread
        x[sl] += np.einsum("nr,nrd->nd", z, basis[cluster[sl]])
    x += rng.standard_normal(x.shape).astype(np.float32) * cfg.noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(cfg.n_users * 3)[: cfg.n_users].astype(np.int64) + 1  # sparse, unordered ids
    return Planted(ids, cluster.astype(np.int64), x, c)


def planted_positives(cfg: PlantedConfig, cluster: np.ndarray, day: int) -> list[np.ndarray]:
    """One day of positive item ids per user (item id = cluster * items_per_cluster + rank)."""
    rng = np.random.default_rng([cfg.seed, day])
    ranks = np.arange(1, cfg.items_per_cluster + 1)
    p = ranks**-cfg.zipf
    p /= p.sum()
    n = rng.poisson(cfg.positives_per_day, len(cluster))
    total = int(n.sum())
    owner = np.repeat(cluster, n)
    own = rng.random(total) < cfg.in_cluster
    owner = np.where(own, owner, rng.integers(0, cfg.n_clusters, total))  # else a random cluster's item
    items = owner * cfg.items_per_cluster + rng.choice(cfg.items_per_cluster, total, p=p)
    return np.split(items.astype(np.int64), np.cumsum(n)[:-1])


def write_embeddings(
    layout: Layout,
    model_version: str,
    as_of: datetime | str,
    user_ids: np.ndarray,
    vectors: np.ndarray,
    shard: int = 0,
) -> None:
    """Publish vectors as one encoder shard: embeddings/<model>/as_of=<T>/shard=<i>/part-0.parquet."""
    as_of = utc(as_of)
    n, dim = vectors.shape
    contract = embedding_contract(dim)
    flat = pa.array(np.asarray(vectors, np.float16).ravel(), pa.float16())
    table = pa.Table.from_arrays(
        [
            pa.array(user_ids, pa.int64()),
            pa.FixedSizeListArray.from_arrays(flat, dim),
            pa.array([model_version] * n, pa.string()),
            pa.array([as_of] * n, TS),
            pa.array(np.ones(n, np.int32)),
        ],
        schema=contract.schema,
    )
    with publish_dir(layout.embeddings(model_version, as_of) / f"shard={shard:05d}", {"rows": n}) as tmp:
        pq.write_table(table, tmp / "part-0.parquet")
