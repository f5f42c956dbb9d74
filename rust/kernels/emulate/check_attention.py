"""Checks the attention kernels' logic on the CPU: paged_attention.cu and prefill_attention.cu compiled for
the host (shim.cuh: one OS thread per CUDA thread; attention_shim.h: bf16 / f16 and atomics; mma_shim.cuh:
ldmatrix and mma.sync from the PTX ISA's fragment layouts) and run on random steps against a dense
reference in double (attention_driver.cpp). Covers what the GPU tests (tests/gpu/test_kernels.py) cover
with small shapes: sliding windows (shorter than a block, not a multiple of it, crossing prefill chunks),
soft-capping, NaN placeholders before the window, split decode partitions wholly before the window, fixed
(CUDA-graph) decode plans, head_dim 64 / 96 / 128 / 256 on both kernels, and gpt-oss's attention sinks (per
head, above, below and among the scores) on both kernels: unsplit and split decode, fixed plans, prefill
tiles, sliding windows of 128 and full layers, GQA, and gpt-oss's steps as the GPU parity test makes them
(its four prompts prefilled at once, decode under and over the window, CUDA-graph plans with padding rows).
Memory is poisoned as a GPU leaves it (attention_driver.cpp): outputs, partials and shared memory start as
NaN, and the cache blocks no sequence may read hold NaNs, so a read of anything unwritten shows. Needs g++
with C++20; no GPU, no CUDA toolkit. Slow (barriers are context switches): a few minutes on 2 cores.

    python3 rust/kernels/emulate/check_attention.py [--jobs 2] [--quick]

Prints one line per case and exits non-zero if any case fails.
"""
import argparse, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def seqs(*pairs):
    return ",".join(f"{q}:{c}" for q, c in pairs)


# (dtype, heads, kv_heads, head_dim, block, window, softcap, placeholders, fixed, tiled, seed, seqs[, sinks[, pad]])
EDGES = seqs((1, 16), (1, 17), (1, 15), (1, 33), (3, 48), (5, 49), (16, 16), (1, 130), (7, 90))
CHUNKS = seqs((100, 300), (70, 70), (20, 200), (1, 150), (16, 80))
DECODES = seqs((1, 2000), (1, 700), (1, 129), (2, 1100), (1, 40))


def cases(quick):
    out = []
    # The emulator on the kernels' plain paths (no window, no cap) first.
    for dt in ("f32", "bf16"):
        out.append((dt, 4, 2, 64, 16, 0, 0, 0, 0, 1, 1, EDGES))
    out.append(("bf16", 4, 2, 128, 16, 0, 0, 0, 0, 1, 2, CHUNKS))
    # Windows and caps on the per-token kernel, every head_dim and dtype.
    for d in (64, 96, 128, 256):
        for dt in ("f32", "bf16", "f16"):
            out.append((dt, 4, 2, d, 16, 5, 0, 1, 0, 0, d, EDGES))           # window shorter than a block
            if not quick:
                out.append((dt, 4, 2, d, 8, 37, 2.0, 1, 0, 0, d + 1, EDGES))  # not a multiple of the block; cap
                out.append((dt, 4, 4, d, 16, 0, 2.0, 0, 0, 0, d + 2, EDGES))  # cap alone
    # Split decode: partitions wholly before the window return at once; windows of 100 and 1000.
    for dt in ("f32", "bf16", "f16"):
        for w in (100, 1000):
            out.append((dt, 2, 1, 128 if dt != "f16" else 256, 16, w, 50.0, 1, 0, 0, w, DECODES))
    # Fixed (CUDA-graph) decode plans.
    for dt in ("f32", "bf16"):
        out.append((dt, 2, 2, 96, 16, 300, 30.0, 1, 1, 0, 7, seqs((1, 2000), (1, 300), (1, 17))))
        out.append((dt, 2, 2, 128, 16, 0, 0, 0, 1, 0, 8, seqs((1, 2000), (1, 300), (1, 17))))
    # The tiled kernel: chunks crossing windows (47: shorter than a query tile), caps, every head_dim.
    for d in (64, 96, 128, 256):
        for dt in ("bf16", "f16"):
            if quick and dt == "f16":
                continue
            out.append((dt, 2, 1, d, 16, 47, 0, 1, 0, 1, d, CHUNKS))
            out.append((dt, 2, 2, d, 8, 130, 20.0, 1, 0, 1, d + 3, CHUNKS))
            if not quick:
                out.append((dt, 2, 1, d, 16, 0, 5.0, 0, 0, 1, d + 4, CHUNKS))
    # gpt-oss's sinks (sinks 4: per head 8, -4, 2, 0.4, plus noise; 15: 30 and -15, which leave a row
    # almost nothing or everything): its layers alternate a window of 128 and full attention, head_dim 64,
    # GQA. Unsplit and split decode (the sink must enter once, after the merge), fixed plans, prefill tiles.
    for dt in ("f32", "bf16", "f16"):
        for w in (0, 128):
            out.append((dt, 8, 2, 64, 16, w, 0, 1, 0, 0, 300 + w, EDGES, 4))
            out.append((dt, 4, 2, 64, 16, w, 0, 1, 0, 0, 310 + w, DECODES, 4))
    for dt in ("f32", "bf16"):
        out.append((dt, 4, 2, 64, 16, 128, 0, 1, 1, 0, 320, seqs((1, 2000), (1, 300), (1, 17)), 4))
        out.append((dt, 4, 1, 128, 16, 0, 0, 0, 1, 0, 321, seqs((1, 2000), (1, 129), (1, 1)), 15))
    for dt in ("bf16", "f16"):
        for w in (0, 128):
            out.append((dt, 4, 2, 64, 16, w, 0, 1, 0, 1, 330 + w, CHUNKS, 4))
        out.append((dt, 2, 1, 128, 16, 47, 20.0, 1, 0, 1, 340, CHUNKS, 15))  # with a cap; sink past it
        if not quick:
            out.append((dt, 2, 2, 256, 8, 130, 0, 1, 0, 1, 341, CHUNKS, 4))
    # gpt-oss as tests/gpu/test_arch_parity.py runs it (4 / 2 heads of 64, sinks, window 128 and full
    # layers) and at gpt-oss-20b's GQA ratio scaled down (16 / 2: 8 query heads per KV head): the test's
    # prompts of 50, 97, 129 and 230 tokens prefilled in one step (tiled; f32 on the per-token kernel), decode
    # with contexts under, at and over the window and split past it (partitions wholly before the window),
    # and fixed (CUDA-graph) decode plans with padding rows (a bucket larger than the batch).
    GPT_OSS_PREFILL = seqs((50, 50), (97, 97), (129, 129), (230, 230))
    GPT_OSS_DECODE = seqs((1, 51), (1, 64), (1, 65), (1, 98), (1, 128), (1, 129), (1, 145), (1, 231), (1, 278), (1, 700))
    for w in (0, 128):
        for dt in ("f32", "bf16"):
            out.append((dt, 4, 2, 64, 16, w, 0, 1, 0, int(dt != "f32"), 350 + w, GPT_OSS_PREFILL, 4))
            out.append((dt, 16, 2, 64, 16, w, 0, 1, 0, 0, 351 + w, GPT_OSS_DECODE, 4))
            out.append((dt, 4, 2, 64, 16, w, 0, 1, 1, 0, 352 + w, seqs((1, 98), (1, 145), (1, 231)), 4, 5))
        if not quick:
            out.append(("f16", 16, 2, 64, 16, w, 0, 1, 0, 1, 353 + w, seqs((16, 300), (3, 140), (40, 129), (1, 1)), 15))
            out.append(("bf16", 16, 2, 64, 16, w, 0, 1, 1, 0, 354 + w, seqs((1, 700), (1, 129), (1, 2)), 15, 1))
    # The per-token kernel's head groups (heads_per_block: 1, 2, 3, 4, 6, 8, and 16 in two blocks of 8; a
    # block's warps split the keys of groups of 1 and 2, take one head each from 3, two from 5), split
    # and unsplit decode, windows and sinks; head dims off the buckets (80: 16-byte copies into a row
    # padded to 128; 36 bf16: rows of 72 bytes, copied element by element); the element-wise copies forced
    # (what cuda.rs runs for caches not 16-byte aligned).
    GROUPS = seqs((1, 1), (1, 63), (1, 64), (1, 65), (1, 700), (2, 300), (5, 97), (16, 16))
    for i, (heads, kv) in enumerate(((4, 4), (4, 2), (6, 2), (8, 2), (12, 2), (10, 2), (16, 2), (32, 2))):
        for dt in ("f32", "bf16", "f16"):
            if quick and dt == "f16":
                continue
            out.append((dt, heads, kv, 128 if i % 2 else 64, 16, 0, 0, 0, 0, 0, 400 + i, GROUPS))
        out.append(("bf16", heads, kv, 64, 16, 100, 0, 1, 0, 0, 410 + i, GROUPS, 4))
        out.append(("bf16", heads, kv, 128, 16, 0, 0, 0, 1, 0, 420 + i, seqs((1, 700), (1, 65), (1, 3)), 0, 2))
    for dt in ("f32", "bf16", "f16"):
        out.append((dt, 9, 3, 80, 16, 0, 0, 0, 0, 0, 430, GROUPS))
        out.append((dt, 6, 2, 36, 8, 50, 3.0, 1, 0, 0, 431, GROUPS))
        out.append((dt, 8, 2, 128, 16, 0, 0, 0, 0, 0, 432, GROUPS, 0, 0, 1))
        out.append((dt, 4, 1, 256, 16, 300, 0, 1, 1, 0, 433, seqs((1, 700), (1, 65), (1, 3)), 4, 1, 1))
    # An FP8 e4m3 cache ("<q dtype>/fp8": rows quantized by their own scales, which the kernel applies to
    # scores and values): every head dim bucket, GQA groups, splits, windows with placeholders (NaN bytes
    # under NaN scales), caps, sinks, fixed plans, the element-wise copies.
    for dt in ("f32", "bf16", "f16"):
        fp8 = dt + "/fp8"
        out.append((fp8, 4, 2, 64, 16, 0, 0, 0, 0, 0, 500, EDGES))
        out.append((fp8, 32, 8, 128, 16, 0, 0, 0, 0, 0, 501, DECODES))
        out.append((fp8, 8, 2, 256, 16, 100, 20.0, 1, 0, 0, 502, GROUPS, 4))
        if not quick:
            out.append((fp8, 9, 3, 80, 16, 0, 0, 0, 0, 0, 503, GROUPS))
            out.append((fp8, 16, 2, 64, 16, 128, 0, 1, 1, 0, 504, seqs((1, 700), (1, 129), (1, 2)), 15, 1))
            out.append((fp8, 4, 4, 128, 8, 37, 0, 1, 0, 0, 505, CHUNKS, 0, 0, 1))
        if dt != "f32":  # the tiled kernel over the FP8 cache (rows widened into shared memory)
            out.append((fp8, 4, 2, 128, 16, 0, 0, 0, 0, 1, 510, CHUNKS))
            out.append((fp8, 8, 2, 64, 16, 100, 20.0, 1, 0, 1, 511, CHUNKS, 4))
            if not quick:
                out.append((fp8, 4, 4, 256, 8, 37, 0, 1, 0, 1, 512, CHUNKS))
                out.append((fp8, 6, 2, 96, 16, 0, 0, 0, 0, 1, 513, CHUNKS))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = harness.build(tmp, ("paged_attention.cu", "prefill_attention.cu", "common.cuh", "tc_ops.cuh", "decode_tc.cuh"),
                            ("shim.cuh", "attention_shim.h", "q4_shim.h", "harness.h"), "attention_driver.cpp")
        return 1 if harness.run_cases(exe, cases(args.quick), args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
