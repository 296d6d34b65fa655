"""Length bucketing: cut a window of users into batches of similar length under a token budget.

With heavy-tailed activity most users have a handful of events and a few have N. Padding every
batch to N wastes most of the compute; sorting a window of users by length and cutting it into
consecutive runs makes each batch's padded length close to its members' true lengths. A batch holds
as many users as fit ``rows * longest <= max_batch_tokens``, so short users travel in large batches
and long users in small ones, and activation memory per batch stays bounded.

The model's padding masking is exact, so a user's vector does not depend on which batch it lands in
(tests check this); the engine restores the window's original row order before writing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchPlan:
    rows: np.ndarray  # (B,) row indices into the window, shortest first
    padded_len: int  # the longest member: every row of the batch is padded to this
    tokens: int  # useful (non-padded) tokens


def plan_batches(
    lengths: np.ndarray, max_batch_tokens: int, max_pad_ratio: float = 1.25, pad_slack: int = 4
) -> list[BatchPlan]:
    """Sort rows by length and cut them greedily into batches with ``rows * longest <= max_batch_tokens``.

    ``lengths`` are the (already truncated to max_len) event counts of the window's rows. A batch
    also ends before a row longer than ``max_pad_ratio * shortest + pad_slack``, so no row is padded
    by more than ~25 %: in the sparse long tail a batch of 150..200-event users would otherwise
    waste a third of its compute. A single row longer than the budget still gets a batch of its own.
    """
    if max_batch_tokens <= 0:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)  # (W,)
    order = np.argsort(lengths, kind="stable")  # (W,) shortest first, ties in row order
    sorted_len = lengths[order]
    n, i, plans = len(order), 0, []
    while i < n:
        stop = min(n, i + max_batch_tokens)  # a batch never has more rows than tokens
        ends = np.arange(i + 1, stop + 1)  # candidate exclusive ends
        cost = (ends - i) * sorted_len[ends - 1]  # padded tokens, non-decreasing in the end
        j = i + max(1, int(np.searchsorted(cost, max_batch_tokens, side="right")))
        similar = int(np.searchsorted(sorted_len, sorted_len[i] * max_pad_ratio + pad_slack, side="right"))
        j = max(i + 1, min(j, similar))
        rows = order[i:j]
        plans.append(
            BatchPlan(rows=rows, padded_len=int(sorted_len[j - 1]), tokens=int(sorted_len[i:j].sum()))
        )
        i = j
    return plans


def padded_fixed_batches(n_rows: int, batch_rows: int) -> list[np.ndarray]:
    """The naive plan: consecutive rows in file order, a fixed number of rows per batch."""
    return [np.arange(i, min(n_rows, i + batch_rows)) for i in range(0, n_rows, batch_rows)]
