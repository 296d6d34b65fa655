"""`bench.quality`'s feature ablation: per-seed runs, their mean and spread, and the paired gains."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality import (
    FEATURE_ABLATION,
    SPORTS_QUICK,
    SYN_POSITIVES,
    feature_ablation,
    sports,
    summarise_ablation,
)
from core.datasets.synthetic import SyntheticConfig, generate
from encoder.data import events_to_sequences, leave_last_out
from soe.config import load_settings


def _report(ndcg: float, served: float | None = None) -> dict:
    report = {"ndcg@10": ndcg, "hr@10": 2 * ndcg, "train_s": 1.0}
    return report if served is None else {**report, "served_ndcg@10": served}


def test_the_summary_pairs_each_seed_with_the_item_ids_only_run_of_the_same_seed():
    reports = {
        "all": [_report(0.12), _report(0.10)],
        "no_action": [_report(0.11), _report(0.10)],
        "no_time": [_report(0.10), _report(0.11)],
        "no_attributes": [_report(0.09), _report(0.09)],
        "item_ids_only": [_report(0.10), _report(0.08)],
    }
    out = summarise_ablation(reports, "x")
    assert out["x_features_all_ndcg10"] == pytest.approx(0.11)
    assert out["x_features_all_hr10"] == pytest.approx(0.22)
    assert out["x_features_seeds"]["all"]["min"] == 0.10 and out["x_features_seeds"]["all"]["n"] == 2
    assert out["x_features_gain_pct"]["all"] == [20.0, 25.0]  # 0.12 / 0.10 and 0.10 / 0.08, per seed
    assert out["x_features_gain_pct"]["no_attributes"] == [-10.0, 12.5]
    assert "item_ids_only" not in out["x_features_gain_pct"]
    one_seed = summarise_ablation({name: runs[:1] for name, runs in reports.items()}, "x")
    assert "x_features_seeds" not in one_seed and one_seed["x_features_all_ndcg10"] == 0.12
    assert "x_features_all_served_ndcg10" not in out and "x_features_served_gain_pct" not in out  # no clock


def test_the_summary_pairs_the_hourly_served_figures_too():
    reports = {
        "all": [_report(0.12, served=0.06), _report(0.10, served=0.05)],
        "item_ids_only": [_report(0.10, served=0.04), _report(0.08, served=0.05)],
    }
    out = summarise_ablation(reports, "x")
    assert out["x_features_all_served_ndcg10"] == pytest.approx(0.055)
    assert out["x_features_served_gain_pct"]["all"] == [50.0, 0.0]
    assert out["x_features_gain_pct"]["all"] == [20.0, 25.0]  # the leave-last-out gains as before


def test_the_ablation_trains_every_variant_per_seed_and_reuses_the_full_models_runs():
    cfg = SyntheticConfig(n_users=120, n_items=300, n_clusters=4, hours=12, base_events_per_user=30.0)
    seq = events_to_sequences(generate(cfg).events)
    settings = load_settings()
    split = leave_last_out(seq, SYN_POSITIVES, settings.train.min_positives)
    reused = _report(0.5)  # stands for the headline run of seed 0, trained before on the same split
    train = {"threads": 1, "epochs": 1, "eval_users": 50}
    out = feature_ablation(settings, seq, SYN_POSITIVES, train, split, "t", seeds=2, all_runs=[reused])
    seeds = out["t_features_seeds"]
    assert set(seeds) == set(FEATURE_ABLATION) and all(s["n"] == 2 for s in seeds.values())
    assert seeds["all"]["max"] == 0.5  # seed 0 came from all_runs; seed 1 was trained here
    assert 0.0 <= seeds["all"]["min"] < 0.5
    assert seeds["item_ids_only"]["min"] > 0.0  # every variant trained and ranked
    assert all(len(g) == 2 for g in out["t_features_gain_pct"].values())


def test_the_sports_section_runs_on_any_sasrec_file_and_counts_the_users_it_could_not_evaluate(tmp_path):
    """`--sports-file` takes any SASRec file: "all users evaluated" compares with that file's users."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 121):  # each user walks the 30-item cycle from a random start
        start, n = int(rng.integers(30)), int(rng.integers(6, 10))
        lines.append(" ".join(map(str, [u, *(1 + (start + i) % 30 for i in range(n))])))
    lines.append("121 4 5")  # too short for leave-last-out (train, valid and test need 3 items)
    path = tmp_path / "cycle.txt"
    path.write_text("\n".join(lines) + "\n")
    out = sports(load_settings(), quick=True, train={"threads": 1, **SPORTS_QUICK}, seeds=1, path=path)
    assert out["sports_users_in_file"] == 121
    assert out["sports_users_evaluated"] == 120  # so the target "all users evaluated" is false here
    assert out["sports_items"] == 30
    assert 0.0 < out["sports_ndcg10"] <= 1.0 and 0.0 < out["sports_sasrec_plain_ndcg10"] <= 1.0
