"""Checks the tensor-core Q4_0 GEMM's logic on the CPU: q4_gemm_tc.cu compiled for the host (shim.cuh: one
OS thread per CUDA thread; attention_shim.h + q4_shim.h: bf16 / f16; mma_shim.cuh: ldmatrix and mma.sync
from the PTX ISA's fragment layouts) and run on random weights against a reference in double
(q4_gemm_driver.cpp). Shapes cover partial row and token tiles, one and several K groups (the pipeline's
stages wrapping), K split over several blocks and reduced. Needs g++ with C++20; no GPU, no CUDA toolkit. About a minute on 2 cores.

    python3 rust/kernels/emulate/check_q4_gemm.py [--jobs 2]

Prints one line per case and exits non-zero if any case fails.
"""
import argparse, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# (dtype, M, N, K, K splits, seed), or ("pairs", dtype)
CASES = [
    ("pairs", "f16"),                # the pair dequantization, every f16 scale x nibble
    ("pairs", "bf16"),
    ("f16", 64, 128, 256, 1, 1),     # one block, one K group
    ("bf16", 64, 128, 256, 1, 2),
    ("f16", 70, 136, 1024, 1, 3),    # partial token and row tiles; 4 K groups (stages wrap)
    ("bf16", 33, 200, 768, 1, 4),
    ("bf16", 1, 130, 512, 1, 5),
    ("f16", 129, 40, 256, 1, 6),
    ("bf16", 40, 130, 1792, 3, 7),   # K split 3 ways over 7 groups (uneven splits)
    ("f16", 64, 128, 1024, 4, 8),    # one group per split
    ("f16", 17, 600, 1280, 1, 9),    # 3 of 8 token tiles live; three row tiles, the last partial
    ("bf16", 8, 257, 512, 2, 10),    # one live token tile, split
    ("bf16", 200, 520, 256, 1, 11),  # four token tiles, the last with one live tile
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = harness.build(tmp, ("q4_gemm_tc.cu", "q4_dequant.cuh", "common.cuh"), ("shim.cuh", "attention_shim.h", "q4_shim.h", "harness.h"),
                            "q4_gemm_driver.cpp")
        return 1 if harness.run_cases(exe, CASES, args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
