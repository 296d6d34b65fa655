#!/usr/bin/env bash
# The GPU check, in one short run on a machine with an NVIDIA GPU (issue 18):
#   1. the GPU test lane (scripts/test.sh -m gpu: FAISS GPU and the encoder on CUDA, same interfaces);
#   2. the graph benchmark at 1M users (FAISS on the GPU when it sees one) and the inference benchmark
#      at production shape (max_len 200, heavy-tailed lengths), each falling back to --quick when the
#      full size fails (out of memory, or over its time limit).
# Results: one JSON line per benchmark (bench.common.emit prints it last) and the logs, under $OUT when
# set (else ./gpu-check-<UTC time>/). Exit status: non-zero when the test lane failed.
#
#   bash scripts/gpu_check.sh                 # everything
#   GPU_CHECK_SKIP_TESTS=1 bash scripts/gpu_check.sh   # benchmarks only
#   GPU_CHECK_BENCH_TIMEOUT=1800 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
limit="${GPU_CHECK_BENCH_TIMEOUT:-1200}"
py=.venv/bin/python
[ -x "$py" ] || bash scripts/bootstrap.sh || exit 1

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  "$py" -c 'import torch, faiss; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-");
    print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)'
} 2>&1 | tee "$out/machine.txt"

tests_rc=0
if [ -z "${GPU_CHECK_SKIP_TESTS:-}" ]; then
  bash scripts/test.sh -m gpu -q -rs 2>&1 | tee "$out/test-gpu.log"
  tests_rc=${PIPESTATUS[0]}
fi

# bench NAME ARGS...: the full size first, --quick if it fails; the JSON line goes to $out/NAME.json
bench() {
  local name=$1; shift
  local module=$1; shift
  if timeout "$limit" "$py" -m "$module" "$@" >"$out/$name.log" 2>&1; then
    tail -n 1 "$out/$name.log" >"$out/$name.json"
    echo "$name: done ($out/$name.json)"
  else
    echo "$name: full size failed (exit $?), see $out/$name.log; running --quick" >&2
    if timeout "$limit" "$py" -m "$module" --quick >"$out/$name-quick.log" 2>&1; then
      tail -n 1 "$out/$name-quick.log" >"$out/$name-quick.json"
      echo "$name: --quick done ($out/$name-quick.json)"
    else
      echo "$name: --quick failed too (exit $?), see $out/$name-quick.log" >&2
    fi
  fi
}

bench graph-1m bench.graph --users 1000000
# the trained encoder's vectors (bench.world builds and caches them first), IVF-Flat and IVF-SQ8 on the GPU
bench graph-encoder-1m bench.graph --users 1000000 --vectors encoder --indexes ivf,ivf_sq8
# bench.inference measures the CPU engine (its figures in BENCHMARKS.md); kept for the same-machine ratio
bench inference-cpu bench.inference --users 10000

# the encoder on the GPU at production shape: one shard of GPU_CHECK_USERS users, sequences up to 200
# events (heavy-tailed, median 8), d=64, 2 layers, through encode_shard (read, featurise, encode on the
# device, write, publish), bf16 autocast; the first run warms up, the second is timed
GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}" GPU_CHECK_USERS="${GPU_CHECK_USERS:-200000}" \
  timeout "$limit" "$py" - >"$out/inference-gpu.log" 2>&1 <<'PY'
import json, os, tempfile, time
from core.layout import utc
from soe.config import load_settings
from bench.refresh import random_model
from encoder.inference.engine import encode_shard
from encoder.inference.sample import AS_OF, heavy_tailed_lengths, random_sequences, write_active_snapshot

device, users = os.environ["GPU_CHECK_DEVICE"], int(os.environ["GPU_CHECK_USERS"])
with tempfile.TemporaryDirectory() as tmp:
    s = load_settings(environ={"SOE_DATA__ROOT": tmp, "SOE_INFERENCE__DEVICE": device,
                               "SOE_INFERENCE__STRICT_DEVICE": "true", "SOE_SEQUENCES__MAX_LEN": "200"})
    model = random_model(s, d_model=64, n_layers=2)
    lengths = heavy_tailed_lengths(users, 200, seed=1)
    write_active_snapshot(s.layout(), AS_OF, random_sequences(lengths, AS_OF, seed=1), num_shards=1)
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        m = encode_shard(s.layout(), s.inference, model, utc(AS_OF), 0)
        runs.append(time.perf_counter() - t0)
    print(json.dumps({"bench": "inference-gpu", "device": device, "users": users,
                      "events": int(lengths.sum()), "seconds": [round(x, 2) for x in runs],
                      "users_per_s": round(users / runs[-1], 1), "manifest_device": m.get("device")},
                     default=str))
PY
if [ $? -eq 0 ]; then tail -n 1 "$out/inference-gpu.log" >"$out/inference-gpu.json"; echo "inference-gpu: done"
else echo "inference-gpu: failed, see $out/inference-gpu.log" >&2; fi

echo "test lane exit $tests_rc; results in $out"
exit "$tests_rc"
