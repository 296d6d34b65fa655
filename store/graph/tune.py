"""Per-build calibration of the query-time knob (IVF ``nprobe``, HNSW ``efSearch``) to a recall target.

How hard a kNN graph is depends on the data (cluster tightness, intrinsic dimension), which drifts
with every model. Instead of a fixed ``nprobe``, each full build measures recall@k on a calibration
sample of users against exact search for a ladder of settings (cheap: a few thousand queries against
the millions of the graph) and keeps the smallest one that reaches ``graph.target_recall``. The
build's reported recall is then measured on a *different* sample, so it is not biased by
the choice. ``target_recall = 0`` turns calibration off and uses the configured value.

**An early verdict.** Some vectors cannot reach the target at any setting the ladder allows — the
near-uniform vectors of an untrained model are the usual case: recall then grows by a few points per
doubling of ``nprobe`` and the climb to the cap, followed by a full search at the cap, costs minutes
for a graph that will be rejected anyway. After three steps the recall is extrapolated (linear in
log2 of the knob, with a generous allowance); when even that cannot reach the target at the cap,
calibration stops and raises `RecallUnreachable` with the measurements.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from store.graph.index import IndexSpec, searcher, set_search_params
from store.graph.knn import recall_at_k, search_neighbours
from store.graph.vectors import UserVectors

_NPROBE = ("nprobe", (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256))
LADDERS = {
    "ivf": _NPROBE,
    "ivf_sq8": _NPROBE,
    "ivf_pq": _NPROBE,
    "hnsw": ("ef_search", (32, 48, 64, 96, 128, 192, 256, 384, 512)),
}


EARLY_STOP_AFTER = 3  # ladder steps measured before an extrapolation is trusted
EXTRAPOLATION_SLACK = 2.0  # allowance: the recall may grow this many times faster than measured


class RecallUnreachable(RuntimeError):
    """No setting on the ladder can reach the target recall on these vectors (a clear, early verdict)."""


def unreachable(tried: list[dict], name: str, cap: int, target: float) -> str | None:
    """A verdict when the measured climb, extrapolated generously to the cap, still misses ``target``."""
    if len(tried) < EARLY_STOP_AFTER:
        return None
    (v0, r0), (v1, r1) = [(t[name], t["recall"]) for t in tried[-2:]]
    if v1 <= v0 or cap <= v1:
        return None
    per_doubling = max(r1 - r0, 0.0) / np.log2(v1 / v0)
    projected = r1 + EXTRAPOLATION_SLACK * per_doubling * np.log2(cap / v1) + 0.02
    if projected >= target:
        return None
    return (
        f"recall@k cannot reach {target} with {name} <= {cap}: {r1:.3f} at {name}={v1}, "
        f"+{per_doubling:.3f} per doubling, at most ~{min(projected, 1.0):.3f} at the cap "
        "(vectors with little neighbourhood structure, e.g. an untrained model)"
    )


def _with_knob(spec: IndexSpec, name: str, value: int) -> IndexSpec:
    """``spec`` with its query-time knob (``nprobe`` or ``ef_search``) set to ``value``."""
    return replace(spec, nprobe=value) if name == "nprobe" else replace(spec, ef_search=value)


def knob(spec: IndexSpec) -> int | None:
    """The value of ``spec``'s query-time knob (``nprobe`` / ``ef_search``), None for an exact index."""
    if spec.kind not in LADDERS:
        return None
    return spec.nprobe if LADDERS[spec.kind][0] == "nprobe" else spec.ef_search


def calibrate(
    index,
    spec: IndexSpec,
    uv: UserVectors,
    check: tuple[np.ndarray, np.ndarray],
    target: float,
    limit: int,
    floor: int = 0,
) -> tuple[IndexSpec, list[dict]]:
    """The cheapest spec on the ladder reaching ``target`` recall@k (else the largest tried), applied
    to ``index``; ladder values below ``floor`` are not tried. Raises `RecallUnreachable` early when
    the target is out of reach (see module doc). ``check``: the calibration sample as (rows in ``uv``,
    their exact top-k ids (n, k)), from store.graph.exact_sample; k is its width."""
    rows, exact = check
    k = exact.shape[1]
    if spec.kind not in LADDERS or target <= 0 or len(uv) <= k + 1:
        return spec, []
    name, ladder = LADDERS[spec.kind]
    cap = min(limit, spec.nlist) if name == "nprobe" else limit
    steps = [v for v in ladder if min(floor, cap) <= v <= cap] or [cap]
    tried = []
    chosen = _with_knob(spec, name, steps[-1])
    for value in steps:
        candidate = _with_knob(spec, name, value)
        set_search_params(index, candidate)
        recall = recall_at_k(search_neighbours(searcher(index, candidate, uv), uv, rows, k)[0], exact)
        tried.append({name: value, "recall": round(recall, 4)})
        if recall >= target:
            chosen = candidate
            break
        verdict = unreachable(tried, name, cap, target)
        if verdict is not None:
            raise RecallUnreachable(verdict)
    set_search_params(index, chosen)
    return chosen, tried
