#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root: the same measurements on two builds in one device call, so the
# figures compare (same card, same model files, same minutes). B is the wheel carried in $B_DIR (default
# dist/cuda: the change), A the one in $BASE_DIR (default dist/cuda_base, e.g. the previous commit's build;
# without a wheel there, only B runs).
#   1. tests/gpu/test_kernels.py on B (correctness, all cases) and its attention timings on A and B
#   2. benches/bench_gpu.py on A then B with the arguments given here (setup reused, so the model files
#      are the same), through run_on_host.sh
#   3. optionally a diagnosis (DIAG="python file", torch venv, B's package on the path)
#
#   run(command="bash benches/gpu/run_ab_on_host.sh --batches 1,16,64 --long 16x3900 --skip-hf",
#       carry=["dist/cuda", "dist/cuda_base", "dist/pywheels"], timeout_s=600)
#
# Under $OUT: kernels_{a,b}.log / .jsonl, a/ and b/ (bench_gpu.json, bench_gpu.log), diag.log.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu_out}
BASE_DIR=${BASE_DIR:-dist/cuda_base}
B_DIR=${B_DIR:-dist/cuda}
shopt -s nullglob
base=("$BASE_DIR"/*.whl)
HAVE_A=${#base[@]}
PY=${PY:-/opt/torch/.venv/bin/python}
mkdir -p "$OUT/a" "$OUT/b"
t0=$(date +%s)
step() { echo "[ab] $1 rc=$2 after $(( $(date +%s) - t0 )) s"; }
install() {  # $1 wheel dir, $2 site
    rm -rf "$2"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$2" "$1"/*.whl dist/pywheels/*.whl
}
if (( HAVE_A )); then install "$BASE_DIR" /tmp/site_a || exit 2; fi
install "$B_DIR" /tmp/site_b || exit 2
export PYTHONUNBUFFERED=1 MLC_REQUIRE_GPU=1

kernels() {  # $1 a|b, $2 extra pytest args
    MLC_GPU_RESULTS="$OUT/kernels_$1.jsonl" PYTHONPATH="/tmp/site_$1" timeout "${KERNELS_LIMIT_S:-150}" "$PY" -m pytest -m gpu \
        tests/gpu/test_kernels.py -q -rs -p no:cacheprovider -o pythonpath= --confcutdir=tests/gpu $2 > "$OUT/kernels_$1.log" 2>&1
    local rc=$?; step "test_kernels ($1)" $rc; tail -n 3 "$OUT/kernels_$1.log"
}
kernels b ""
if (( HAVE_A )); then kernels a "-k timing"; fi

# run_on_host.sh installs dist/cuda into $SITE: point it at each build in turn.
bench() {  # $1 a|b, then bench_gpu arguments
    local which=$1; shift
    SITE=/tmp/site_bench OUT="$OUT/$which" BENCH_WHEELS="$([[ $which == a ]] && echo "$BASE_DIR" || echo "$B_DIR")" \
        timeout "${BENCH_LIMIT_S:-200}" bash benches/gpu/run_on_host.sh "$@" > /dev/null 2>&1
    local rc=$?; step "bench ($which)" $rc; sed -n '/^engine /,/^phases:/p' "$OUT/$which/bench_gpu.log" | head -n 40
}
if (( HAVE_A )) && [[ -z "${SKIP_BENCH_A:-}" ]]; then bench a "$@"; fi  # SKIP_BENCH_A=1: kernels only
bench b "$@"

if [[ -n "${DIAG:-}" ]]; then
    PYTHONPATH=/tmp/site_b timeout "${DIAG_LIMIT_S:-90}" "$PY" $DIAG > "$OUT/diag.log" 2>&1
    step "diag $DIAG" $?; tail -n 30 "$OUT/diag.log"
fi
