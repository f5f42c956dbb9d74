#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, after benches/gpu/run_on_host.sh has installed the wheels into
# $SITE and written the random models (the same call, or a later one on the still-warm machine): one
# batch-1 decode step's kernels, each timed by Nsight Compute, for every model named in PROFILES
# (benches/gpu/kernel_profile.py). Writes $OUT/profile_<tag>.json per model and $OUT/profile.log.
#
#   PROFILES="bf16:/tmp/mlc_bench_llama3-8b q4_0:/tmp/mlc_bench_llama3-8b_q4_0.gguf" \
#       bash benches/gpu/run_profile_on_host.sh
#
# A tag starting with q4 runs with {"quantized_matmul": true} (4-bit GGUF weights through our 4-bit kernels).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
PROFILES=${PROFILES:-"bf16:/tmp/mlc_bench_llama3-8b q4_0:/tmp/mlc_bench_llama3-8b_q4_0.gguf"}
mkdir -p "$OUT"
source "$ROOT/benches/gpu/host_env.sh"
{
for p in $PROFILES; do
    tag=${p%%:*} model=${p#*:}
    cfg='{}'
    [[ $tag == q4* ]] && cfg='{"quantized_matmul": true}'
    if [[ ! -e $model ]]; then echo "[profile] $tag: no model at $model"; continue; fi
    t0=$(date +%s)
    timeout "${PROFILE_TIMEOUT:-240}" "$PY" benches/gpu/kernel_profile.py "$model" --config "$cfg" --label "$tag" --python "$PY" \
        --out "$OUT/profile_$tag.json"
    echo "[profile] $tag rc=$? in $(( $(date +%s) - t0 )) s"
done
} 2>&1 | tee "$OUT/profile.log"
