#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, in one device call (~350 s): the fused MoE's per-slot decode GEMVs
# (MLC_MOE_GEMV_MAX_SLOTS, off by default) checked and measured against the grouped GEMM on the
# Qwen3-30B-A3B-shaped model, to decide their default.
#   1. install the wheels into $SITE (run_on_host.sh --only bandwidth)
#   2. the 24-layer bf16 model written in the background (bench_gpu.py --only setup) while
#      tests/gpu/test_moe_gpu.py -k decode_gemv runs (GEMV vs grouped GEMM vs the CPU f32 reference)
#   3. batch-1 greedy decode with the GEMVs off / on (SLOTS, default 64 = up to 8 tokens of top-8), alternated
#      ROUNDS times (run_env_ab_on_host.sh: tok/s and the greedy ids' checksum)
#   4. bench_gpu.py's decode at BATCHES (default 1,2,4,8) off and on, with the floor of this call's bandwidth
#
#   run(command="bash benches/gpu/run_moe_gemv_ab_on_host.sh", carry=["dist/cuda", "dist/pywheels"], timeout_s=600)
#
# Under $OUT: inst/, moe_setup.log, moe_gemv.log / .jsonl, env_ab.jsonl / env_ab_moe.log, moe_b_<slots>.json / .log.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
SHAPE=${SHAPE:-qwen3-30b-a3b-24l}
SLOTS=${SLOTS:-64}
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo "[moe_gemv] $1 rc=$2 after $(( $(date +%s) - t0 )) s"; }

OUT=$OUT/inst SITE=$SITE bash benches/gpu/run_on_host.sh --only bandwidth --budget-s 60 > "$OUT/install.log" 2>&1
step install $?
source "$ROOT/benches/gpu/host_env.sh"
export BENCH_ENGINE_PYTHONPATH="$SITE"

# bench_gpu.py puts the package on the engine phase's path only (BENCH_ENGINE_PYTHONPATH), as run_on_host.sh does.
env -u PYTHONPATH "$PY" benches/bench_gpu.py --shape "$SHAPE" --torch-python "$PY" --out /tmp/moe_setup.json --only setup \
    > "$OUT/moe_setup.log" 2>&1 &
setup_pid=$!
MLC_REQUIRE_GPU=1 MLC_GPU_RESULTS="$OUT/moe_gemv.jsonl" timeout "${TEST_LIMIT_S:-200}" "$PY" -m pytest -m gpu \
    tests/gpu/test_moe_gpu.py -k decode_gemv -q -rs -p no:cacheprovider -o pythonpath= --confcutdir=tests/gpu \
    > "$OUT/moe_gemv.log" 2>&1
step "test_moe_gpu -k decode_gemv" $?; grep -E "passed|failed|FAILED|Error" "$OUT/moe_gemv.log" | tail -n 5
wait "$setup_pid"
step setup $?

model=/tmp/mlc_bench_$SHAPE
OUT=$OUT VAR=MLC_MOE_GEMV_MAX_SLOTS VALUES="0 $SLOTS" ROUNDS=${ROUNDS:-2} MODELS="moe_bf16:$model" \
    timeout 200 bash benches/gpu/run_env_ab_on_host.sh > "$OUT/env_ab_moe.log" 2>&1
step "A/B batch 1" $?; tail -n 3 "$OUT/env_ab_moe.log"

for v in 0 "$SLOTS"; do
    MLC_MOE_GEMV_MAX_SLOTS=$v timeout 100 env -u PYTHONPATH "$PY" benches/bench_gpu.py --shape "$SHAPE" --torch-python "$PY" \
        --out "$OUT/moe_b_$v.json" --only bandwidth,ours --batches "${BATCHES:-1,2,4,8}" --ttft-reps 1 --budget-s 95 \
        > "$OUT/moe_b_$v.log" 2>&1
    step "decode, MLC_MOE_GEMV_MAX_SLOTS=$v" $?
    grep -E "^ours \(mlc_llm\)" "$OUT/moe_b_$v.log"
done
