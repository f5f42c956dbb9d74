#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, in one device call: the per-architecture parity test
# (tests/gpu/test_arch_parity.py) and the Gemma-2-9B-shaped bf16 benchmark (benches/bench_gpu.py --shape
# gemma2-9b: ours vs HF transformers, batches 1..256, 2048-token TTFT, floors from this call's bandwidth).
#
#   run(command="bash benches/gpu/run_arch_on_host.sh", carry=["dist/cuda", "dist/pywheels"], timeout_s=600)
#
# The 18.5 GB random model is written (bench_gpu.py --only setup) in the background while the parity test runs
# (it needs little of the GPU and nothing is timed there); the benchmark starts after both, reuses the model
# and gets what is left of LIMIT_S (default 570 s) as its budget. Under $OUT: nvidia_smi.txt, import.log,
# arch_parity.log (pytest -v -s, with the table), arch_parity.jsonl, gemma2_setup.log, bench_gemma2_9b.json,
# bench_gemma2_9b.log, run_arch.log. Extra arguments go to bench_gpu.py (both runs). A CPU dry run:
#   SKIP_INSTALL=1 SITE=<dir with mlc_llm + _core> PY=<python with torch, transformers, pytest> \
#   MLC_ARCH_PARITY_DEVICE=cpu SHAPE=gemma2-tiny bash benches/gpu/run_arch_on_host.sh --device cpu --batches 1,4 ...
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
LIMIT_S=${LIMIT_S:-570}
PARITY_LIMIT_S=${PARITY_LIMIT_S:-240}
SHAPE=${SHAPE:-gemma2-9b}
# Set by run_moe_on_host.sh, which runs this script on another test and shape: the GPU test file, and the
# stems of its logs, of the setup log and of the benchmark's outputs.
TEST=${TEST:-tests/gpu/test_arch_parity.py}
TEST_NAME=${TEST_NAME:-arch_parity}
NAME=${NAME:-gemma2_9b}
SETUP_NAME=${SETUP_NAME:-gemma2}
mkdir -p "$OUT"
t0=$(date +%s)

if [[ -n "${PY:-}" ]]; then :
elif [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1

main() {
echo "[run_arch] python: $PY ($("$PY" --version 2>&1)); host $(hostname); $(date -u +%FT%TZ)"
shopt -s nullglob
wheels=(dist/cuda/*.whl dist/pywheels/*.whl)
if [[ ${#wheels[@]} -eq 0 ]]; then echo "[run_arch] no wheels under dist/cuda or dist/pywheels" >&2; return 2; fi
if [[ "${SKIP_INSTALL:-0}" == 1 ]]; then  # dry runs elsewhere: $SITE already holds mlc_llm
    echo "[run_arch] SKIP_INSTALL=1: using $SITE as it is"
else
    rm -rf "$SITE"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" \
        || { echo "[run_arch] pip install failed" >&2; return 2; }
    echo "[run_arch] installed ${wheels[*]} -> $SITE"
fi
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || echo "[run_arch] nvidia-smi failed"
echo "[run_arch] GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"

import_check() {
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c 'import mlc_llm, mlc_llm._core as c; print("_core from", c.__file__, c.cuda_device_count(), "CUDA device(s)")' > /tmp/import.log 2>&1
}
if ! import_check; then
    cat /tmp/import.log
    CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
    if [[ -n "$CU13" ]] && grep -q "cannot open shared object" /tmp/import.log; then
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CU13"
        echo "[run_arch] import failed on a shared library; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        import_check || echo "[run_arch] mlc_llm still does not import"
    fi
fi
cat /tmp/import.log

# 1. the benchmark's model, in the background
"$PY" benches/bench_gpu.py --shape "$SHAPE" --torch-python "$PY" --out "/tmp/${SETUP_NAME}_setup.json" "$@" --only setup \
    > "$OUT/${SETUP_NAME}_setup.log" 2>&1 &
setup_pid=$!

# 2. parity of every architecture (the installed package only: --confcutdir keeps tests/conftest.py out)
MLC_REQUIRE_GPU=1 MLC_GPU_RESULTS="$OUT/$TEST_NAME.jsonl" PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" timeout "$PARITY_LIMIT_S" \
    "$PY" -m pytest -m gpu "$TEST" -v -s -rs -p no:cacheprovider -o pythonpath= \
    --confcutdir=tests/gpu > "$OUT/$TEST_NAME.log" 2>&1
parity_rc=$?
echo "[run_arch] parity rc=$parity_rc after $(( $(date +%s) - t0 )) s"
grep -E '^(arch |-{20}|[a-z0-9]+ +[0-9.-]+ )|passed|failed' "$OUT/$TEST_NAME.log" | tail -n 14

wait "$setup_pid"
echo "[run_arch] setup rc=$? after $(( $(date +%s) - t0 )) s: $(grep -E 'phase setup:' "$OUT/${SETUP_NAME}_setup.log" | tail -n 1)"

# 3. the benchmark, with what is left
left=$(( LIMIT_S - ($(date +%s) - t0) - 10 ))
echo "[run_arch] benchmark budget ${left} s"
BENCH_ENGINE_PYTHONPATH="$SITE" "$PY" benches/bench_gpu.py --shape "$SHAPE" --batches 1,16,64,256 --hf-batches 1,64,16 \
    --budget-s "$left" --torch-python "$PY" --out "$OUT/bench_$NAME.json" "$@" > "$OUT/bench_$NAME.log" 2>&1
bench_rc=$?
sed -n '/^device:/,$p' "$OUT/bench_$NAME.log"
echo "[run_arch] bench rc=$bench_rc; parity rc=$parity_rc; $(( $(date +%s) - t0 )) s in all"
[[ $parity_rc == 0 && $bench_rc == 0 ]]
}

main "$@" 2>&1 | tee "$OUT/run_arch.log"
exit "${PIPESTATUS[0]}"
