#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: writes the random Llama-3-8B-shaped bf16 checkpoint (bench_gpu.py's
# setup phase), then benches/gpu/spec_bench.py (plain vs small_draft / eagle (fixed and adaptive) / ngram at
# batch 1 and 16) and, when $COPY_MODEL names a real chat model on the host (SmolLM2's GGUF), the copy-heavy
# prompt lookup workload on it. Results: $OUT/spec_bench.json and spec_bench.log.
#
#   run(command="MLC_BENCH_COMMIT=<sha> bash benches/gpu/run_spec_on_host.sh", carry=["dist/cuda", "dist/pywheels"],
#       timeout_s=420)
#
# SmolLM2's 98 MB GGUF does not fit in one call's transfer beside the wheel: split it into ignored chunks
# (`split -b 24600000 -d FILE .m/p`), carry one chunk per call on the warm machine (`cp .m/p0N /tmp/smol/`),
# join them there (`cat /tmp/smol/p0? > /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf`, check its sha256
# b179c952...10db53) and pass COPY_MODEL=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf.
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
PYTHONPATH="$SITE" "$PY" benches/gpu/spec_bench.py --out "$OUT/spec_bench.json" ${COPY_MODEL:+--copy-model "$COPY_MODEL"} ${SPEC_ARGS:-}
echo "[run_spec] spec_bench rc=$?"
} 2>&1 | tee "$OUT/spec_bench.log"
