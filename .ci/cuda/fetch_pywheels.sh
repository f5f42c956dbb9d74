#!/usr/bin/env bash
# Downloads the pure-Python/cp312 wheels the GPU host lacks (it has no network and no pydantic) into
# dist/pywheels/, for run_gpu.sh to install beside the CUDA wheel. Versions match the build machine.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$ROOT/dist/pywheels}
mkdir -p "$DEST"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" \
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
ls -la "$DEST"
