#!/usr/bin/env bash
# Runs ON the GPU host, from the repo root, in one device call (run_arch_on_host.sh's sequence on another test
# and shape): the fused-MoE GPU test (tests/gpu/test_moe_gpu.py: fused vs reference per dtype / quantization
# and expert load, engine bf16 vs HF on tiny Qwen3-MoE and Mixtral) and the Qwen3-30B-A3B-shaped benchmark
# (benches/bench_gpu.py --shape qwen3-30b-a3b-24l: random bf16 weights; ours bf16 and q4f16_1 (mlc_llm
# convert_weight) at decode batches 1/16/64/256 and the 2048-token TTFT, HF transformers in the same run;
# floors from this call's bandwidth with the bytes of the experts each step's batch touches, shapes.py).
#
#   run(command="bash benches/gpu/run_moe_on_host.sh", carry=["dist/cuda", "dist/pywheels"], timeout_s=600)
#
# The 24-layer model (31 GB of bf16) is written in the background while the test runs; SHAPE=qwen3-30b-a3b is
# the 48-layer one (61 GB: its q4f16_1 conversion does not fit the one-GPU host's 64 GB disk beside it). Under
# $OUT: moe.log / moe.jsonl (the test), moe_setup.log, bench_qwen3_moe.json / .log, run_arch.log. Extra
# arguments go to bench_gpu.py (both runs). A CPU dry run of the benchmark:
#   SKIP_INSTALL=1 SITE=<dir with mlc_llm + _core> PY=<python with torch, transformers> SHAPE=qwen3-moe-tiny \
#   bash benches/gpu/run_moe_on_host.sh --device cpu --batches 1,4 --q4-batches 1,4 --hf-batches 1 ...
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHAPE=${SHAPE:-qwen3-30b-a3b-24l} TEST=tests/gpu/test_moe_gpu.py TEST_NAME=moe NAME=qwen3_moe SETUP_NAME=moe \
    PARITY_LIMIT_S=${PARITY_LIMIT_S:-200} exec bash "$HERE/run_arch_on_host.sh" --mlc-q4 --q4-batches 1,16,64,256 "$@"
