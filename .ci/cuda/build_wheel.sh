#!/usr/bin/env bash
# Builds the CUDA wheel of mlc_llm on a machine without a GPU (toolkit from .ci/cuda/setup_toolkit.sh).
# Output: dist/cuda/mlc_llm-*-cp39-abi3-linux_x86_64.whl (CUDA libraries are NOT bundled: they come from
# the GPU host) and dist/cuda/build_info.json (wall time, size, NEEDED libraries).
# Runs from any directory; uses its own cargo target dir (target-cuda) so the CPU build in target/ is kept.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT_DIR=${OUT_DIR:-dist/cuda}
MAX_MIB=${MAX_WHEEL_MIB:-60}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-cuda}

# PATH, CUDA_HOME/CUDA_PATH/CUDA_ROOT, CUDA_COMPUTE_CAP=90, CUDARC_CUDA_VERSION=13000, CUDAFORGE_THREADS=2
eval "$(bash "$ROOT/.ci/cuda/setup_toolkit.sh" --env)"
nvcc --version | grep -q 'release 13\.0' || { echo "nvcc is not 13.0: $(nvcc --version | tail -n 2)" >&2; exit 1; }
echo "[build_wheel] nvcc: $(command -v nvcc); CUDA_HOME=$CUDA_HOME; CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
echo "[build_wheel] CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.whl "$OUT_DIR"/build_info.json

t0=$(date +%s)
nice -n 19 maturin build --release --features cuda --compatibility linux --auditwheel skip -o "$OUT_DIR"
t1=$(date +%s)
secs=$((t1 - t0))

shopt -s nullglob
wheels=("$OUT_DIR"/*.whl)
[[ ${#wheels[@]} -eq 1 ]] || { echo "expected one wheel in $OUT_DIR, found ${#wheels[@]}" >&2; exit 1; }
whl=${wheels[0]}
bytes=$(stat -c %s "$whl")
mib=$(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1048576}')
echo "[build_wheel] wheel: $whl ($bytes bytes = $mib MiB), built in ${secs}s"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m zipfile -e "$whl" "$tmp"
so=$(find "$tmp" -name '_core*.so' | head -n 1)
[[ -n "$so" ]] || { echo "no _core*.so in the wheel" >&2; exit 1; }
so_bytes=$(stat -c %s "$so")
needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
echo "[build_wheel] $(basename "$so"): $so_bytes bytes; readelf -d NEEDED:"
readelf -d "$so" | grep -E 'NEEDED|RUNPATH|RPATH|SONAME' || true
if readelf -d "$so" | grep -qE 'R(UN)?PATH.*stubs'; then
    echo "the extension carries the stub directory in its RUNPATH" >&2; exit 1
fi

python3 - "$OUT_DIR/build_info.json" "$whl" "$bytes" "$so_bytes" "$secs" "$(git rev-parse HEAD)" \
    "$(nvcc --version | tail -n 2 | head -n 1)" $needed <<'PY'
import json, sys
out, whl, b, so_b, secs, commit, nvcc, *needed = sys.argv[1:]
json.dump({"wheel": whl.rsplit("/", 1)[-1], "wheel_bytes": int(b), "so_bytes": int(so_b),
           "build_seconds": int(secs), "commit": commit, "nvcc": nvcc,
           "cuda_compute_cap": "90", "needed": needed}, open(out, "w"), indent=2)
PY
cat "$OUT_DIR/build_info.json"

if (( bytes > MAX_MIB * 1048576 )); then
    echo "wheel is $mib MiB, over the $MAX_MIB MiB limit (a device call carries at most 64 MiB)" >&2
    exit 1
fi
echo "[build_wheel] OK"
