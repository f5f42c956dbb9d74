"""Checks the decode GEMVs' logic on the CPU: dense_gemv.cu (16-bit weights, one warp per output, tiles of 1
or 4 tokens, gate/up with silu as epilogue) and q4_gemm.cu's tensor-core Q4_0 GEMV (its ring of copy stages)
(1-4 or 8 token tiles a block) compiled for the host (shim.cuh: one OS thread per CUDA thread; attention_shim.h + q4_shim.h: bf16 / f16;
mma_shim.cuh: cp.async landing only at its wait, mma.sync from the PTX ISA's fragment layouts) and run on
random weights against a reference in double (gemv_driver.cpp); and the fused MoE's per-slot decode GEMVs
built on them (an expert id per slot picks its stacked rows). Shapes cover partial row and token tiles,
K with a partial last round of chunks, warps with no copy group, and the stage ring wrapping. Needs g++
with C++20; no GPU, no CUDA toolkit.

    python3 rust/kernels/emulate/check_gemv.py [--jobs 2]

Prints one line per case and exits non-zero if any case fails.
"""
import argparse, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# (kind, dtype, silu, M, N outputs, K, copy stages of the 4-bit GEMV (q4_gemm.cu's Q4_MMA_STAGES), seed)
CASES = [
    ("dense", "bf16", 0, 1, 20, 1000, 0, 1),   # partial block of rows; 125 chunks, a partial last round
    ("dense", "f16", 0, 3, 16, 520, 0, 2),     # the 4-token tile with 3 live tokens
    ("dense", "bf16", 0, 4, 8, 4096, 0, 3),    # four rounds of chunks, a full token tile
    ("dense", "bf16", 1, 1, 12, 264, 0, 4),    # silu, partial block
    ("dense", "f16", 1, 5, 9, 128, 0, 5),      # silu, two token tiles (4 + 1)
    ("q4", "bf16", 0, 1, 16, 256, 2, 6),       # one copy group: warps 1..7 have none
    ("q4", "f16", 0, 3, 20, 4096, 2, 7),       # two groups a warp; partial row tile
    ("q4", "bf16", 0, 1, 16, 14336, 2, 8),     # seven groups a warp: the ring wraps
    ("q4", "f16", 0, 9, 16, 4352, 2, 9),       # 17 groups (2 or 3 a warp); two token tiles
    ("q4", "bf16", 1, 2, 8, 4096, 2, 11),      # silu
    ("q4", "f16", 1, 1, 12, 8192, 2, 12),      # silu, partial block of outputs, the ring wraps
    ("q4", "bf16", 0, 16, 16, 512, 2, 13),     # two token tiles in one block
    ("q4", "f16", 0, 20, 20, 2304, 2, 14),     # three tiles, the last partial; 9 groups
    ("q4", "bf16", 1, 24, 8, 1024, 2, 15),     # silu, three full tiles
    ("q4", "f16", 0, 32, 16, 256, 2, 16),      # four tiles
    ("q4", "bf16", 0, 41, 16, 512, 2, 17),     # 8 tiles, 6 live (the last with one token)
    ("q4", "f16", 1, 33, 12, 512, 2, 18),      # silu, 8 tiles, 5 live
    ("q4", "bf16", 0, 64, 16, 4096, 2, 19),    # 8 full tiles
    ("q4", "f16", 0, 70, 20, 256, 2, 20),      # two blocks of 8 tiles, the second with one live tile
    ("q4-t1", "bf16", 0, 20, 20, 2304, 2, 25), # one tile a block (the engine's): three blocks, the last partial
    ("q4-t1", "f16", 1, 12, 12, 512, 2, 26),   # the same with silu
    # dense_gemv.cu's tensor-core variant (2-16 tokens: 1 or 2 tiles of 8)
    ("dense-mma", "bf16", 0, 2, 20, 1024, 0, 25),     # partial row tile; 32 chunks: 4 a warp, one round
    ("dense-mma", "f16", 0, 8, 16, 4096, 0, 26),      # a full tile; 16 chunks a warp, the double buffer turns
    ("dense-mma", "bf16", 1, 5, 12, 288, 0, 27),      # silu; 9 chunks: warp 0 two, the others one
    ("dense-mma", "f16", 1, 16, 8, 512, 0, 28),       # silu, two full tiles
    ("dense-mma", "bf16", 0, 13, 16, 2080, 0, 29),    # two tiles, the second partial; 65 chunks (9 for warp 0)
    ("dense-mma", "f16", 0, 20, 24, 224, 0, 30),      # two blocks of tokens (16 + 4); 7 chunks: warp 7 none
    # The fused MoE's per-slot decode GEMVs: M slots over 3 experts; even M: two slots a token (gate/up).
    ("moe-dense", "bf16", 1, 8, 12, 512, 0, 21),   # gate/up + silu, a partial block of outputs
    ("moe-dense", "f16", 0, 5, 20, 264, 0, 22),    # down: a slot a row
    ("moe-q4", "f16", 1, 6, 12, 512, 2, 23),       # gate/up + silu
    ("moe-q4", "bf16", 0, 3, 20, 4096, 2, 24),     # down, partial row tile
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = harness.build(tmp, ("dense_gemv.cu", "q4_gemm.cu", "common.cuh"), ("shim.cuh", "attention_shim.h", "q4_shim.h", "harness.h"),
                            "gemv_driver.cpp")
        return 1 if harness.run_cases(exe, CASES, args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
