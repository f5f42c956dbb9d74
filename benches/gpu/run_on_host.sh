#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: installs the carried wheels (dist/cuda, dist/pywheels) into
# /tmp/site as .ci/cuda/run_gpu.sh does, then benches/bench_gpu.py with the arguments given here.
# Writes bench_gpu.json, bench_gpu.log, nvidia_smi.txt and import.log under $OUT.
#
#   run(command="bash benches/gpu/run_on_host.sh", carry=["dist/cuda", "dist/pywheels"],
#       kind="nvidia-h100-x1", timeout_s=600)
#   run(command="bash benches/gpu/run_on_host.sh --gguf-q4 --skip-hf", ...)    # the 4-bit run
#
# The installed package is put on PYTHONPATH of our engine's phase only (BENCH_ENGINE_PYTHONPATH): the
# torch / transformers phases run in the host's venv untouched by the carried pure-Python wheels.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"

if [[ -n "${PY:-}" ]]; then :
elif [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1

{
echo "[run_on_host] python: $PY ($("$PY" --version 2>&1)); host $(hostname); $(date -u +%FT%TZ)"
t0=$(date +%s)
shopt -s nullglob
wheels=("${BENCH_WHEELS:-dist/cuda}"/*.whl dist/pywheels/*.whl)  # BENCH_WHEELS: another build (run_ab_on_host.sh)
if [[ ${#wheels[@]} -eq 0 ]]; then echo "[run_on_host] no wheels under dist/cuda or dist/pywheels" >&2; exit 2; fi
rm -rf "$SITE"
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" \
    || { echo "[run_on_host] pip install failed" >&2; exit 2; }
echo "[run_on_host] installed ${wheels[*]} -> $SITE in $(( $(date +%s) - t0 )) s"
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || echo "[run_on_host] nvidia-smi failed"

import_check() {
    PYTHONPATH="$SITE" "$PY" -c 'import mlc_llm, mlc_llm._core as c; print("mlc_llm from", mlc_llm.__file__); print("_core from", c.__file__, c.cuda_device_count(), "CUDA device(s)")' > "$OUT/import.log" 2>&1
}
if ! import_check; then
    cat "$OUT/import.log"
    CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
    if [[ -n "$CU13" ]] && grep -q 'cannot open shared object' "$OUT/import.log"; then
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CU13"
        echo "[run_on_host] import failed on a shared library; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        import_check || echo "[run_on_host] mlc_llm still does not import: our engine's phases will fail (recorded)"
    fi
fi
cat "$OUT/import.log"

export BENCH_ENGINE_PYTHONPATH="$SITE"
"$PY" benches/bench_gpu.py --out "$OUT/bench_gpu.json" --torch-python "$PY" "$@"
rc=$?
echo "[run_on_host] bench_gpu.py rc=$rc, $(( $(date +%s) - t0 )) s in all"
exit $rc
} 2>&1 | tee "$OUT/bench_gpu.log"
exit "${PIPESTATUS[0]}"
