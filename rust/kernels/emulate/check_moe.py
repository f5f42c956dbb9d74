"""Checks the fused mixture-of-experts kernels' logic on the CPU: moe.cu (routing, alignment, weighted
combine) and moe_gemm.cu (the grouped GEMM, bf16 / f16 and Q4_0 experts) compiled for the host (shim.cuh:
one OS thread per CUDA thread; attention_shim.h + q4_shim.h: bf16 / f16; mma_shim.cuh: ldmatrix and
mma.sync from the PTX ISA's fragment layouts) and run on random inputs against references in
moe_driver.cpp (routing as moe.rs `route`, the layer in double). Cases cover experts with no tokens, one
token, partial and full tiles, every token on one expert, ties in the router, top-k 1..8 over 4..128
experts, both routings, SiLU and gpt-oss's clamped SwiGLU with biases. Needs g++ with C++20; no GPU, no
CUDA toolkit. About a minute on 2 cores.

    python3 rust/kernels/emulate/check_moe.py [--jobs 2]

Prints one line per case and exits non-zero if any case fails.
"""
import argparse, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# K % 64 == 0 for both GEMMs (H and I; Q4_0: % 256), as moe_cuda.rs requires.
# (dtype, T, E, k, H, I, routing (0 softmax-top-k, 1 top-k-softmax), norm, act, bias, logits, seed)
CASES = [
    ("bf16", 1, 4, 1, 64, 64, 0, 1, "silu", 0, "rand", 1),        # one slot: one expert loaded, three empty
    ("f16", 5, 8, 2, 128, 64, 0, 1, "silu", 0, "rand", 2),        # Mixtral routing, loads 0..4
    ("bf16", 40, 4, 2, 64, 128, 0, 1, "silu", 0, "one", 3),        # all 40 tokens on one expert: a full + a partial tile
    ("f16", 32, 8, 1, 64, 64, 0, 0, "silu", 0, "one", 4),         # exactly one full tile; top-1 without norm
    ("bf16", 24, 8, 3, 64, 64, 0, 0, "silu", 0, "ties", 5),       # router ties -> the lower index
    ("bf16", 12, 32, 4, 64, 64, 1, 0, "swiglu", 1, "rand", 6),    # gpt-oss: top-k softmax, clamped SwiGLU, biases
    ("f16", 9, 128, 8, 64, 64, 0, 1, "silu", 0, "rand", 7),       # Qwen3-MoE: 128 experts, top 8, most empty
    ("bf16", 3, 60, 4, 64, 64, 0, 0, "silu", 0, "ties", 8),       # Qwen2-MoE-like: 60 experts, no norm, ties
    ("q4bf16", 6, 8, 2, 256, 256, 0, 1, "silu", 0, "rand", 9),    # Q4_0 experts
    ("q4f16", 34, 4, 1, 256, 256, 0, 1, "silu", 0, "one", 10),    # Q4_0, all tokens on one expert, 2 tiles
    ("q4bf16", 4, 16, 4, 256, 256, 1, 0, "swiglu", 1, "ties", 11),
    ("f16", 70, 8, 2, 192, 64, 0, 1, "silu", 1, "rand", 12),      # several tiles per expert, 3 K stages
    ("bf16", 200, 16, 4, 64, 64, 0, 1, "silu", 0, "rand", 13),    # 800 slots: alignment over 7 chunks per block
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = harness.build(tmp, ("moe.cu", "moe_gemm.cu", "q4_gemm_tc.cu", "common.cuh"),
                            ("shim.cuh", "attention_shim.h", "q4_shim.h", "harness.h"), "moe_driver.cpp")
        return 1 if harness.run_cases(exe, CASES, args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
