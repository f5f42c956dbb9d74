#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, in one device call: the Q4_0 kernels' GPU tests with their path
# timings (tests/gpu/test_q4_gpu.py: GEMV / tensor-core GEMM / dequantize + cuBLAS against "dense", cuBLAS
# on the weight dequantized beforehand), the fused-MoE kernels (which share the Q4_0 dequantization), and
# optionally a diagnosis script (DIAG="python file" run with the torch venv).
#
#   run(command="bash benches/gpu/run_q4_kernels_on_host.sh", carry=["dist/cuda", "dist/pywheels"], timeout_s=600)
#
# Under $OUT: q4_gpu.log / .jsonl, check_moe_gpu.log, diag.log, nvidia_smi.txt.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
PY=${PY:-/opt/torch/.venv/bin/python}
mkdir -p "$OUT"
t0=$(date +%s)
rm -rf "$SITE"
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" dist/cuda/*.whl dist/pywheels/*.whl || exit 2
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
export PYTHONUNBUFFERED=1 MLC_REQUIRE_GPU=1
step() { echo "[q4] $1 rc=$2 after $(( $(date +%s) - t0 )) s"; }

MLC_GPU_RESULTS="$OUT/q4_gpu.jsonl" PYTHONPATH="$SITE" timeout "${Q4_LIMIT_S:-300}" "$PY" -m pytest -m gpu tests/gpu/test_q4_gpu.py \
    -v -rs -p no:cacheprovider -o pythonpath= --confcutdir=tests/gpu ${Q4_K:+-k "$Q4_K"} > "$OUT/q4_gpu.log" 2>&1
q=$?; step "test_q4_gpu" $q; grep -E "passed|failed|FAILED|Error" "$OUT/q4_gpu.log" | tail -n 12

PATH=/usr/local/cuda/bin:$PATH timeout "${MOE_LIMIT_S:-120}" python3 rust/kernels/emulate/check_moe.py --gpu > "$OUT/check_moe_gpu.log" 2>&1
k=$?; step "check_moe --gpu" $k; tail -n 12 "$OUT/check_moe_gpu.log"

if [[ -n "${DIAG:-}" ]]; then
    PYTHONPATH="$SITE" timeout "${DIAG_LIMIT_S:-90}" "$PY" $DIAG > "$OUT/diag.log" 2>&1
    step "diag $DIAG" $?; tail -n 40 "$OUT/diag.log"
fi
[[ $q == 0 && $k == 0 ]]
