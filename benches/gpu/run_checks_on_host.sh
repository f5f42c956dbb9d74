#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, in one device call: the GPU correctness checks without a
# benchmark. The fused-MoE kernels run alone (rust/kernels/emulate/check_moe.py --gpu: the emulation's
# cases by the real kernels, Qwen3-30B-A3B / gpt-oss layer shapes, kernel timings), the engine's bf16 MoE
# against HF (tests/gpu/test_moe_gpu.py -k engine) and every architecture's parity (tests/gpu/test_arch_parity.py).
#
#   run(command="bash benches/gpu/run_checks_on_host.sh", carry=["dist/cuda", "dist/pywheels"], timeout_s=600)
#
# Under $OUT: check_moe_gpu.log, moe_engine.log / .jsonl, arch_parity.log / .jsonl, nvidia_smi.txt.
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
step() { echo "[checks] $1 rc=$2 after $(( $(date +%s) - t0 )) s"; }

PATH=/usr/local/cuda/bin:$PATH timeout "${KERNEL_LIMIT_S:-200}" python3 rust/kernels/emulate/check_moe.py --gpu > "$OUT/check_moe_gpu.log" 2>&1
k=$?; step "check_moe --gpu" $k; tail -n 16 "$OUT/check_moe_gpu.log"

pytest_gpu() {  # name, test file, extra pytest arguments
    local name=$1 file=$2; shift 2
    MLC_GPU_RESULTS="$OUT/$name.jsonl" PYTHONPATH="$SITE" timeout "${PARITY_LIMIT_S:-240}" "$PY" -m pytest -m gpu "$file" -v -s -rs \
        -p no:cacheprovider -o pythonpath= --confcutdir=tests/gpu "$@" > "$OUT/$name.log" 2>&1
}
pytest_gpu moe_engine tests/gpu/test_moe_gpu.py -k engine
m=$?; step "moe engine vs HF" $m; grep -E "moe_engine_bf16|passed|failed" "$OUT/moe_engine.log" | tail -n 4
pytest_gpu arch_parity tests/gpu/test_arch_parity.py
a=$?; step "arch parity" $a; grep -E '^(arch |-{20}|[a-z0-9_]+ +[0-9.-]+ )|passed|failed' "$OUT/arch_parity.log" | tail -n 24
[[ $k == 0 && $m == 0 && $a == 0 ]]
