"""Baselines scored by the same metric code on the same split (`encoder.evaluate` scores them).

* `popularity_scores`: every user gets the catalogue ranked by training-positive counts.
* `bag_of_items_scores`: a user vector = mean of the *learned* item vectors of the user's history
  (no order, no transformer), scored against the same item vectors.
* The plain-SASRec baseline is our own model with only the item-id table (no action, time,
  attribute or context features); see `plain_sasrec_overrides`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from encoder.data import Catalogue, history_items, positive_counts

PLAIN_SASREC = {"use_action": False, "use_time": False, "use_attributes": False, "use_context": False}


def plain_sasrec_overrides(overrides: dict | None = None) -> dict:
    """ModelConfig overrides of the plain-SASRec ablation (item ids + positions only)."""
    return {**(overrides or {}), **PLAIN_SASREC}


def popularity_scores(train: pa.Table, catalogue: Catalogue, positive_types):
    ids, counts = positive_counts(train, positive_types)
    score = torch.zeros(len(catalogue))
    pos = catalogue.index(ids)
    score[torch.from_numpy(pos[pos >= 0])] = torch.from_numpy(counts[pos >= 0].astype(np.float32))
    return lambda lo, hi: score.expand(hi - lo, -1)


def bag_of_items_scores(inputs: pa.Table, catalogue: Catalogue, item_vectors: torch.Tensor):
    """Mean of the history's item vectors (each distinct occurrence counted), L2-normalised."""
    offsets, flat = history_items(inputs, catalogue)
    rows = torch.from_numpy(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)))
    users = torch.zeros(len(offsets) - 1, item_vectors.shape[1]).index_add_(
        0, rows, item_vectors[torch.from_numpy(flat)]
    )
    users = F.normalize(users, dim=-1)
    return lambda lo, hi: users[lo:hi] @ item_vectors.T
