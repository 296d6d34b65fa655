"""The promotion gate: does a freshly trained candidate replace the current model?

Both models are evaluated on the **same split** (same trainset, same as_of), so their NDCG@10 are
comparable. The rule, with every number configurable in the ``flows`` section:

1. no current model -> promote (the first model);
2. candidate NDCG@10 >= current + ``min_ndcg_gain`` -> promote (better);
3. the current model is stale (trained more than ``max_staleness_hours`` before this as_of) and the
   candidate is not worse (NDCG@10 >= current - ``stale_tolerance``) -> promote (fresher, as good);
4. otherwise keep the current model.

`decide` is pure: the training flow gathers the metrics and ages and records its `Decision`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

METRIC = "ndcg@10"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float | None  # candidate NDCG@10
    current: float | None  # current NDCG@10 on the same split (None: no current model)
    current_age_hours: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric(metrics: dict[str, Any] | None, name: str) -> float | None:
    if metrics is None:
        return None
    value = metrics.get(name)
    if value is None or not math.isfinite(float(value)):
        raise ValueError(f"evaluation metrics lack a finite {name!r}: {sorted(metrics)}")
    return float(value)


def decide(
    candidate_metrics: dict[str, Any],
    current_metrics: dict[str, Any] | None,
    current_age_hours: float | None,
    min_ndcg_gain: float = 0.0,
    max_staleness_hours: float = 7 * 24,
    stale_tolerance: float = 0.005,
) -> Decision:
    cand = _metric(candidate_metrics, METRIC)
    cur = _metric(current_metrics, METRIC)
    if cur is None:
        return Decision(True, "no current model", cand, None, None)
    if cand >= cur + min_ndcg_gain and (min_ndcg_gain > 0 or cand > cur):
        return Decision(
            True,
            f"better: {METRIC} {cand:.4f} vs {cur:.4f} (gain >= {min_ndcg_gain})",
            cand,
            cur,
            current_age_hours,
        )
    stale = current_age_hours is not None and current_age_hours > max_staleness_hours
    if stale and cand >= cur - stale_tolerance:
        return Decision(
            True,
            f"current is stale ({current_age_hours:.0f} h > {max_staleness_hours} h) and the "
            f"candidate is not worse: {cand:.4f} vs {cur:.4f}",
            cand,
            cur,
            current_age_hours,
        )
    why = "stale but the candidate is worse" if stale else "not better"
    return Decision(False, f"{why}: {METRIC} {cand:.4f} vs {cur:.4f}", cand, cur, current_age_hours)
