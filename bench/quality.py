"""Quality of the user vectors: ML-100K full ranking vs baselines, staleness, synthetic planted purity.

    python -m bench.quality [--quick] [--threads N] [--seeds N] [--sections ...] [--session-focus F]

1. **MovieLens-100K, leave-last-out, full ranking** (all 1,682 items; the user's history items are
   excluded from the candidates; target = the user's last positive = rating >= 4; validation = the
   one before; max_len 50). Our model (last-position pooling), the same with attention pooling, the
   plain-SASRec ablation (item ids only), popularity and bag-of-items, all on the same split with the
   same metric code (`encoder.metrics.ranking_metrics`). Beside it, the same test targets as the
   hourly job serves them (``served_*``, `encoder.evaluate.served_hourly`): each scored by the vector
   computed at the hour boundary before it, from the events before that boundary, so the vector does
   not see the target's own hour and knows how long the user has been idle. The feature ablation
   reports both.
2. **Synthetic 2-day log** (`core.datasets.synthetic`, planted clusters), one model trained only on
   the first day (events <= T):
   * planted structure: purity@20 of each user's nearest neighbours (cosine, exact) at T against
     the planted primary cluster, random neighbours beside;
   * staleness: vectors at T score each user's positives in (T, T+24h]; vectors recomputed just
     before each target score the same events. staleness_loss_pct = 100 * (1 - recall@10 stale /
     recall@10 fresh), per target event. (ML-100K has too few users active on both sides of any T.)
   ``--session-focus F`` plants session intent in this log (`SyntheticConfig.session_focus`: that share
   of a session's interest draws keep to one interest), to ask whether the time features pay where
   sessions carry the signal.

3. **Amazon Sports and Outdoors** (`../shared/data/sasrec/Sports_and_Outdoors.txt`, SASRec text
   format; protocol and published numbers in the README beside it): leave-one-out (last item =
   test, the one before = validation), full ranking over all 18,357 items, the user's training
   items excluded, max length 50, all 35,598 users evaluated. The production encoder exactly as
   ``soe train --sasrec-file`` trains it (the defaults: sampled softmax with in-batch and uniform
   negatives, the tables at 16x the learning rate, the next item plus one of the next two items at
   weight 0.3), the plain-SASRec configuration (item ids and positions, next-item objective, sampled
   softmax over the in-batch items + logQ, one learning rate: the published "SASRec with sampled
   softmax" recipe) and popularity. Both train at most 30 epochs (cosine schedule, early stopping
   after 10 without a better validation NDCG@10), cut at 840 s. ``--seeds N`` repeats the
   headline rows (ML-100K and Sports, production encoder) and the feature ablations (ML-100K and
   synthetic) over N training seeds: mean and spread, and each feature's paired gain per seed.
   ``--sports-file F`` runs the same section on any other SASRec text file (e.g. the ML-100K ratings
   that ``soe datasets ml-100k`` writes as ``datasets/ml-100k/sasrec.txt``); "all users evaluated"
   then compares with that file's users (``sports_users_in_file``).

Last line: one JSON object (bench.common.emit).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from bench.common import emit, machine, parse_args
from core.contracts import ATTRIBUTE_COLUMNS
from core.datasets.synthetic import SyntheticConfig, generate
from core.layout import HOUR_MS
from encoder.baselines import plain_sasrec_overrides
from encoder.data import (
    events_before,
    events_to_sequences,
    item_catalogue,
    leave_last_out,
    read_sasrec,
    truncate,
)
from encoder.evaluate import leave_last_out_report, planted_purity, staleness_metrics
from encoder.train import fit, model_config, settings_for_data
from soe.config import load_settings

MAX_LEN = 50  # the published protocols' max length (RecBole's ML-100K references, the Sports README)
REPO = Path(__file__).resolve().parents[1]
SPORTS_FILE = "../shared/data/sasrec/Sports_and_Outdoors.txt"  # relative to the repository root
SPORTS_PUBLISHED_NDCG10 = {  # the README beside the file: full ranking, history excluded, max length 50
    "sasrec_sampled_softmax": 0.0314,
    "usasrec": 0.0323,
    "duorec": 0.0262,
}
# what each event feature adds: the encoder with one feature switched off (what it adds beside the
# others), with item ids alone, and with item ids + one feature (what it adds over item ids alone)
_IDS_ONLY = {"use_action": False, "use_time": False, "use_attributes": False, "use_context": False}
FEATURE_ABLATION = {
    "all": {},
    "no_action": {"use_action": False},
    "no_time": {"use_time": False},  # no gap to as_of, no idle time (nor the gap to the event before)
    "with_event_gap": {"use_event_gap": True},  # the gap to the event before added (off by default)
    "no_idle": {"use_idle": False},  # the time tokens without the idle time at as_of beside them
    "no_attributes": {"use_attributes": False},
    "item_ids_only": _IDS_ONLY,
    "ids_and_action": {**_IDS_ONLY, "use_action": True},
    "ids_and_time": {**_IDS_ONLY, "use_time": True},
    "ids_and_attributes": {**_IDS_ONLY, "use_attributes": True},
}
# Sports trains with the defaults a new user gets from `soe train --sasrec-file` (30 epochs, cosine
# schedule over them, early stopping after 10 without a better validation NDCG@10), cut at 840 s
SPORTS_TRAIN = {"time_budget_s": 840.0}
SPORTS_QUICK = {"epochs": 1, "eval_users": 500}
# the classic SASRec setup on our model: item ids + positions, next item only, sampled softmax over the
# in-batch items alone (no uniform negatives), one learning rate for every parameter, no label smoothing
PLAIN_SASREC_TRAIN = {
    "objectives": {"next_positive": 1.0},
    "loss": "sampled_softmax",
    "negatives": 0,
    "table_lr_scale": 1.0,
    "label_smoothing": 0.0,
}
SYN_POSITIVES = ["click", "conversion", "view", "search"]  # every engagement with an item shows interest
# (label, report key) of the ablation's figures: leave-last-out, and the same targets as the hourly job
# serves them (`encoder.evaluate.served_hourly`: the vector of the hour boundary before each target)
FIGURES = [("ndcg10", "ndcg@10"), ("hr10", "hr@10"), ("served_ndcg10", "served_ndcg@10")]


def _args(parser):
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the headline rows (mean and spread)")
    parser.add_argument("--sports-file", default=SPORTS_FILE, help="the Sports SASRec file (repo-relative)")
    parser.add_argument(
        "--sections", default="ml100k,synthetic,sports", help="comma-separated sections to run"
    )
    parser.add_argument(
        "--session-focus",
        type=float,
        default=0.0,
        help="synthetic log: share of interest draws that take the session's one interest (0: independent)",
    )


def fit_as_soe_train(settings, seq, positive_types, overrides, train_update, split=None):
    """``fit`` on ``seq`` with the defaults + ``train_update`` resolved as `soe train` resolves them,
    printing each epoch: (FitResult, ModelConfig, split, catalogue)."""
    ts = settings_for_data(settings.train.model_copy(update=train_update), seq)  # as `soe train`
    cfg = model_config(ts, settings.events, seq, max_len=MAX_LEN, overrides=overrides)  # as `soe train`
    split = split or leave_last_out(seq, positive_types, ts.min_positives)
    catalogue = item_catalogue(seq, ATTRIBUTE_COLUMNS)

    def log(epoch, rec):
        print(
            f"    epoch {epoch}: loss {rec['loss']:.3f} valid ndcg@10 {rec['valid_ndcg10']:.4f} "
            f"({rec['s']:.0f}s)",
            flush=True,
        )

    result = fit(cfg, ts, split, catalogue, positive_types, show_progress=False, on_epoch_end=log)
    return result, cfg, split, catalogue


def _fit(settings, seq, positive_types, overrides, train_update, split=None):
    t0 = time.perf_counter()
    result, cfg, split, catalogue = fit_as_soe_train(
        settings, seq, positive_types, overrides, train_update, split
    )
    train_s = time.perf_counter() - t0
    report = leave_last_out_report(result.model, cfg, split, catalogue, positive_types)
    report.update(train_s=train_s, epochs=result.epochs_run, best_valid_ndcg10=result.best_valid_ndcg10)
    print(
        f"  trained {overrides or 'main'} {train_update}: {result.epochs_run} epochs in {train_s:.0f}s, "
        f"test ndcg@10 {report['ndcg@10']:.4f} hr@10 {report['hr@10']:.4f}",
        flush=True,
    )
    return result.model, cfg, report, catalogue


def seed_runs(
    settings, seq, positive_types, overrides, train: dict, split, seeds: int, done=()
) -> list[dict]:
    """Test reports of seeds 0..seeds-1 on one split; ``done``: reports of the first seeds, trained before."""
    fresh = range(len(done), seeds)
    return [
        *done[:seeds],
        *(_fit(settings, seq, positive_types, overrides, {**train, "seed": s}, split)[2] for s in fresh),
    ]


def ml100k(settings, quick: bool, train: dict, seeds: int = 1) -> dict:
    from core.datasets.movielens import load_ml100k_events

    positive_types = list(settings.events.positive_event_types)
    seq = events_to_sequences(load_ml100k_events(settings.layout().cache))
    out = {}
    split = leave_last_out(seq, positive_types, settings.train.min_positives)
    runs = seed_runs(settings, seq, positive_types, {}, train, split, seeds)
    main = runs[0]
    if seeds > 1:
        out["ml100k_seeds"] = seed_spread(runs)
    out.update(
        ml100k_ndcg10=main["ndcg@10"],
        ml100k_hr10=main["hr@10"],
        ml100k_ndcg20=main["ndcg@20"],
        ml100k_hr50=main["hr@50"],
        pop_ndcg10=main["pop_ndcg@10"],
        pop_hr10=main["pop_hr@10"],
        bag_ndcg10=main["bag_ndcg@10"],
        bag_hr10=main["bag_hr@10"],
        ml100k_served_ndcg10=main["served_ndcg@10"],
        ml100k_served_hr10=main["served_hr@10"],
        pop_served_ndcg10=main["pop_served_ndcg@10"],
        ml100k_served_users=main["served_users"],
        train_s=main["train_s"],
        ml100k_epochs=main["epochs"],
        ml100k_test_users=main["test_users"],
    )
    out["ml100k_ratio_vs_best_baseline"] = main["ndcg@10"] / max(main["pop_ndcg@10"], main["bag_ndcg@10"])
    plain_train = {**train, "epochs": 1} if quick else train
    _, _, plain, _ = _fit(settings, seq, positive_types, plain_sasrec_overrides(), plain_train, split)
    out.update(sasrec_plain_ndcg10=plain["ndcg@10"], sasrec_plain_hr10=plain["hr@10"])
    if not quick:
        _, _, att, _ = _fit(settings, seq, positive_types, {"pooling": "attention"}, train, split)
        out.update(ml100k_attention_ndcg10=att["ndcg@10"], ml100k_attention_hr10=att["hr@10"])
        out.update(feature_ablation(settings, seq, positive_types, train, split, "ml100k", seeds, runs))
    return out


def feature_ablation(
    settings, seq, positive_types, train: dict, split, prefix: str, seeds: int = 1, all_runs=()
) -> dict:
    """Test NDCG@10 / HR@10 of the encoder with each feature switched off, with item ids alone and with
    item ids + one feature (`FEATURE_ABLATION`), on one split, over ``seeds``
    training seeds (mean; with more than one, the spread per variant and the paired gain of every
    feature over item ids alone). ``all_runs``: reports of the full model already trained on this
    split, by seed, reused as the "all" variant."""
    reports = {
        name: seed_runs(
            settings, seq, positive_types, overrides, train, split, seeds, all_runs if name == "all" else ()
        )
        for name, overrides in FEATURE_ABLATION.items()
    }
    return summarise_ablation(reports, prefix)


def summarise_ablation(reports: dict[str, list[dict]], prefix: str) -> dict:
    """Flat figures of a feature ablation: reports[variant] = one test report per seed, in seed order.
    Where the reports hold the hourly-served figures (data with a clock), those are summarised too."""
    out = {}
    figures = [f for f in FIGURES if all(f[1] in r for runs in reports.values() for r in runs)]
    for name, runs in reports.items():
        for label, key in figures:
            out[f"{prefix}_features_{name}_{label}"] = statistics.fmean(r[key] for r in runs)
    if len(reports["all"]) > 1:
        out[f"{prefix}_features_seeds"] = {
            name: seed_spread(runs)["ndcg10"] for name, runs in reports.items()
        }
        for label, key in figures:
            if "ndcg" not in label:
                continue
            ids = [r[key] for r in reports["item_ids_only"]]
            gain = f"{prefix}_features_{label.removesuffix('ndcg10')}gain_pct"  # or ..._served_gain_pct
            out[gain] = {  # per seed, paired: 100 * (variant / item ids only - 1)
                name: [round(100 * (r[key] / i - 1), 2) for r, i in zip(runs, ids, strict=True)]
                for name, runs in reports.items()
                if name != "item_ids_only"
            }
    return out


def prefix_until(seq: pa.Table, T_ms: int) -> pa.Table:
    """Every user's events at or before T (users without any are dropped): what was known at T."""
    return truncate(seq, events_before(seq, T_ms, inclusive=True))


def synthetic(settings, quick: bool, train: dict, seeds: int = 1, session_focus: float = 0.0) -> dict:
    """One model trained on the first day of a 2-day log: purity at T, and staleness over (T, T+24h];
    the feature ablation over ``seeds`` training seeds on the same split. ``session_focus``: the log's
    sessions keep to one interest (`SyntheticConfig.session_focus`; 0: the bench's log)."""
    n_users = 1000 if quick else 2500
    cfg = SyntheticConfig(
        n_users=n_users,
        n_items=10_000,
        n_clusters=20,
        hours=48,
        base_events_per_user=120.0,
        session_focus=session_focus,
    )
    log = generate(cfg)
    seq = events_to_sequences(log.events)
    T = int(np.datetime64(cfg.start.replace("Z", ""), "ms").astype(np.int64)) + 24 * HOUR_MS
    known = prefix_until(seq, T)
    split = leave_last_out(known, SYN_POSITIVES, settings.train.min_positives)
    model, mcfg, report, _ = _fit(settings, known, SYN_POSITIVES, {}, {**train, "seed": 0}, split)
    p = planted_purity(model, mcfg, known, log.users, k=20)
    p5 = planted_purity(model, mcfg, known, log.users, k=20, min_events=5)
    st = staleness_metrics(model, mcfg, seq, item_catalogue(seq, ATTRIBUTE_COLUMNS), T, SYN_POSITIVES)
    ablation = {}
    if not quick:
        ablation = feature_ablation(
            settings, known, SYN_POSITIVES, train, split, "synthetic", seeds, [report]
        )
    return {
        **ablation,
        "synthetic_purity20": p["purity20"],
        "synthetic_random_purity20": p["random_purity20"],
        "synthetic_purity20_min5": p5["purity20"],
        "synthetic_users": p["purity_users"],
        "synthetic_ndcg10": report["ndcg@10"],
        "synthetic_served_ndcg10": report["served_ndcg@10"],
        "synthetic_served_users": report["served_users"],
        "synthetic_pop_ndcg10": report["pop_ndcg@10"],
        "synthetic_bag_ndcg10": report["bag_ndcg@10"],
        "synthetic_train_s": report["train_s"],
        "synthetic_session_focus": session_focus,
        **{k: v for k, v in st.items() if k != "staleness_T_ms"},
    }


def seed_spread(runs: list[dict]) -> dict:
    """Mean, sample standard deviation, min and max over seeds of each headline figure of the runs."""
    out = {}
    for name, key in (*FIGURES, ("train_s", "train_s")):
        if not all(key in r for r in runs):  # no served figures without a clock (Sports)
            continue
        values = [r[key] for r in runs]
        out[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
    return out


def sports(settings, quick: bool, train: dict, seeds: int, path: Path) -> dict:
    """Amazon Sports (SASRec file): the production encoder and plain SASRec, full ranking, all users."""
    seq = read_sasrec(path)
    positive_types = ["click"]  # a SASRec file's every event is a positive (encoder.data.read_sasrec)
    split = leave_last_out(seq, positive_types, settings.train.min_positives)
    runs = seed_runs(settings, seq, positive_types, {}, train, split, seeds)
    main = runs[0]
    out = {
        "sports_ndcg10": main["ndcg@10"],
        "sports_hr10": main["hr@10"],
        "sports_ndcg20": main["ndcg@20"],
        "sports_hr20": main["hr@20"],
        "sports_pop_ndcg10": main["pop_ndcg@10"],
        "sports_pop_hr10": main["pop_hr@10"],
        "sports_train_s": main["train_s"],
        "sports_epochs": main["epochs"],
        "sports_users_evaluated": main["test_users"],
        "sports_users_in_file": seq.num_rows,  # one sequence row per user line
        "sports_items": len(item_catalogue(seq, ())),
        "sports_published_ndcg10": SPORTS_PUBLISHED_NDCG10,
    }
    if seeds > 1:
        out["sports_seeds"] = seed_spread(runs)
    plain_train = {**train, **PLAIN_SASREC_TRAIN}
    _, _, plain, _ = _fit(settings, seq, positive_types, plain_sasrec_overrides(), plain_train, split)
    out.update(
        sports_sasrec_plain_ndcg10=plain["ndcg@10"],
        sports_sasrec_plain_hr10=plain["hr@10"],
        sports_sasrec_plain_train_s=plain["train_s"],
    )
    return out


def main() -> None:
    args = parse_args("Encoder quality: ML-100K vs baselines, staleness, synthetic purity.", _args)
    torch.set_num_threads(args.threads)
    settings = load_settings()
    train = {
        "threads": args.threads,
        "epochs": 2 if args.quick else 20,
        "patience": 3,
        "eval_users": 500 if args.quick else 2000,
    }
    sections = set(args.sections.split(","))
    t0 = time.perf_counter()
    result = {"bench": "quality", "quick": args.quick, "threads": args.threads, **machine()}
    targets = {}
    if "ml100k" in sections:
        result.update(ml100k(settings, args.quick, train, args.seeds))
        targets["ml100k_ndcg10_ge_1.3x_best_baseline"] = result["ml100k_ratio_vs_best_baseline"] >= 1.3
        targets["ml100k_train_lt_600s"] = result["train_s"] < 600
    if "synthetic" in sections:
        result.update(
            synthetic(
                settings,
                args.quick,
                {**train, "epochs": 2 if args.quick else 8},
                args.seeds,
                args.session_focus,
            )
        )
        targets["synthetic_purity20_ge_0.8"] = result["synthetic_purity20"] >= 0.8
    if "sports" in sections:
        sports_train = {"threads": args.threads, **(SPORTS_QUICK if args.quick else SPORTS_TRAIN)}
        result.update(sports(settings, args.quick, sports_train, args.seeds, REPO / args.sports_file))
        targets["sports_ndcg10_ge_0.036"] = result["sports_ndcg10"] >= 0.036
        targets["sports_train_le_900s"] = result["sports_train_s"] <= 900
        targets["sports_all_users_evaluated"] = (
            result["sports_users_evaluated"] == result["sports_users_in_file"]
        )
    result["targets"] = targets
    result["total_s"] = time.perf_counter() - t0
    emit(result)


if __name__ == "__main__":
    main()
