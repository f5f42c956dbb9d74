#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: the decode GEMVs (our 16-bit dense GEMV against cuBLAS, the 4-bit
# GEMV with and without programmatic dependent launch) checked and timed in one or two device calls. STEPS
# picks, in order:
#   setup   install the wheels into $SITE and write the random Llama-3-8B-shaped models
#           (run_on_host.sh --only bandwidth,setup --gguf-q4)
#   tests   tests/gpu/test_fused.py, test_q4_gpu.py, test_engine_gpu.py (correctness; timings recorded)
#   timing  test_fused.py's timings again with MLC_DENSE_GEMV_MAX_TOKENS=0 (cuBLAS), beside the tests step's
#   ab      batch-1 greedy decode, alternating settings (run_env_ab_on_host.sh): bf16 with the dense
#           GEMV off / on, both models with MLC_PDL=0 / 1
#   wheels  batch-1 greedy decode on the wheel in $BASE_DIR (default dist/cuda_base) and this one,
#           alternating (run_env_ab_on_host.sh with VAR=PYTHONPATH; WHEEL_MODELS, default Q4_0 and bf16)
#   q4tiles the Q4_0 model's decode at 1-64 sequences (bench_gpu.py's ours_q4 phase) under each setting of
#           Q4_TILE_ENVS (space-separated VAR=VALUE; default: the GEMV without token tiles
#           (MLC_Q4_GEMV_MAX_TILES=1), the GEMV up to 24 and up to 64 tokens (MLC_Q4_GEMV_MAX_TOKENS)),
#           alternating ROUNDS times: what the tiles give and where the GEMV should hand over to the GEMM
#   mma     the dense GEMV's tensor-core variant (2-16 tokens, MLC_DENSE_GEMV_MMA_MAX_TOKENS=16): test_fused.py
#           with it (correctness and timings), then bf16 decode at 1-16 sequences without / with it,
#           alternating ROUNDS times (bench_gpu.py's ours phase)
#   matrix  issue 13's matrix (benches/bench_gpu.py through run_on_host.sh: bf16, FP8 KV, Q4_0, TTFT,
#           long contexts, the open workload, HF at batch 1)
#
#   run(command="STEPS='setup tests timing' bash benches/gpu/run_gemv_ab_on_host.sh", carry=["dist/cuda", "dist/pywheels"])
#   run(command="STEPS=ab bash benches/gpu/run_gemv_ab_on_host.sh", ...)   # on the same warm machine
#
# Under $OUT: *.log, *.jsonl (timings: one JSON line per case), env_ab_*.jsonl.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
STEPS=${STEPS:-"setup tests timing"}
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo "[gemv] $1 rc=$2 after $(( $(date +%s) - t0 )) s"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
PYTEST_ARGS=(-q -rs -p no:cacheprovider -o pythonpath= --confcutdir=tests/gpu)

if has setup; then
    OUT=$OUT/setup SITE=$SITE bash benches/gpu/run_on_host.sh --only bandwidth,setup --gguf-q4 --budget-s 200 > "$OUT/setup.log" 2>&1
    step setup $?; tail -n 5 "$OUT/setup.log"
fi
source "$ROOT/benches/gpu/host_env.sh"
export MLC_REQUIRE_GPU=1

run_tests() {  # $@: test files (without .py) under tests/gpu
    # Q4_K: a pytest -k filter for test_q4_gpu.py (e.g. leave out the GEMM / dequantize paths, which these
    # changes do not touch, when the device time is short).
    for t in "$@"; do
        k=()
        [[ $t == test_q4_gpu && -n "${Q4_K:-}" ]] && k=(-k "$Q4_K")
        MLC_GPU_RESULTS="$OUT/$t.jsonl" timeout "${TEST_LIMIT_S:-200}" "$PY" -m pytest "tests/gpu/$t.py" "${PYTEST_ARGS[@]}" "${k[@]}" \
            > "$OUT/$t.log" 2>&1
        step "$t" $?; grep -E "passed|failed|FAILED|Error" "$OUT/$t.log" | tail -n 8
    done
}
# TESTS: the test files of the tests step (default all three); LATE_TESTS: more, run after the other steps.
has tests && run_tests ${TESTS:-test_fused test_q4_gpu test_engine_gpu}

if has timing; then
    MLC_DENSE_GEMV_MAX_TOKENS=0 MLC_GPU_RESULTS="$OUT/fused_timing_cublas.jsonl" timeout 120 "$PY" -m pytest tests/gpu/test_fused.py \
        -k timing "${PYTEST_ARGS[@]}" > "$OUT/fused_timing_cublas.log" 2>&1
    step "fused timing, cuBLAS" $?
    "$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
def table(title, runs):
    keyed = {}
    for label, rs in runs:
        for r in rs:
            if r.get("test") in ("fused_timing", "q4_timing"):
                keyed.setdefault((r["name"], r.get("tokens", "")), {})[label] = r["device_us"]
    print(title)
    labels = [l for l, _ in runs]
    print(f"{'case':<24}" + "".join(f"{l:>14}" for l in labels))
    for (name, tok), v in keyed.items():
        print(f"{name + (' t' + str(tok) if tok != '' else ''):<24}" + "".join(f"{v.get(l, float('nan')):>14.2f}" for l in labels))
table("dense GEMV, us per call", [("ours", rows("test_fused.jsonl")), ("cuBLAS", rows("fused_timing_cublas.jsonl"))])
PYEOF
fi

if has ab; then
    OUT=$OUT VAR=MLC_DENSE_GEMV_MAX_TOKENS VALUES="0 1" ROUNDS=${ROUNDS:-2} MODELS="bf16:/tmp/mlc_bench_llama3-8b" \
        bash benches/gpu/run_env_ab_on_host.sh > "$OUT/env_ab_dense.log" 2>&1
    step "A/B dense GEMV" $?; tail -n 3 "$OUT/env_ab_dense.log"
    mv "$OUT/env_ab.jsonl" "$OUT/env_ab_dense.jsonl"
    OUT=$OUT VAR=MLC_PDL VALUES="0 1" ROUNDS=${ROUNDS:-2} bash benches/gpu/run_env_ab_on_host.sh > "$OUT/env_ab_pdl.log" 2>&1
    step "A/B PDL" $?; tail -n 6 "$OUT/env_ab_pdl.log"
    mv "$OUT/env_ab.jsonl" "$OUT/env_ab_pdl.jsonl"
fi

if has wheels; then
    rm -rf /tmp/site_base
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target /tmp/site_base \
        "${BASE_DIR:-dist/cuda_base}"/*.whl dist/pywheels/*.whl
    OUT=$OUT VAR=PYTHONPATH VALUES="/tmp/site_base $SITE" ROUNDS=${ROUNDS:-2} \
        MODELS=${WHEEL_MODELS:-"q4_0:/tmp/mlc_bench_llama3-8b_q4_0.gguf bf16:/tmp/mlc_bench_llama3-8b"} \
        bash benches/gpu/run_env_ab_on_host.sh > "$OUT/env_ab_wheels.log" 2>&1
    step "A/B wheels" $?; tail -n 6 "$OUT/env_ab_wheels.log"
    mv "$OUT/env_ab.jsonl" "$OUT/env_ab_wheels.jsonl"
fi

if has q4tiles; then
    for round in $(seq "${ROUNDS:-2}"); do
        for e in ${Q4_TILE_ENVS:-MLC_Q4_GEMV_MAX_TILES=1 MLC_Q4_GEMV_MAX_TOKENS=24 MLC_Q4_GEMV_MAX_TOKENS=64}; do
            tag=${e//=/_}
            env "$e" OUT=$OUT/q4tiles_${tag}_r$round SITE=$SITE bash benches/gpu/run_on_host.sh --only bandwidth,ours_q4 \
                --gguf-q4 --q4-batches "${Q4_TILE_BATCHES:-1,8,16,24,32,40,48,64}" --ttft-reps 1 --budget-s 150 \
                > "$OUT/q4tiles_${tag}_r$round.log" 2>&1
            step "q4 decode with $e, round $round" $?
            grep -E "^ours \(mlc_llm\) +q4_0" "$OUT/q4tiles_${tag}_r$round.log"
        done
    done
fi

if has mma; then
    MLC_DENSE_GEMV_MMA_MAX_TOKENS=16 MLC_GPU_RESULTS="$OUT/test_fused_mma.jsonl" timeout "${TEST_LIMIT_S:-200}" "$PY" -m pytest \
        tests/gpu/test_fused.py "${PYTEST_ARGS[@]}" > "$OUT/test_fused_mma.log" 2>&1
    step "test_fused with the tensor-core dense GEMV" $?; grep -E "passed|failed|FAILED|Error" "$OUT/test_fused_mma.log" | tail -n 8
    for round in $(seq "${ROUNDS:-2}"); do
        for v in 0 16; do
            MLC_DENSE_GEMV_MMA_MAX_TOKENS=$v OUT=$OUT/mma_${v}_r$round SITE=$SITE bash benches/gpu/run_on_host.sh --only bandwidth,ours \
                --batches "${MMA_BATCHES:-1,2,4,8,16}" --ttft-reps 1 --budget-s 150 > "$OUT/mma_${v}_r$round.log" 2>&1
            step "bf16 decode, MLC_DENSE_GEMV_MMA_MAX_TOKENS=$v, round $round" $?
            grep -E "^ours \(mlc_llm\) +bf16 " "$OUT/mma_${v}_r$round.log"
        done
    done
fi

if has matrix; then
    OUT=$OUT/matrix SITE=$SITE bash benches/gpu/run_on_host.sh --batches 1,16,64,256 --q4-batches 1,16,33,64 --hf-batches 1 \
        --kv-fp8 --gguf-q4 --long 64x1000,16x3900 --ttft-reps 3 --open-requests 1000 --budget-s "${MATRIX_BUDGET_S:-290}" \
        > "$OUT/matrix.log" 2>&1
    step matrix $?; tail -n 40 "$OUT/matrix.log"
fi

[[ -n "${LATE_TESTS:-}" ]] && run_tests $LATE_TESTS

# The device call brings back at most 8 files: everything in one archive.
tar czf "/tmp/gemv_out.tgz" -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gemv_out.tgz "$OUT/gemv_out.tgz"
