"""Quality of the user vectors: ML-100K full ranking vs baselines, staleness, synthetic planted purity.

    python -m bench.quality [--quick] [--threads N]

1. **MovieLens-100K, leave-last-out, full ranking** (all 1,682 items; the user's history items are
   excluded from the candidates; target = the user's last positive = rating >= 4; validation = the
   one before; max_len 50). Our model (last-position pooling), the same with attention pooling, the
   plain-SASRec ablation (item ids only), popularity and bag-of-items, all on the same split with the
   same metric code (`encoder.metrics.ranking_metrics`).
2. **Synthetic 2-day log** (`core.datasets.synthetic`, planted clusters), one model trained only on
   the first day (events <= T):
   * planted structure: purity@20 of each user's nearest neighbours (cosine, exact) at T against
     the planted primary cluster, random neighbours beside;
   * staleness: vectors at T score each user's positives in (T, T+24h]; vectors recomputed just
     before each target score the same events. staleness_loss_pct = 100 * (1 - recall@10 stale /
     recall@10 fresh), per target event. (ML-100K has too few users active on both sides of any T.)

Last line: one JSON object (bench.common.emit).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bench.common import emit, machine, parse_args
from core.contracts import ATTRIBUTE_COLUMNS
from core.datasets.synthetic import SyntheticConfig, generate
from core.layout import HOUR_MS
from encoder.baselines import plain_sasrec_overrides
from encoder.config import ModelConfig
from encoder.data import events_to_sequences, item_catalogue, leave_last_out, truncate
from encoder.evaluate import leave_last_out_report, planted_purity, staleness_metrics
from encoder.train import fit
from soe.config import load_settings

ML_MODEL = {"max_len": 50}  # RecBole's GRU4Rec reference also uses max length 50
SYN_POSITIVES = ["click", "conversion", "view", "search"]  # every engagement with an item shows interest


def _args(parser):
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")


def _fit(settings, seq, positive_types, overrides, train_update, split=None):
    cfg = ModelConfig(**{"actions": tuple(settings.events.event_types), **ML_MODEL, **overrides})
    ts = settings.train.model_copy(update=train_update)
    split = split or leave_last_out(seq, positive_types, ts.min_positives)
    catalogue = item_catalogue(seq, ATTRIBUTE_COLUMNS)
    t0 = time.perf_counter()

    def log(epoch, rec):
        print(
            f"    epoch {epoch}: loss {rec['loss']:.3f} valid ndcg@10 {rec['valid_ndcg10']:.4f} "
            f"({rec['s']:.0f}s)",
            flush=True,
        )

    result = fit(cfg, ts, split, catalogue, positive_types, show_progress=False, on_epoch_end=log)
    train_s = time.perf_counter() - t0
    report = leave_last_out_report(result.model, cfg, split, catalogue, positive_types)
    report.update(train_s=train_s, epochs=result.epochs_run, best_valid_ndcg10=result.best_valid_ndcg10)
    print(
        f"  trained {overrides or 'main'}: {result.epochs_run} epochs in {train_s:.0f}s, "
        f"test ndcg@10 {report['ndcg@10']:.4f} hr@10 {report['hr@10']:.4f}",
        flush=True,
    )
    return result.model, cfg, report, catalogue


def ml100k(settings, quick: bool, train: dict) -> dict:
    from core.datasets.movielens import load_ml100k_events

    positive_types = list(settings.events.positive_event_types)
    seq = events_to_sequences(load_ml100k_events(settings.layout().cache))
    out = {}
    _, _, main, _ = _fit(settings, seq, positive_types, {}, train)
    out.update(
        ml100k_ndcg10=main["ndcg@10"],
        ml100k_hr10=main["hr@10"],
        ml100k_ndcg20=main["ndcg@20"],
        ml100k_hr50=main["hr@50"],
        pop_ndcg10=main["pop_ndcg@10"],
        pop_hr10=main["pop_hr@10"],
        bag_ndcg10=main["bag_ndcg@10"],
        bag_hr10=main["bag_hr@10"],
        train_s=main["train_s"],
        ml100k_epochs=main["epochs"],
        ml100k_test_users=main["test_users"],
    )
    out["ml100k_ratio_vs_best_baseline"] = main["ndcg@10"] / max(main["pop_ndcg@10"], main["bag_ndcg@10"])
    plain_train = {**train, "epochs": 1} if quick else train
    _, _, plain, _ = _fit(settings, seq, positive_types, plain_sasrec_overrides(), plain_train)
    out.update(sasrec_plain_ndcg10=plain["ndcg@10"], sasrec_plain_hr10=plain["hr@10"])
    if not quick:
        _, _, att, _ = _fit(settings, seq, positive_types, {"pooling": "attention"}, train)
        out.update(ml100k_attention_ndcg10=att["ndcg@10"], ml100k_attention_hr10=att["hr@10"])
    return out


def prefix_until(seq: pa.Table, T_ms: int) -> pa.Table:
    """Every user's events at or before T (users without any are dropped): what was known at T."""
    ts_flat = seq["ts"].combine_chunks().flatten().cast(pa.int64()).to_numpy()
    row = np.repeat(np.arange(seq.num_rows), pc.list_value_length(seq["ts"]).to_numpy())
    return truncate(seq, np.bincount(row[ts_flat <= T_ms], minlength=seq.num_rows))


def synthetic(settings, quick: bool, train: dict) -> dict:
    """One model trained on the first day of a 2-day log: purity at T, and staleness over (T, T+24h]."""
    n_users = 1000 if quick else 2500
    cfg = SyntheticConfig(
        n_users=n_users, n_items=10_000, n_clusters=20, hours=48, base_events_per_user=120.0
    )
    log = generate(cfg)
    seq = events_to_sequences(log.events)
    T = int(np.datetime64(cfg.start.replace("Z", ""), "ms").astype(np.int64)) + 24 * HOUR_MS
    known = prefix_until(seq, T)
    model, mcfg, report, _ = _fit(settings, known, SYN_POSITIVES, {}, train)
    p = planted_purity(model, mcfg, known, log.users, k=20)
    p5 = planted_purity(model, mcfg, known, log.users, k=20, min_events=5)
    st = staleness_metrics(model, mcfg, seq, item_catalogue(seq, ATTRIBUTE_COLUMNS), T, SYN_POSITIVES)
    return {
        "synthetic_purity20": p["purity20"],
        "synthetic_random_purity20": p["random_purity20"],
        "synthetic_purity20_min5": p5["purity20"],
        "synthetic_users": p["purity_users"],
        "synthetic_ndcg10": report["ndcg@10"],
        "synthetic_pop_ndcg10": report["pop_ndcg@10"],
        "synthetic_bag_ndcg10": report["bag_ndcg@10"],
        "synthetic_train_s": report["train_s"],
        **{k: v for k, v in st.items() if k != "staleness_T_ms"},
    }


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
    t0 = time.perf_counter()
    result = {"bench": "quality", "quick": args.quick, "threads": args.threads, **machine()}
    result.update(ml100k(settings, args.quick, train))
    result.update(synthetic(settings, args.quick, {**train, "epochs": 2 if args.quick else 8}))
    result["targets"] = {
        "ml100k_ndcg10_ge_1.3x_best_baseline": result["ml100k_ratio_vs_best_baseline"] >= 1.3,
        "synthetic_purity20_ge_0.8": result["synthetic_purity20"] >= 0.8,
        "ml100k_train_lt_600s": result["train_s"] < 600,
    }
    result["total_s"] = time.perf_counter() - t0
    emit(result)


if __name__ == "__main__":
    main()
