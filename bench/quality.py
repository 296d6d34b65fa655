"""Quality of the user vectors: ML-100K full ranking vs baselines, staleness, synthetic planted purity.

    python -m bench.quality [--quick] [--threads N]

1. **MovieLens-100K, leave-last-out, full ranking** (all 1,682 items; the user's history items are
   excluded from the candidates; target = the user's last positive = rating >= 4; validation = the
   one before; max_len 50). Our model (last-position pooling), the same with attention pooling, the
   plain-SASRec ablation (item ids only), popularity and bag-of-items, all on the same split with the
   same metric code (`encoder.metrics.ranking_metrics`).
2. **Staleness** (ML-100K): a model trained only on events <= T; vectors at T score each user's
   positives in (T, T+24h]; vectors recomputed just before each target score the same events.
   staleness_loss_pct = 100 * (1 - recall@10 stale / recall@10 fresh), per target event.
3. **Planted structure** (synthetic log, `soe.datasets.synthetic`): purity@20 of each user's
   nearest neighbours (cosine, exact) against the planted primary cluster, random neighbours beside.

Last line: one JSON object (bench.common.emit).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bench.common import emit, machine, parse_args
from encoder.baselines import plain_sasrec_overrides
from encoder.data import events_to_sequences, item_catalogue, leave_last_out, truncate
from encoder.evaluate import busiest_time, leave_last_out_report, planted_purity, staleness_metrics
from encoder.model import ModelConfig
from encoder.train import fit
from soe.config import load_settings
from soe.contracts import ATTRIBUTE_COLUMNS
from soe.datasets.synthetic import SyntheticConfig, generate

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
    result = fit(cfg, ts, split, catalogue, positive_types, show_progress=False)
    train_s = time.perf_counter() - t0
    report = leave_last_out_report(result.model, cfg, split, catalogue, positive_types)
    report.update(train_s=train_s, epochs=result.epochs_run, best_valid_ndcg10=result.best_valid_ndcg10)
    print(f"  trained {overrides or 'main'}: {result.epochs_run} epochs in {train_s:.0f}s, "
          f"test ndcg@10 {report['ndcg@10']:.4f} hr@10 {report['hr@10']:.4f}", flush=True)
    return result.model, cfg, report, catalogue


def ml100k(settings, quick: bool, train: dict) -> dict:
    from soe.datasets.movielens import load_ml100k_events

    positive_types = list(settings.events.positive_event_types)
    seq = events_to_sequences(load_ml100k_events(settings.layout().cache))
    out = {}
    _, _, main, _ = _fit(settings, seq, positive_types, {}, train)
    out.update(ml100k_ndcg10=main["ndcg@10"], ml100k_hr10=main["hr@10"], ml100k_ndcg20=main["ndcg@20"],
               ml100k_hr50=main["hr@50"], pop_ndcg10=main["pop_ndcg@10"], pop_hr10=main["pop_hr@10"],
               bag_ndcg10=main["bag_ndcg@10"], bag_hr10=main["bag_hr@10"], train_s=main["train_s"],
               ml100k_epochs=main["epochs"], ml100k_test_users=main["test_users"])
    out["ml100k_ratio_vs_best_baseline"] = main["ndcg@10"] / max(main["pop_ndcg@10"], main["bag_ndcg@10"])
    _, _, plain, _ = _fit(settings, seq, positive_types, plain_sasrec_overrides(), train)
    out.update(sasrec_plain_ndcg10=plain["ndcg@10"], sasrec_plain_hr10=plain["hr@10"])
    if not quick:
        _, _, att, _ = _fit(settings, seq, positive_types, {"pooling": "attention"}, train)
        out.update(ml100k_attention_ndcg10=att["ndcg@10"], ml100k_attention_hr10=att["hr@10"])
    out.update(staleness(settings, seq, positive_types, train))
    return out


def staleness(settings, seq: pa.Table, positive_types, train: dict) -> dict:
    """Train on events <= T only, then compare vectors at T with vectors recomputed before each target."""
    T = busiest_time(seq, positive_types)
    ts_flat = seq["ts"].combine_chunks().flatten().cast(pa.int64()).to_numpy()
    lengths = pc.list_value_length(seq["ts"]).to_numpy()
    row = np.repeat(np.arange(seq.num_rows), lengths)
    before_T = np.bincount(row[ts_flat <= T], minlength=seq.num_rows)
    history = truncate(seq, before_T)  # what was known at T: the training data of this model
    model, cfg, _, _ = _fit(settings, history, positive_types, {}, train)
    catalogue = item_catalogue(seq, ATTRIBUTE_COLUMNS)
    m = staleness_metrics(model, cfg, seq, catalogue, T, positive_types)
    return {k: v for k, v in m.items() if k != "staleness_T_ms"} | {"staleness_T": str(np.datetime64(T, "ms"))}


def synthetic(settings, quick: bool, train: dict) -> dict:
    n_users = 1500 if quick else 4000
    log = generate(SyntheticConfig(n_users=n_users, n_items=10_000, n_clusters=20, hours=24))
    seq = events_to_sequences(log.events)
    model, cfg, report, _ = _fit(settings, seq, SYN_POSITIVES, {"max_len": 100}, train)
    p = planted_purity(model, cfg, seq, log.users, k=20)
    p5 = planted_purity(model, cfg, seq, log.users, k=20, min_events=5)
    return {"synthetic_purity20": p["purity20"], "synthetic_random_purity20": p["random_purity20"],
            "synthetic_purity20_min5": p5["purity20"], "synthetic_users": p["purity_users"],
            "synthetic_ndcg10": report["ndcg@10"], "synthetic_pop_ndcg10": report["pop_ndcg@10"],
            "synthetic_train_s": report["train_s"]}


def main() -> None:
    args = parse_args("Encoder quality: ML-100K vs baselines, staleness, synthetic purity.", _args)
    torch.set_num_threads(args.threads)
    settings = load_settings()
    train = {"threads": args.threads, "epochs": 3 if args.quick else 20, "patience": 3}
    t0 = time.perf_counter()
    result = {"bench": "quality", "quick": args.quick, "threads": args.threads, **machine()}
    result.update(ml100k(settings, args.quick, train))
    result.update(synthetic(settings, args.quick, {**train, "epochs": 3 if args.quick else 10}))
    result["targets"] = {
        "ml100k_ndcg10_ge_1.3x_best_baseline": result["ml100k_ratio_vs_best_baseline"] >= 1.3,
        "synthetic_purity20_ge_0.8": result["synthetic_purity20"] >= 0.8,
        "ml100k_train_lt_600s": result["train_s"] < 600,
    }
    result["total_s"] = time.perf_counter() - t0
    emit(result)


if __name__ == "__main__":
    main()
