"""Batch inference throughput: the engine against a naive baseline and against the CPU's GEMM peak.

    python -m bench.inference [--quick] [--repeats R] [--users U]

Same process, same sequences (heavy-tailed lengths: log-normal, median 8, clipped to N = 200), same
randomly initialised model (d = 64, 2 layers, 2 heads, MLP 4d):

* **engine**: `BatchEncoder.encode_table`: length bucketing under a token budget, featurisation
  (timed: it is part of the work), SDPA attention, ``inference_mode``, fp32 on the CPU.
* **naive**: the same weights through eager ``nn.TransformerEncoder`` in fp32, every batch padded to
  N, fixed batches in file order (`encoder.inference.naive`); its vectors equal the engine's.
* **gemm_peak_gflops**: a 4096^3 fp32 matmul in this run. ``achieved_gflops`` = useful FLOPs (real
  tokens only, `model_flops`) / engine seconds; ``fraction_of_peak`` = achieved / peak.
* **e2e**: `encode_shard` on a Parquet shard: read, featurise, encode, write float16, publish.

Also reported: the loader thread on/off, ``torch.compile`` (full run only) and the featurisation
rate alone (the host-side bound that matters on a GPU; see the H100 projection in BENCHMARKS.md).
Timings are medians of ``--repeats``; the machine is shared, so compare ratios from one run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from bench.common import emit, machine, median_seconds, parse_args

N, D, LAYERS, HEADS = 200, 64, 2, 2
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM dense bf16 tensor-core peak (no sparsity)
H100_ASSUMED_UTILISATION = 0.10  # d = 64 matmuls are small; assume 10 % of peak
ACTIVE_USERS_PER_HOUR = 100_000_000


def gemm_peak_gflops(repeats: int) -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    seconds, _ = median_seconds(lambda: a @ b, repeats=repeats, warmup=1)
    return 2 * 4096**3 / seconds / 1e9


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument("--users", type=int, default=None))
    users = args.users or (2000 if args.quick else 20000)
    repeats = args.repeats or (2 if args.quick else 3)

    from encoder.features import featurize
    from encoder.inference.batching import plan_batches
    from encoder.inference.device import configure_threads, select_device
    from encoder.inference.engine import BatchEncoder
    from encoder.inference.naive import NaiveEncoder, model_flops, naive_encode
    from encoder.inference.sample import AS_OF, heavy_tailed_lengths, random_sequences
    from encoder.inference.settings import InferenceSettings
    from encoder.model import ModelConfig, UserEncoder

    threads = configure_threads(0)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=D, n_layers=LAYERS, n_heads=HEADS, max_len=N, dropout=0.0)
    model = UserEncoder(cfg).eval()
    lengths = heavy_tailed_lengths(users, N, seed=1)
    table = random_sequences(lengths, AS_OF, seed=1)
    flops = model_flops(lengths, D, LAYERS, cfg.mlp_ratio, newest_only=InferenceSettings().newest_only)
    flops_full = model_flops(lengths, D, LAYERS, cfg.mlp_ratio)
    cpu = select_device("cpu")
    base = InferenceSettings()
    print(f"{users} users, {int(lengths.sum())} events (mean {lengths.mean():.1f}, p50 {np.median(lengths):.0f}, "
          f"p99 {np.percentile(lengths, 99):.0f}, {100 * (lengths == N).mean():.1f}% at N), "
          f"{flops / 1e9:.1f} useful GFLOP, {threads} threads", flush=True)

    peak = gemm_peak_gflops(repeats)
    print(f"gemm peak {peak:.1f} GFLOP/s", flush=True)

    def engine_rate(**overrides) -> tuple[float, np.ndarray]:
        enc = BatchEncoder(model, cfg, cpu, base.model_copy(update=overrides))
        out = {}
        seconds, _ = median_seconds(lambda: out.__setitem__("v", enc.encode_table(table, AS_OF)), repeats=repeats, warmup=1)
        return seconds, out["v"]

    engine_s, engine_vectors = engine_rate()
    print(f"engine {users / engine_s:.0f} users/s", flush=True)
    inline_s, _ = engine_rate(loader_thread=False)
    full_s, _ = engine_rate(newest_only=False)  # every position of the last block, like model.forward
    budgets = {} if args.quick else {b: engine_rate(max_batch_tokens=b)[0] for b in (4096, 65536)}

    naive = NaiveEncoder(model)
    naive_rows = max(1, base.max_batch_tokens // N)  # the same token budget per batch, all padded to N
    out = {}
    naive_s, _ = median_seconds(
        lambda: out.__setitem__("v", naive_encode(naive, table, AS_OF, batch_rows=naive_rows)),
        repeats=1 if args.quick else 2, warmup=0,
    )
    print(f"naive {users / naive_s:.0f} users/s", flush=True)
    max_diff = float(np.abs(out["v"] - engine_vectors).max())

    plans = plan_batches(np.minimum(lengths, N), base.max_batch_tokens)
    padded = sum(len(p.rows) * p.padded_len for p in plans)
    subtables = [table.take(pa.array(p.rows)) for p in plans]
    featurize_s, _ = median_seconds(lambda: [featurize(t, cfg, as_of=AS_OF) for t in subtables], repeats=repeats)

    compiled = {}
    if not args.quick:
        t0 = time.perf_counter()
        enc = BatchEncoder(model, cfg, cpu, base.model_copy(update={"compile": True}))
        enc.encode_table(table.slice(0, 2000), AS_OF)  # compile (dynamic shapes) outside the timing
        compiled["compile_warmup_s"] = round(time.perf_counter() - t0, 1)
        seconds, _ = median_seconds(lambda: enc.encode_table(table, AS_OF), repeats=repeats, warmup=1)
        compiled["compile_users_per_s"] = round(users / seconds, 1)
        compiled["compile_speedup_vs_eager"] = round(engine_s / seconds, 3)

    e2e = end_to_end(model, cfg, table, repeats)

    achieved = flops / engine_s / 1e9
    flops_per_user = flops / users
    h100_users_per_s = H100_BF16_DENSE_TFLOPS * 1e12 * H100_ASSUMED_UTILISATION / flops_per_user
    need = ACTIVE_USERS_PER_HOUR / 3600
    emit({
        "bench": "inference",
        "quick": args.quick,
        "users": users,
        "events": int(lengths.sum()),
        "n_max": N, "d_model": D, "layers": LAYERS, "threads": threads,
        "users_per_s": round(users / engine_s, 1),
        "naive_users_per_s": round(users / naive_s, 1),
        "speedup_vs_naive": round(naive_s / engine_s, 2),
        "achieved_gflops": round(achieved, 2),
        "gemm_peak_gflops": round(peak, 2),
        "fraction_of_peak": round(achieved / peak, 3),
        "engine_s": round(engine_s, 3),
        "naive_s": round(naive_s, 3),
        "flops_counted": "needed by the newest-only fast path" if base.newest_only else "full model",
        "full_forward_users_per_s": round(users / full_s, 1),
        "full_forward_gflops": round(flops_full / full_s / 1e9, 2),
        "full_forward_fraction_of_peak": round(flops_full / full_s / 1e9 / peak, 3),
        "newest_only_speedup": round(full_s / engine_s, 3),
        "inline_loader_users_per_s": round(users / inline_s, 1),
        "loader_thread_speedup": round(inline_s / engine_s, 3),
        **{f"budget_{b}_users_per_s": round(users / s, 1) for b, s in budgets.items()},
        "max_batch_tokens": base.max_batch_tokens,
        "padding_efficiency": round(float(np.minimum(lengths, N).sum()) / padded, 3),
        "naive_padding_efficiency": round(float(np.minimum(lengths, N).sum()) / (users * N), 3),
        "max_abs_diff_vs_naive": max_diff,
        "featurize_users_per_s": round(users / featurize_s, 1),
        **compiled,
        **e2e,
        "flops_per_user": round(flops_per_user),
        "h100_projection_users_per_s": round(h100_users_per_s),
        "h100_projection_gpus_for_100m_per_hour": max(1, int(np.ceil(need / h100_users_per_s))),
        "host_cores_for_100m_per_hour_featurize": round(need / (users / featurize_s / threads), 1),
        "machine": machine(),
    })


def end_to_end(model, cfg, table: pa.Table, repeats: int) -> dict:
    """`encode_shard` over a published Parquet shard: read + featurise + encode + write + publish."""
    from encoder.artifact import save_model
    from encoder.inference.engine import encode_shard
    from encoder.inference.sample import AS_OF, write_active_snapshot
    from soe.config import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={"SOE_DATA__ROOT": str(Path(tmp) / "data")})
        version = save_model(settings.layout(), model, cfg, train_window="bench", metrics={})
        write_active_snapshot(settings.layout(), AS_OF, table, num_shards=1)
        seconds, _ = median_seconds(lambda: encode_shard(settings, version, AS_OF, 0), repeats=max(1, repeats - 1), warmup=1)
    return {"e2e_users_per_s": round(table.num_rows / seconds, 1), "e2e_s": round(seconds, 3)}


if __name__ == "__main__":
    main()
