#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: how long our engine takes to be ready on a fresh machine, with
# the cubins built ahead of time (rust/kernels/build.rs) and the kernel preload at construction
# (rust/core/src/cuda_kernels.rs), against the driver's JIT cache and without it.
#
#   run(command="bash benches/gpu/run_ready_probe.sh", carry=["dist/cuda", "dist/pywheels"],
#       kind="nvidia-h100-x1", timeout_s=300)
#
# 1. installs the carried wheels into /tmp/site (as benches/gpu/run_on_host.sh does);
# 2. writes the Llama-3-8B-shaped random bf16 model with benches/bench_gpu.py's setup phase (reused when
#    /tmp/mlc_bench_llama3-8b already holds it; about 35 s on an H100 otherwise);
# 3. runs benches/gpu/ready_probe.py (construct, then one 1-token request) four times, each in a new process:
#      fresh      CUDA_CACHE_PATH = a new empty directory (a fresh machine)
#      warm       the same directory again (a later process on the same machine)
#      nocache    CUDA_CACHE_DISABLE=1 (nothing from or to the JIT disk cache)
#      ptx_fresh  MLC_KERNEL_IMAGES=0 MLC_PRELOAD_KERNELS=0 and another new cache directory: the engine as it
#                 was before (every module from PTX, loaded at the first request that uses it)
# Writes under $OUT: ready_probe.json (all runs), ready_<tag>.json and ready_<tag>.log (the engine's info log:
# per-module load times and construction phases), setup.json, install.log, nvidia_smi.txt.
# Takes about 1.5-2 minutes on an H100 (under 4 with the model written).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
SITE=${SITE:-/tmp/site}
MODEL=${MODEL:-/tmp/mlc_bench_llama3-8b}
CACHES=$(mktemp -d /tmp/ready_probe_cache.XXXXXX)
mkdir -p "$OUT"
if [[ -n "${PY:-}" ]]; then :
elif [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1
t0=$(date +%s)
say() { echo "[ready_probe +$(( $(date +%s) - t0 ))s] $*"; }

{
say "python: $PY ($("$PY" --version 2>&1)); host $(hostname); $(date -u +%FT%TZ)"
shopt -s nullglob
wheels=(dist/cuda/*.whl dist/pywheels/*.whl)
if [[ ${#wheels[@]} -eq 0 ]]; then echo "no wheels under dist/cuda or dist/pywheels" >&2; exit 2; fi
rm -rf "$SITE"
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" \
    || { echo "pip install failed" >&2; exit 2; }
say "installed ${wheels[*]} -> $SITE"
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || say "nvidia-smi failed"
import_check() {
    PYTHONPATH="$SITE" "$PY" -c 'import mlc_llm._core as c; print("_core from", c.__file__, c.cuda_device_count(), "CUDA device(s)")'
}
if ! import_check; then
    CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
    [[ -n "$CU13" ]] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CU13"
    say "import failed; retrying with LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    import_check || { echo "mlc_llm does not import" >&2; exit 2; }
fi
} 2>&1 | tee "$OUT/install.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || exit 2
# The import check may have extended LD_LIBRARY_PATH inside the pipeline's subshell: redo it here.
if ! PYTHONPATH="$SITE" "$PY" -c 'import mlc_llm._core' 2>/dev/null; then
    CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
    [[ -n "$CU13" ]] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CU13"
fi

say "model: $MODEL (bench_gpu.py --only setup)"
"$PY" benches/bench_gpu.py --only setup --model-dir "$MODEL" --out "$OUT/setup.json" --torch-python "$PY" \
    --budget-s 200 > "$OUT/setup.log" 2>&1
[[ -f "$MODEL/model.safetensors" || -f "$MODEL/model.safetensors.index.json" ]] \
    || { tail -n 30 "$OUT/setup.log"; echo "setup wrote no model" >&2; exit 3; }
say "model ready"

probe() {  # probe TAG [VAR=VALUE ...]
    local tag=$1; shift
    say "probe $tag: $*"
    env "$@" PYTHONPATH="$SITE" RUST_LOG=${RUST_LOG:-mlc_core=info} timeout 90 \
        "$PY" benches/gpu/ready_probe.py --model "$MODEL" --tag "$tag" --out "$OUT/ready_$tag.json" \
        2> "$OUT/ready_$tag.log" || say "probe $tag failed (rc=$?): $(tail -n 3 "$OUT/ready_$tag.log")"
    grep -E 'ready in|kernel modules loaded' "$OUT/ready_$tag.log" | sed 's/^/    /'
}
mkdir -p "$CACHES/a" "$CACHES/b"
probe fresh CUDA_CACHE_PATH="$CACHES/a"
probe warm CUDA_CACHE_PATH="$CACHES/a"
probe nocache CUDA_CACHE_DISABLE=1 CUDA_CACHE_PATH="$CACHES/c"
probe ptx_fresh CUDA_CACHE_PATH="$CACHES/b" MLC_KERNEL_IMAGES=0 MLC_PRELOAD_KERNELS=0

"$PY" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
runs = []
for tag in ("fresh", "warm", "nocache", "ptx_fresh"):
    p = os.path.join(out, f"ready_{tag}.json")
    if os.path.exists(p):
        runs.append(json.load(open(p)))
json.dump({"what": "engine construction and first 1-token answer, Llama-3-8B-shaped random bf16 (ready_probe.py)",
           "runs": runs}, open(os.path.join(out, "ready_probe.json"), "w"), indent=1)
print(f"{'run':<10} {'construct s':>11} {'first answer s':>14} {'ready s':>8} {'2nd answer s':>12} {'JIT cache MB':>12}")
for r in runs:
    f = lambda k: f"{r[k]:.2f}" if isinstance(r.get(k), float) else "-"  # noqa: E731
    mb = f"{r['jit_cache_bytes'] / 1e6:.1f}" if r.get("jit_cache_bytes") is not None else "-"
    print(f"{r['tag']:<10} {f('construct_s'):>11} {f('first_answer_s'):>14} {f('ready_s'):>8} {f('second_answer_s'):>12} {mb:>12}"
          + (f"  ERROR {r['error']}" if r.get("error") else ""))
    if r.get("startup_s"):
        print("           " + ", ".join(f"{p} {s:.2f}" for p, s in r["startup_s"]))
PY
rm -rf "$CACHES"
say "done"
