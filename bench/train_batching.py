"""What the trainer's batching costs per epoch on Amazon Sports (issue 17, training speed).

    python -m bench.train_batching [--quick] [--threads N] [--epochs E]

The Sports defaults of ``soe train --sasrec-file`` (`bench.quality.fit_as_soe_train`: its file and max
length 50), trained ``--epochs`` epochs (default 3; ``--quick``: 1 epoch on the first 5,000 users) with
validation on 200 users, once per batching:

* ``sorted`` (the baseline): shuffled groups of 16 batches sorted by length, one padded forward pass
  per batch (`train.length_group_batches: 16`, `train.forward_length_buckets: 1`);
* ``random_padded``: uniformly random batches, one forward pass padded to each batch's longest row;
* ``random_bucketed``: uniformly random batches whose rows run through the model in 4 groups of
  similar length, each trimmed to its longest row (`encoder.train.encode_in_length_buckets`).

Reported per batching: the median seconds of an epoch (its validation included) and the ratio to
``sorted`` measured in the same run. Last line: one JSON object (bench.common.emit).
"""

from __future__ import annotations

import statistics
import time

import torch

from bench.common import emit, machine, parse_args
from bench.quality import REPO, SPORTS_FILE, fit_as_soe_train
from encoder.data import read_sasrec
from soe.config import load_settings

BATCHINGS = {  # name -> train settings; the first is the baseline
    "sorted": {"length_group_batches": 16, "forward_length_buckets": 1},
    "random_padded": {"length_group_batches": 1, "forward_length_buckets": 1},
    "random_bucketed": {"length_group_batches": 1, "forward_length_buckets": 4},
}
QUICK_USERS = 5000


def _args(parser):
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per batching (the median is kept)")
    parser.add_argument("--sports-file", default=SPORTS_FILE, help="the Sports SASRec file (repo-relative)")


def epoch_seconds(settings, seq, train: dict) -> list[float]:
    """Seconds of each epoch of ``fit`` on ``seq`` with the defaults + ``train``, as `soe train` runs it."""
    result = fit_as_soe_train(settings, seq, ["click"], {}, train)[0]
    return [record["seconds"] for record in result.history]


def main() -> None:
    args = parse_args("Seconds per training epoch on Sports by batching.", _args)
    torch.set_num_threads(args.threads)
    settings = load_settings()
    seq = read_sasrec(REPO / args.sports_file)
    if args.quick:
        seq = seq.slice(0, QUICK_USERS)
    epochs = 1 if args.quick else args.epochs
    common = {"threads": args.threads, "epochs": epochs, "patience": epochs, "eval_users": 200}
    t0 = time.perf_counter()
    result = {"bench": "train_batching", "quick": args.quick, "threads": args.threads, "epochs": epochs}
    result.update(machine(), users=seq.num_rows)
    baseline = None
    for name, batching in BATCHINGS.items():
        seconds = epoch_seconds(settings, seq, {**common, **batching})
        median = statistics.median(seconds)
        result[f"{name}_epoch_s"] = median
        if baseline is None:
            baseline = median
        else:
            result[f"{name}_vs_sorted"] = median / baseline
        print(f"  {name}: epochs {[round(s, 1) for s in seconds]} s, median {median:.1f} s", flush=True)
    result["total_s"] = time.perf_counter() - t0
    emit(result)


if __name__ == "__main__":
    main()
