#!/usr/bin/env bash
# The device tool sends the whole working tree (tracked files included) and refuses more than 64 MiB with
# the carried wheels; the CPU test fixtures (tests/fixtures/models, tests/fixtures/tokenizers, ~65 MB) are
# not needed on the GPU host (GPU tests build their models there), but the MLC GPU tests read the five
# original tiny models and the MXFP4 GPU test gpt-oss's MXFP4 fixture. `aside` moves the fixtures out of the tree (keeping those), `back` restores
# them. Unstaged deletions are never committed by `git commit` without -a, so commits in between are safe;
# do not run CPU tests while the fixtures are aside.
#
#   bash .ci/cuda/fixtures_aside.sh aside && <device call> ; bash .ci/cuda/fixtures_aside.sh back
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STASH=${FIXTURES_STASH:-$ROOT/../.fixtures_stash}
case "${1:-}" in
aside)
    [[ -e "$STASH" ]] && { echo "$STASH exists: fixtures are already aside (run 'back' first)" >&2; exit 1; }
    mkdir -p "$STASH"
    mv "$ROOT/tests/fixtures/models" "$STASH/models"
    mv "$ROOT/tests/fixtures/tokenizers" "$STASH/tokenizers"
    mkdir -p "$ROOT/tests/fixtures/models"
    # the five original tiny models (MLC GPU tests) and gpt-oss's MXFP4 fixture (test_moe_mxfp4_gpu.py's HF and
    # GGUF cases, 4.6 MB)
    for d in llama llama3 mistral qwen2 qwen3 gpt_oss_mxfp4; do cp -r "$STASH/models/$d" "$ROOT/tests/fixtures/models/"; done
    cp "$STASH/models/manifest.json" "$ROOT/tests/fixtures/models/"
    echo "fixtures aside in $STASH; tracked files now: $(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
    ;;
back)
    [[ -d "$STASH/models" ]] || { echo "nothing aside in $STASH" >&2; exit 1; }
    rm -rf "$ROOT/tests/fixtures/models"
    mv "$STASH/models" "$ROOT/tests/fixtures/models"
    mv "$STASH/tokenizers" "$ROOT/tests/fixtures/tokenizers"
    rmdir "$STASH"
    (cd "$ROOT" && git status --short tests/fixtures | head)
    ;;
*) echo "usage: $0 aside|back" >&2; exit 2 ;;
esac
