"""Validation of a generation: is this hour's (or this backfill's) output fit to be marked done?

A *generation* is everything one run wrote for one ``(model, as_of)``: the embedding files, the
vectors in Redis and the graph. Four checks, each a small pure function on numpy arrays so it can be
tested on hand-made inputs, then `judge` turns the measurements into a pass/fail report:

* **coverage**  share of the expected users (the interval's active users, or every known user in a
  backfill) that got a vector: ``|vectors ∩ expected| / |expected| >= refresh.min_coverage``; a
  sample of them must also be readable through the lookup client (Redis).
* **norms**     no NaN/inf component, and every vector L2-normalised (``|‖v‖ - 1| <= tolerance``).
* **drift**     the mean cosine of the same users' vectors in the previous validated generation and
  in this one (``>= refresh.min_drift_cosine``); judged only when enough users are in both.
* **recall**    the graph's recall@k against exact search, from the graph manifest
  (``>= refresh.min_graph_recall``).

A failed check raises `GenerationRejected`; the run then stops before its manifest is recorded, so
nothing is marked done, and the failure callback alerts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class GenerationRejected(RuntimeError):
    """A generation failed validation; the message lists every failed check."""


@dataclass(frozen=True)
class Check:
    name: str  # coverage | norms | drift | recall | lookup
    ok: bool  # passed (or skipped, see detail)
    value: float | None  # the measurement (None when skipped)
    threshold: float | None  # what it was judged against
    detail: str = ""  # a human sentence: why it passed, failed or was skipped


@dataclass
class GenerationReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def raise_if_failed(self, what: str) -> None:
        if not self.ok:
            lines = "; ".join(f"{c.name}: {c.detail}" for c in self.failures())
            raise GenerationRejected(f"{what} rejected: {lines}")


def coverage(expected_ids: np.ndarray, got_ids: np.ndarray) -> tuple[float, int]:
    """(share of expected ids present in got_ids, number missing). Empty expectation -> (1.0, 0)."""
    expected = np.unique(np.asarray(expected_ids, dtype=np.int64))
    if expected.size == 0:
        return 1.0, 0
    present = np.isin(expected, np.asarray(got_ids, dtype=np.int64))
    return float(present.mean()), int((~present).sum())


def norm_stats(vectors: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Rows with a non-finite component, rows whose L2 norm is off 1 by more than ``tolerance``."""
    v = np.asarray(vectors, dtype=np.float32)  # (N, D)
    finite = np.isfinite(v).all(axis=1)  # (N,)
    norms = np.linalg.norm(np.where(np.isfinite(v), v, 0.0), axis=1)  # (N,)
    bad_norm = finite & (np.abs(norms - 1.0) > tolerance)
    return {
        "rows": int(v.shape[0]),
        "non_finite_rows": int((~finite).sum()),
        "bad_norm_rows": int(bad_norm.sum()),
        "min_norm": float(norms[finite].min()) if finite.any() else None,
        "max_norm": float(norms[finite].max()) if finite.any() else None,
    }


def drift(
    old_ids: np.ndarray, old_vecs: np.ndarray, new_ids: np.ndarray, new_vecs: np.ndarray
) -> tuple[float | None, int]:
    """(mean cosine of the same users' old vs new vectors, number of common users)."""
    old_ids, new_ids = np.asarray(old_ids, dtype=np.int64), np.asarray(new_ids, dtype=np.int64)
    common, i_old, i_new = np.intersect1d(old_ids, new_ids, assume_unique=False, return_indices=True)
    if common.size == 0:
        return None, 0
    a = np.asarray(old_vecs, dtype=np.float32)[i_old]  # (C, D)
    b = np.asarray(new_vecs, dtype=np.float32)[i_new]  # (C, D)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (C,)
    cos = (a * b).sum(axis=1) / np.maximum(denom, 1e-12)  # (C,)
    return float(cos.mean()), int(common.size)


@dataclass(frozen=True)
class Thresholds:
    min_coverage: float  # orchestration.min_coverage
    min_drift_cosine: float  # orchestration.min_drift_cosine
    min_graph_recall: float  # orchestration.min_graph_recall
    min_drift_users: int  # orchestration.min_drift_users
    norm_tolerance: float  # orchestration.norm_tolerance

    @classmethod
    def from_settings(cls, settings) -> Thresholds:
        o = settings.orchestration
        return cls(
            o.min_coverage, o.min_drift_cosine, o.min_graph_recall, o.min_drift_users, o.norm_tolerance
        )


def judge_vectors(
    t: Thresholds,
    expected_ids: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> GenerationReport:
    """Coverage, norms and drift of the encoded vectors (judged on disk, before anything is published)."""
    report = GenerationReport()
    cov, missing = coverage(expected_ids, ids)
    report.checks.append(
        Check(
            "coverage",
            cov >= t.min_coverage,
            cov,
            t.min_coverage,
            f"{missing} of {len(np.unique(expected_ids))} expected users have no vector",
        )
    )
    ns = norm_stats(vectors, t.norm_tolerance)
    bad = ns["non_finite_rows"] + ns["bad_norm_rows"]
    report.checks.append(
        Check(
            "norms",
            bad == 0 and ns["rows"] > 0,
            float(bad),
            0.0,
            f"{ns['non_finite_rows']} NaN/inf rows, {ns['bad_norm_rows']} rows off unit norm "
            f"(norms in [{ns['min_norm']}, {ns['max_norm']}]) of {ns['rows']}",
        )
    )
    if previous is None:
        report.checks.append(
            Check("drift", True, None, t.min_drift_cosine, "skipped: no previous generation")
        )
    else:
        mean_cos, n = drift(previous[0], previous[1], ids, vectors)
        if n < t.min_drift_users:
            report.checks.append(
                Check(
                    "drift",
                    True,
                    mean_cos,
                    t.min_drift_cosine,
                    f"skipped: only {n} users in both generations (< {t.min_drift_users})",
                )
            )
        else:
            report.checks.append(
                Check(
                    "drift",
                    mean_cos >= t.min_drift_cosine,
                    mean_cos,
                    t.min_drift_cosine,
                    f"mean cosine {mean_cos:.3f} over {n} users in both generations",
                )
            )
    return report


def judge_graph(t: Thresholds, graph_recall: float | None) -> GenerationReport:
    """The graph's sampled recall@k against exact search (judged before its lists are published)."""
    if graph_recall is None:
        return GenerationReport(
            [Check("recall", False, None, t.min_graph_recall, "the graph manifest has no recall")]
        )
    return GenerationReport(
        [
            Check(
                "recall",
                graph_recall >= t.min_graph_recall,
                graph_recall,
                t.min_graph_recall,
                f"graph recall@k {graph_recall:.3f}",
            )
        ]
    )


def judge_lookup(found: int, asked: int) -> GenerationReport:
    """After publishing: a sample of the expected users is readable through the lookup client."""
    return GenerationReport(
        [
            Check(
                "lookup",
                found == asked,
                float(found),
                float(asked),
                f"{found} of {asked} sampled users readable through the lookup client",
            )
        ]
    )


def judge(
    t: Thresholds,
    expected_ids: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    previous: tuple[np.ndarray, np.ndarray] | None,
    graph_recall: float | None,
    lookup_found: tuple[int, int] | None,
) -> GenerationReport:
    """Every check on one generation at once (tests and offline judging; the flows judge in stages)."""
    report = judge_vectors(t, expected_ids, ids, vectors, previous)
    report.checks += judge_graph(t, graph_recall).checks
    if lookup_found is not None:
        report.checks += judge_lookup(*lookup_found).checks
    return report
