#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 toolkit from PyPI into a venv (default /opt/cuda13) on a build machine
# without a GPU, fixes up the layout for nvcc/cudarc/cudaforge, generates a link-time-only libcuda stub,
# and prints the environment exports. Idempotent: each step is skipped when already done.
#
# Usage: bash .ci/cuda/setup_toolkit.sh            # install + print exports
#        eval "$(bash .ci/cuda/setup_toolkit.sh --env)"   # only print exports (no install)
#
# nvcc is pinned to 13.0: PTX from a newer nvcc fails to load on driver 580 (CUDA 13.0) with
# CUDA_ERROR_UNSUPPORTED_PTX_VERSION. The stub directory ($CU/lib/stubs) must never be on a
# run-time library path: the real libcuda.so.1 comes from the GPU host's driver.
set -euo pipefail

VENV=${CUDA_VENV:-/opt/cuda13}
PIN="cuda-toolkit[nvcc,cccl,cublas,curand,nvrtc]==13.0.3"
ENV_ONLY=0
[[ "${1:-}" == "--env" ]] && ENV_ONLY=1

log() { [[ $ENV_ONLY == 1 ]] || echo "[setup_toolkit] $*" >&2; }

print_env() {
    local cu=$1
    cat <<EOT
export PATH="$cu/bin:\$PATH" CUDA_HOME="$cu" CUDA_PATH="$cu" CUDA_ROOT="$cu"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS=2
EOT
}

cu_dir() {
    echo "$("$VENV/bin/python" -c 'import site;print(site.getsitepackages()[0])')/nvidia/cu13"
}

if [[ $ENV_ONLY == 1 ]]; then
    [[ -x "$VENV/bin/python" ]] || { echo "no toolkit venv at $VENV: run $0 first" >&2; exit 1; }
    print_env "$(cu_dir)"
    exit 0
fi

# 1. venv + pinned toolkit wheels
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
fi
installed=$("$VENV/bin/python" -m pip show cuda-toolkit 2>/dev/null || true)
if [[ "$installed" == *$'\nVersion: 13.0.3'* && -x "$(cu_dir)/bin/nvcc" ]]; then
    log "cuda-toolkit 13.0.3 already installed"
else
    log "installing $PIN (about 600 MB of downloads)"
    "$VENV/bin/pip" install --disable-pip-version-check -q "$PIN"
fi

CU=$(cu_dir)
[[ -x "$CU/bin/nvcc" ]] || { echo "nvcc missing under $CU/bin" >&2; exit 1; }

# 2. lib64 -> lib (the wheels ship lib/, nvcc's profile and cudaforge expect lib64/)
if [[ -L "$CU/lib64" || -d "$CU/lib64" ]]; then
    log "lib64 present"
else
    ln -sfn lib "$CU/lib64"; log "linked lib64 -> lib"
fi

# 3. unversioned .so names for the linker (-lcudart -lcublas ...)
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
    base=${l%%.so.*}
    [[ -e "$CU/lib/lib$l" ]] || { echo "missing $CU/lib/lib$l" >&2; exit 1; }
    if [[ ! -e "$CU/lib/lib$base.so" ]]; then
        ln -sf "lib$l" "$CU/lib/lib$base.so"; log "linked lib$base.so -> lib$l"
    fi
done

# 4. link-time stub of the driver API (SONAME libcuda.so.1), generated from cuda.h
if [[ -f "$CU/lib/stubs/libcuda.so" ]]; then
    log "libcuda stub present"
else
    mkdir -p "$CU/lib/stubs"
    stub_c=$(mktemp --suffix=.c)
    echo '#include <cuda.h>' | gcc -E -P -I"$CU/include" -x c - \
      | grep -oE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' | sed -E 's/\s*\($//' | sort -u \
      | awk '{print "void "$1"(void){}"}' > "$stub_c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$stub_c"
    log "built libcuda stub with $(grep -c . "$stub_c") entry points"
    rm -f "$stub_c"
fi

log "nvcc: $("$CU/bin/nvcc" --version | tail -n 2 | head -n 1)"
log "environment (eval or copy):"
print_env "$CU"
