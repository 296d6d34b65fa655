"""The independent reference SASRec of `bench.reference_sasrec`: its rows, and that it learns order."""

from __future__ import annotations

import numpy as np
import torch

from bench.reference_sasrec import ReferenceConfig, item_rows, train_reference, training_pairs
from encoder.data import item_catalogue, read_sasrec


def _cycle_file(tmp_path, users: int = 300, items: int = 40, seed: int = 0):
    """Every user walks the item cycle 1 -> 2 -> ... -> items -> 1 from a random start: the next item is
    a function of the newest one, while every item is about equally popular."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, users + 1):
        start, n = int(rng.integers(items)), int(rng.integers(6, 12))
        lines.append(" ".join(map(str, [u, *(1 + (start + i) % items for i in range(n))])))
    path = tmp_path / "cycle.txt"
    path.write_text("\n".join(lines) + "\n")
    return read_sasrec(path)


def test_rows_are_left_padded_with_the_newest_items_last(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("1 10 20 30 40\n2 30 10\n")
    seq = read_sasrec(path)
    catalogue = item_catalogue(seq, ())
    rows = item_rows(seq, catalogue, max_len=3)
    to_id = {int(p) + 1: int(i) for p, i in enumerate(catalogue.ids)}  # position + 1 -> raw id
    assert [[to_id.get(int(x), 0) for x in row] for row in rows] == [[20, 30, 40], [0, 30, 10]]
    x, y = training_pairs(seq, catalogue, max_len=3)
    assert torch.equal(x[:, 1:], y[:, :-1])  # each input position predicts the item after it


def test_the_reference_learns_the_next_item_far_above_popularity(tmp_path):
    torch.manual_seed(0)
    cfg = ReferenceConfig(d_model=32, negatives=16, batch_size=64, epochs=30, eval_every=5, patience=10)
    result = train_reference(cfg, _cycle_file(tmp_path), log=lambda _line: None)
    assert result["users_evaluated"] == 300
    assert result["pop_ndcg10"] < 0.2
    assert result["reference_ndcg10"] > 0.6, result
