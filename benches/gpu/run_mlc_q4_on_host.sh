#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: the 4-bit benchmark (Llama-3-8B shape, random bf16 weights made
# on the host, then a Q4_0 GGUF and an MLC q4f16_1 directory made by `mlc_llm convert_weight`), a per-kernel
# timing of batch-1 decode on the MLC directory with Nsight Compute, and the GPU tests of MLC directories and
# 16-bit checkpoints. Everything lands in $OUT (bench_gpu.json/.log, ncu_kernels.csv, gpu_tests.log,
# gpu_results.jsonl, import.log, nvidia_smi.txt).
#
#   run(command="MLC_BENCH_COMMIT=<sha> bash benches/gpu/run_mlc_q4_on_host.sh", carry=["dist/cuda", "dist/pywheels"],
#       kind="nvidia-h100-x1", timeout_s=600)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
mkdir -p "$OUT"

bash benches/gpu/run_on_host.sh --mlc-q4 --gguf-q4 --skip-hf --batches 1 --q4-batches 1 --budget-s "${BENCH_BUDGET_S:-330}"
echo "[run_mlc_q4] bench rc=$?"

MLC_DIR=/tmp/mlc_bench_llama3-8b_q4f16_1-MLC
if command -v ncu > /dev/null && [[ -d $MLC_DIR ]]; then
    # Eager decode (no graphs) so that every kernel is its own launch; skip the warm-up and the prefill.
    MLC_CUDA_GRAPH=0 PYTHONPATH="$SITE" timeout 150 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
        --launch-skip "${NCU_SKIP:-6000}" --launch-count "${NCU_COUNT:-700}" \
        "$PY" benches/gpu/profile_decode.py "$MLC_DIR" --new 128 > "$OUT/ncu_kernels.csv" 2> "$OUT/ncu.err"
    echo "[run_mlc_q4] ncu rc=$? ($(wc -l < "$OUT/ncu_kernels.csv") lines)"
    tail -n 5 "$OUT/ncu.err"; rm -f "$OUT/ncu.err"
fi
# Decode speed of the same directory with and without graphs, outside the profiler.
for g in ${PROFILE_GRAPHS-1 0}; do
    MLC_CUDA_GRAPH=$g PYTHONPATH="$SITE" "$PY" benches/gpu/profile_decode.py "$MLC_DIR" --new 256 2>&1 | tail -n 1 | sed "s/^/[profile_decode graphs=$g] /"
done

export MLC_GPU_RESULTS="$OUT/gpu_results.jsonl"
MLC_REQUIRE_GPU=1 PYTHONPATH="$SITE" timeout "${GPU_TESTS_TIMEOUT_S:-240}" "$PY" -m pytest -m gpu ${GPU_TESTS:-tests/gpu/test_mlc_gpu.py tests/gpu/test_smoke.py} -v -rs \
    -p no:cacheprovider -o pythonpath= --confcutdir=tests/gpu > "$OUT/gpu_tests.log" 2>&1
echo "[run_mlc_q4] gpu tests rc=$?"
tail -n 15 "$OUT/gpu_tests.log"
