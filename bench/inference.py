"""Batch inference throughput: the engine against a naive baseline and against the CPU's GEMM peak.

    python -m bench.inference [--quick] [--repeats R] [--users U]

Same process, same sequences (heavy-tailed lengths: log-normal, median 8, clipped to N = 200), same
randomly initialised model (d = 64, 2 layers, 2 heads, MLP 4d):

* **engine**: `BatchEncoder.encode_table` with the default settings: length bucketing under a token
  budget, featurisation (timed: it is part of the work), SDPA attention, ``inference_mode``, the
  newest-only last block, fp32, one batch per core.
* **naive**: the same weights through eager ``nn.TransformerEncoder`` in fp32, every batch padded to
  N, fixed batches in file order (`encoder.inference.naive`); its vectors equal the engine's.
* **gemm_peak_gflops**: a 4096^3 fp32 matmul in this run. ``achieved_gflops`` = the FLOPs the engine
  needs on real tokens (`model_flops(path="newest_only")`) / engine seconds; ``fraction_of_peak`` =
  achieved / peak. ``full_forward_*`` is the engine running every position of the last block, with
  the full model's FLOPs counted.
* **e2e**: `encode_shard` on a Parquet shard: load the model, read, featurise, encode, write, publish.

The machine is shared, so every variant (and the GEMM) runs once per *round*, round-robin, after a
warm-up round, and the medians over rounds are reported: a load burst then hits all variants alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from bench.common import emit, machine, parse_args

N, D, LAYERS, HEADS = 200, 64, 2, 2
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM dense bf16 tensor-core peak (no sparsity)
H100_ASSUMED_UTILISATION = 0.10  # d = 64 matmuls are small and the gathers memory-bound: assume 10 %
ACTIVE_USERS_PER_HOUR = 100_000_000


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, cold: tuple[str, ...] = ()
) -> dict[str, float]:
    """Median seconds of each fn over ``rounds`` round-robin rounds (after a warm-up round, but ``cold``)."""
    timings: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            if not r and name in cold:
                continue
            t0 = time.perf_counter()
            fn()
            if r:
                timings[name].append(time.perf_counter() - t0)
        if r:
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in timings.items()), flush=True)
    return {name: statistics.median(t) for name, t in timings.items()}


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0], extra=lambda p: p.add_argument("--users", type=int, default=None)
    )
    users = args.users or (800 if args.quick else 10000)
    rounds = args.repeats or (2 if args.quick else 3)

    from encoder.config import ModelConfig
    from encoder.device import select_device
    from encoder.features import featurize
    from encoder.inference.batching import plan_batches
    from encoder.inference.device import available_cores, configure_threads
    from encoder.inference.engine import BatchEncoder
    from encoder.inference.naive import NaiveEncoder, model_flops, naive_encode
    from encoder.inference.paths import resolve_path
    from encoder.inference.sample import AS_OF, heavy_tailed_lengths, random_sequences
    from encoder.inference.settings import InferenceSettings
    from encoder.model import UserEncoder

    threads = configure_threads(0)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=D, n_layers=LAYERS, n_heads=HEADS, max_len=N, dropout=0.0)
    model = UserEncoder(cfg).eval()
    lengths = heavy_tailed_lengths(users, N, seed=1)
    table = random_sequences(lengths, AS_OF, seed=1)
    base = InferenceSettings()
    path = resolve_path(cfg, base.path)
    flops = model_flops(lengths, D, LAYERS, cfg.mlp_ratio, path=path)
    flops_full = model_flops(lengths, D, LAYERS, cfg.mlp_ratio)
    print(
        f"{users} users, {int(lengths.sum())} events (mean {lengths.mean():.1f}, "
        f"p50 {np.median(lengths):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}, {100 * (lengths == N).mean():.1f}% at N), "
        f"{flops / 1e9:.1f} needed GFLOP ({flops_full / 1e9:.1f} full model), {threads} cores",
        flush=True,
    )

    cpu = select_device("cpu")

    def engine(**overrides) -> BatchEncoder:
        return BatchEncoder(model, cpu, base.model_copy(update=overrides))

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    encoders = {
        "engine": engine(),
        "intra_op": engine(cpu_workers=1),  # one batch at a time, every op split over the cores
        "full_forward": engine(path="full"),  # every position of the last block, like model.forward
    }
    if not args.quick:
        encoders["inline_loader"] = engine(loader_thread=False)
        encoders["budget_4096"] = engine(max_batch_tokens=4096)
        encoders["budget_65536"] = engine(max_batch_tokens=65536)
        t0 = time.perf_counter()
        encoders["compiled"] = engine(compile=True)
        encoders["compiled"].encode_table(table.slice(0, 4000), AS_OF)  # compile (dynamic shapes) up front
        compile_warmup_s = time.perf_counter() - t0
    naive = NaiveEncoder(model)
    naive_rows = max(1, base.max_batch_tokens // N)  # the same token budget per batch, all padded to N
    plans = plan_batches(np.minimum(lengths, N), base.max_batch_tokens)
    subtables = [table.take(pa.array(p.rows)) for p in plans]
    out: dict[str, np.ndarray] = {}

    fns: dict[str, Callable[[], object]] = {"gemm": lambda: a @ b}
    for name, enc in encoders.items():
        fns[name] = lambda enc=enc, name=name: out.__setitem__(name, enc.encode_table(table, AS_OF))
    fns["naive"] = lambda: out.__setitem__("naive", naive_encode(naive, table, AS_OF, batch_rows=naive_rows))
    fns["featurize"] = lambda: [featurize(t, cfg, as_of=AS_OF) for t in subtables]
    with tempfile.TemporaryDirectory() as tmp:
        fns["e2e"] = end_to_end_fn(model, cfg, table, Path(tmp))
        sec = interleaved(fns, rounds, cold=("naive",))  # eager PyTorch needs no warm-up; it is the slow one

    peak = 2 * 4096**3 / sec["gemm"] / 1e9
    engine_s, naive_s = sec["engine"], sec["naive"]
    achieved = flops / engine_s / 1e9
    padded = sum(len(p.rows) * p.padded_len for p in plans)
    flops_per_user = flops / users
    h100_users_per_s = H100_BF16_DENSE_TFLOPS * 1e12 * H100_ASSUMED_UTILISATION / flops_per_user
    need = ACTIVE_USERS_PER_HOUR / 3600
    featurize_per_core = users / sec["featurize"]  # featurize runs single-threaded
    extra = {
        f"{k}_users_per_s": round(users / s, 1) for k, s in sec.items() if k in encoders and k != "engine"
    }
    if "compiled" in encoders:
        extra["compile_warmup_s"] = round(compile_warmup_s, 1)
        extra["compile_speedup_vs_eager"] = round(engine_s / sec["compiled"], 3)
    emit(
        {
            "bench": "inference",
            "quick": args.quick,
            "users": users,
            "events": int(lengths.sum()),
            "n_max": N,
            "d_model": D,
            "layers": LAYERS,
            "cores": threads,
            "rounds": rounds,
            "cpu_workers": base.cpu_workers or available_cores(),
            "max_batch_tokens": base.max_batch_tokens,
            "users_per_s": round(users / engine_s, 1),
            "naive_users_per_s": round(users / naive_s, 1),
            "speedup_vs_naive": round(naive_s / engine_s, 2),
            "speedup_vs_naive_same_threading": round(
                naive_s / sec["intra_op"], 2
            ),  # bucketing + fast path only
            "achieved_gflops": round(achieved, 2),
            "gemm_peak_gflops": round(peak, 2),
            "fraction_of_peak": round(achieved / peak, 3),
            "flops_counted": (
                "needed on real tokens by the newest-only engine"
                if path == "newest_only"
                else "full model, real tokens"
            ),
            "full_forward_gflops": round(flops_full / sec["full_forward"] / 1e9, 2),
            "full_forward_fraction_of_peak": round(flops_full / sec["full_forward"] / 1e9 / peak, 3),
            "newest_only_speedup": round(sec["full_forward"] / engine_s, 3),
            "batch_parallel_speedup_vs_intra_op": round(sec["intra_op"] / engine_s, 3),
            **extra,
            "engine_s": round(engine_s, 3),
            "naive_s": round(naive_s, 3),
            "e2e_users_per_s": round(users / sec["e2e"], 1),
            "featurize_users_per_s_per_core": round(featurize_per_core, 1),
            "padding_efficiency": round(float(np.minimum(lengths, N).sum()) / padded, 3),
            "naive_padding_efficiency": round(float(np.minimum(lengths, N).sum()) / (users * N), 3),
            "max_abs_diff_engine_vs_naive": float(np.abs(out["naive"] - out["engine"]).max()),
            "flops_per_user": round(flops_per_user),
            "h100_projection_users_per_s": round(h100_users_per_s),
            "h100_projection_gpus_for_100m_per_hour": max(1, int(np.ceil(need / h100_users_per_s))),
            "host_cores_to_featurize_100m_per_hour": round(need / featurize_per_core, 1),
            "machine": machine(),
        }
    )


def end_to_end_fn(model, cfg, table: pa.Table, tmp: Path) -> Callable[[], object]:
    """`encode_shard` over a published Parquet shard: load + read + featurise + encode + write + publish."""
    from encoder.artifact import save_model
    from encoder.inference.engine import encode_shard
    from encoder.inference.sample import AS_OF, write_active_snapshot
    from soe.config import load_settings

    settings = load_settings(environ={"SOE_DATA__ROOT": str(tmp / "data")})
    version = save_model(settings.layout(), model, cfg, train_window="bench", metrics={})
    write_active_snapshot(settings.layout(), AS_OF, table, num_shards=1)
    return lambda: encode_shard(settings.layout(), settings.inference, version, AS_OF, 0)


if __name__ == "__main__":
    main()
