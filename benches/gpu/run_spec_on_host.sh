#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: writes the random Llama-3-8B-shaped bf16 checkpoint (bench_gpu.py's
# setup phase), then benches/gpu/spec_bench.py (plain vs small_draft / eagle / ngram at batch 1 and 16).
# Results: $OUT/spec_bench.json and spec_bench.log.
#
#   run(command="MLC_BENCH_COMMIT=<sha> bash benches/gpu/run_spec_on_host.sh", carry=["dist/cuda", "dist/pywheels"],
#       kind="nvidia-h100-x1", timeout_s=420)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
mkdir -p "$OUT"
{
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" dist/cuda/*.whl dist/pywheels/*.whl
"$PY" benches/bench_gpu.py --skip-ours --skip-hf --out "$OUT/setup.json" --budget-s 150 > "$OUT/setup.log" 2>&1
echo "[run_spec] setup rc=$? $(tail -n 3 "$OUT/setup.log" | tr '\n' ' ')"
PYTHONPATH="$SITE" "$PY" benches/gpu/spec_bench.py --out "$OUT/spec_bench.json" ${SPEC_ARGS:-}
echo "[run_spec] spec_bench rc=$?"
} 2>&1 | tee "$OUT/spec_bench.log"
