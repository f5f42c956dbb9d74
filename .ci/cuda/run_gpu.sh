#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, after the CUDA wheel was carried in dist/cuda/ (and optional
# pure-Python wheels in dist/pywheels/). Installs them into a private target dir, imports mlc_llm._core,
# runs the device smoke test and `pytest -m gpu tests/gpu`, and writes logs + summary.json under $OUT.
#
#   run(command="bash .ci/cuda/run_gpu.sh", carry=["dist/cuda"], kind="nvidia-h100-x1")
#
# The install dir comes first on PYTHONPATH and the repo's python/ source dir is never added: it holds
# mlc_llm without the compiled _core and would shadow the installed package.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"

main() {

if [[ -n "${PY:-}" ]]; then :
elif [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python
else PY=python3; fi
echo "[run_gpu] python: $PY ($("$PY" --version 2>&1)); host $(hostname); $(date -u +%FT%TZ)"

# 1. install the carried wheels
shopt -s nullglob
wheels=(dist/cuda/*.whl dist/pywheels/*.whl)
if [[ ${#wheels[@]} -eq 0 ]]; then echo "[run_gpu] no wheels under dist/cuda or dist/pywheels" >&2; exit 2; fi
rm -rf "$SITE"
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" \
    || { echo "[run_gpu] pip install failed" >&2; exit 2; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
echo "[run_gpu] installed: ${wheels[*]} -> $SITE"

# 2. the device
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || echo "[run_gpu] nvidia-smi failed" >&2
SMI_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
echo "[run_gpu] GPU: $SMI_LINE"
PRESET_LD=${LD_LIBRARY_PATH:-}
echo "[run_gpu] preset LD_LIBRARY_PATH=$PRESET_LD"

# 3. import; on a missing shared library, append the torch venv's CUDA 13 libs (keep the preset value:
#    the real libcuda.so.1 is found through it) and try once more
LD_FIX=""
import_check() { "$PY" -c 'import mlc_llm, mlc_llm._core as c; print("mlc_llm from", mlc_llm.__file__); print("_core from", c.__file__)' > "$OUT/import.log" 2>&1; }
if import_check; then IMPORT_OK=1
else
    cat "$OUT/import.log"
    CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
    if [[ -n "$CU13" ]] && grep -q 'cannot open shared object' "$OUT/import.log"; then
        LD_FIX=$CU13
        export LD_LIBRARY_PATH="${PRESET_LD:+$PRESET_LD:}$CU13"
        echo "[run_gpu] import failed on a shared library; retrying with LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        if import_check; then IMPORT_OK=1; else IMPORT_OK=0; fi
    else IMPORT_OK=0; fi
fi
cat "$OUT/import.log"
so=$(ls "$SITE"/mlc_llm/_core*.so 2>/dev/null | head -n 1)
[[ -n "$so" ]] && { echo "[run_gpu] ldd $so:"; ldd "$so" | grep -E 'cuda|cublas|curand|nvrtc|stdc|not found' | tee "$OUT/ldd.txt"; }

# 4. smoke test (first call includes context creation, cuBLAS init and the PTX JIT of candle's kernels)
SMOKE_RC=99
if [[ $IMPORT_OK == 1 ]]; then
    "$PY" - > "$OUT/smoke.json" 2> "$OUT/smoke.err" <<'PY'
import json, time
import mlc_llm._core as c
r = {}
t = time.perf_counter(); r["cuda_device_count"] = c.cuda_device_count(); r["count_s"] = round(time.perf_counter() - t, 3)
t = time.perf_counter(); r["smoke_first"] = c.device_smoke_test("cuda:0"); r["smoke_first_s"] = round(time.perf_counter() - t, 3)
t = time.perf_counter(); r["smoke_second"] = c.device_smoke_test("cuda:0"); r["smoke_second_s"] = round(time.perf_counter() - t, 3)
print(json.dumps(r))
PY
    SMOKE_RC=$?
    echo "[run_gpu] smoke rc=$SMOKE_RC: $(cat "$OUT/smoke.json")"; cat "$OUT/smoke.err"
    [[ -s "$OUT/smoke.err" ]] || rm -f "$OUT/smoke.err"   # at most 8 files come back from $OUT
fi

# 5. pytest -m gpu (the host image has pytest; a carried pytest wheel in dist/pywheels also works)
PYTEST_RC=99
# GPU tests append their measured numbers (kernel errors, engine agreement) here as JSON lines.
export MLC_GPU_RESULTS="$OUT/gpu_results.jsonl"
if "$PY" -c 'import pytest' 2>/dev/null; then
    # The installed package must be the one under test: --confcutdir keeps tests/conftest.py (which puts
    # the source tree python/ first on sys.path for the CPU tests) out, -o pythonpath= any ini setting.
    # MLC_REQUIRE_GPU=1 turns the tests' "no GPU / not importable" skips into failures.
    MLC_REQUIRE_GPU=1 "$PY" -m pytest -m gpu tests/gpu -v -rs -p no:cacheprovider -o pythonpath= \
        --confcutdir=tests/gpu > "$OUT/pytest.log" 2>&1
    PYTEST_RC=$?
    tail -n 25 "$OUT/pytest.log"
else
    echo "[run_gpu] pytest is not importable with $PY; carry it in dist/pywheels" | tee "$OUT/pytest.log"
fi

# 6. summary
"$PY" - "$OUT" "$SMI_LINE" "$PRESET_LD" "$LD_FIX" "$IMPORT_OK" "$SMOKE_RC" "$PYTEST_RC" "$PY" <<'PY'
import json, os, sys, glob, platform
out, smi, preset, fix, imp, smoke_rc, pytest_rc, py = sys.argv[1:]
def read(p):
    try:
        return open(os.path.join(out, p)).read()
    except OSError:
        return ""
s = {"nvidia_smi": smi, "python": platform.python_version(), "interpreter": py,
     "ld_library_path_preset": preset, "ld_library_path_appended": fix or None,
     "import_ok": imp == "1", "import_log": read("import.log").strip(),
     "smoke_rc": int(smoke_rc), "pytest_rc": int(pytest_rc),
     "ldd": [l.strip() for l in read("ldd.txt").splitlines()]}
try:
    s["smoke"] = json.loads(read("smoke.json"))
except ValueError:
    s["smoke"] = None; s["smoke_err"] = read("smoke.err")[-2000:]
lines = [l for l in read("pytest.log").splitlines() if l.startswith("=") and ("passed" in l or "failed" in l or "skipped" in l or "error" in l)]
s["pytest_summary"] = lines[-1].strip("= ") if lines else read("pytest.log")[-500:]
try:
    s["build"] = json.load(open("dist/cuda/build_info.json"))
except (OSError, ValueError):
    s["build"] = None
s["wheels"] = {os.path.basename(w): os.path.getsize(w) for w in glob.glob("dist/cuda/*.whl") + glob.glob("dist/pywheels/*.whl")}
s["ok"] = s["import_ok"] and s["smoke_rc"] == 0 and s["pytest_rc"] == 0
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(s, indent=2))
PY
[[ $IMPORT_OK == 1 && $SMOKE_RC == 0 && $PYTEST_RC == 0 ]]
}

main "$@" 2>&1 | tee "$OUT/run_gpu.log"
exit "${PIPESTATUS[0]}"
