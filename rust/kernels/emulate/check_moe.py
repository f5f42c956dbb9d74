"""Checks the fused mixture-of-experts kernels' logic on the CPU: moe.cu (routing, alignment, weighted
combine) and moe_gemm.cu (the grouped GEMM, bf16 / f16, Q4_0 and MXFP4 experts) compiled for the host (shim.cuh:
one OS thread per CUDA thread; attention_shim.h + q4_shim.h: bf16 / f16; mma_shim.cuh: ldmatrix and
mma.sync from the PTX ISA's fragment layouts) and run on random inputs against references in
moe_driver.cpp (routing as moe.rs `route`, the layer in double). Cases cover experts with no tokens, one
token, partial and full tiles, every token on one expert, ties in the router, top-k 1..8 over 4..128
experts, both routings, SiLU and gpt-oss's clamped SwiGLU with biases; MXFP4 experts (gpt-oss) at gpt-oss's
hidden size (2880: 1530-byte rows, only 2-byte aligned, and a short last K stage), odd row lengths, and
the MXFP4 fragments checked bit for bit on every scale byte and nibble (`mxfp4-dequant`), and gpt-oss's layer
as the GPU parity test runs it. Buffers start as values no kernel writes (NaN outputs, garbage plan entries)
and shared memory, static and dynamic, as 0xff bytes before every block (harness.h), as a GPU leaves it.
Needs g++ with C++20; no GPU, no CUDA toolkit. About half a minute on 2 cores.

    python3 rust/kernels/emulate/check_moe.py [--jobs 2]
    python3 rust/kernels/emulate/check_moe.py --gpu     # on a GPU host with nvcc: the same checks run by the
                                                         # real kernels (moe_gpu_check.cu), plus real shapes
                                                         # and the kernels' timings beside their floor

Prints one line per case and exits non-zero if any case fails.
"""
import argparse, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# K % 64 == 0 for both GEMMs (H and I; Q4_0: % 256; MXFP4: % 32), as moe_cuda.rs requires.
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
    # gpt-oss as tests/gpu/test_arch_parity.py runs it (H 256, I 128, 4 experts, top 2, biases): a decode
    # batch of 4 and its four prompts (50 + 97 + 129 + 230 tokens) in one prefill step.
    ("bf16", 4, 4, 2, 256, 128, 1, 0, "swiglu", 1, "rand", 31),
    ("bf16", 506, 4, 2, 256, 128, 1, 0, "swiglu", 1, "rand", 32),
    ("mxfp4-dequant",),                                           # the MXFP4 fragments, every scale and nibble
    # MXFP4: gpt-oss (32 experts, top 4, top-k softmax, clamped SwiGLU, biases) at its hidden size 2880: gate/up
    # rows of 90 blocks (1530 bytes, starting at every even offset mod 16), 11 full K stages and one of 2
    # blocks; I cut to 64 to keep the emulation short (--gpu runs I = 2880). Then rows of 11 / 10 blocks
    # (187 bytes: odd offsets; a full stage + 3 / + 2), random loads and every token on one expert (2 tiles,
    # 7 experts empty), rows of 3 / 5 blocks (a short first stage only), whole stages only with ties.
    ("mxfp4bf16", 1, 32, 4, 2880, 64, 1, 0, "swiglu", 1, "rand", 14),
    ("mxfp4bf16", 6, 32, 4, 352, 320, 1, 0, "swiglu", 1, "rand", 15),
    ("mxfp4bf16", 34, 8, 1, 352, 320, 1, 0, "swiglu", 1, "one", 16),
    ("mxfp4bf16", 7, 4, 2, 96, 160, 0, 1, "silu", 0, "rand", 17),
    ("mxfp4bf16", 20, 8, 2, 512, 96, 1, 0, "swiglu", 1, "ties", 18),
]


# --gpu only: the real shapes (Qwen3-30B-A3B: H 2048, I 768, 128 experts, top 8; Mixtral-like top 2 of 8),
# decode and prefill batches, every token on one expert; then the timings at those shapes.
GPU_CASES = [
    ("bf16", 1, 128, 8, 2048, 768, 0, 1, "silu", 0, "rand", 21),
    ("f16", 16, 128, 8, 2048, 768, 0, 1, "silu", 0, "rand", 22),
    ("bf16", 64, 128, 8, 2048, 768, 0, 1, "silu", 0, "one", 23),
    ("q4bf16", 16, 128, 8, 2048, 768, 0, 1, "silu", 0, "rand", 24),
    ("q4f16", 64, 128, 8, 2048, 768, 0, 1, "silu", 0, "one", 25),
    ("bf16", 300, 8, 2, 1024, 1536, 0, 1, "silu", 0, "rand", 26),
    ("bf16", 40, 32, 4, 2880, 2880, 1, 0, "swiglu", 1, "rand", 27),  # gpt-oss-20b's layer shape
    # gpt-oss-20b's layer with its MXFP4 experts: decode, a batch, prefill with every token on one expert.
    ("mxfp4bf16", 1, 32, 4, 2880, 2880, 1, 0, "swiglu", 1, "rand", 28),
    ("mxfp4bf16", 40, 32, 4, 2880, 2880, 1, 0, "swiglu", 1, "rand", 29),
    ("mxfp4bf16", 300, 32, 4, 2880, 2880, 1, 0, "swiglu", 1, "one", 30),
]
PERF = [(dt, t, 128, 8, 2048, 768) for dt in ("bf16", "q4f16") for t in (1, 16, 64, 256, 2048)]
PERF += [(dt, t, 32, 4, 2880, 2880) for dt in ("bf16", "mxfp4bf16") for t in (1, 16, 64, 256, 2048)]  # gpt-oss-20b


def build_gpu(out_dir):
    """nvcc build of moe_gpu_check.cu for this machine's GPU (needs the CUDA toolkit and a GPU)."""
    kernels = ("moe.cu", "moe_gemm.cu", "q4_dequant.cuh", "mxfp4_dequant.cuh", "common.cuh", "mma.cuh")
    for f in kernels:
        shutil.copy(os.path.join(harness.KERNELS, f), os.path.join(out_dir, f))
    for f in ("moe_check.h", "moe_gpu_check.cu"):
        shutil.copy(os.path.join(harness.HERE, f), os.path.join(out_dir, f))
    exe = os.path.join(out_dir, "moe_gpu_check")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    subprocess.run([nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-arch=native", "-o", exe,
                    os.path.join(out_dir, "moe_gpu_check.cu")], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--gpu", action="store_true", help="run the kernels on this machine's GPU (nvcc build)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.gpu:
            exe = harness.build(tmp, ("moe.cu", "moe_gemm.cu", "q4_dequant.cuh", "mxfp4_dequant.cuh", "common.cuh"),
                                ("shim.cuh", "attention_shim.h", "q4_shim.h", "mxfp4_shim.h", "harness.h", "moe_check.h"), "moe_driver.cpp")
            return 1 if harness.run_cases(exe, CASES, args.jobs) else 0
        exe = build_gpu(tmp)
        failed = harness.run_cases(exe, CASES + GPU_CASES, 1)  # one process at a time on the GPU
        for p in PERF:
            r = subprocess.run([exe, "perf", *map(str, p)], capture_output=True, text=True)
            print((r.stdout + r.stderr).strip(), flush=True)
            failed += r.returncode != 0
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
