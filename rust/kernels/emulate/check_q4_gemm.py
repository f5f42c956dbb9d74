"""Checks the tensor-core Q4_0 GEMM's logic on the CPU: q4_gemm_tc.cu compiled for the host (shim.cuh: one
OS thread per CUDA thread; attention_shim.h + q4_shim.h: bf16 / f16; mma_shim.cuh: ldmatrix and mma.sync
from the PTX ISA's fragment layouts) and run on random weights against a reference in double
(q4_gemm_driver.cpp). Shapes cover partial row and token tiles, one and several K groups (the pipeline's
stages wrapping), K split over several blocks and reduced. Needs g++ with C++20; no GPU, no CUDA toolkit. About a minute on 2 cores.

    python3 rust/kernels/emulate/check_q4_gemm.py [--jobs 2]

Prints one line per case and exits non-zero if any case fails.
"""
import argparse, os, shutil, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "..", "kernels")

# (dtype, M, N, K, K splits, seed)
CASES = [
    ("f16", 64, 128, 256, 1, 1),     # one block, one K group
    ("bf16", 64, 128, 256, 1, 2),
    ("f16", 70, 136, 1024, 1, 3),    # partial token and row tiles; 4 K groups (stages wrap)
    ("bf16", 33, 200, 768, 1, 4),
    ("bf16", 1, 130, 512, 1, 5),
    ("f16", 129, 40, 256, 1, 6),
    ("bf16", 40, 130, 1792, 3, 7),   # K split 3 ways over 7 groups (uneven splits)
    ("f16", 64, 128, 1024, 4, 8),    # one group per split
]


def build(out_dir):
    for f in ("q4_gemm_tc.cu", "common.cuh"):
        shutil.copy(os.path.join(KERNELS, f), os.path.join(out_dir, f))
    shutil.copy(os.path.join(HERE, "mma_shim.cuh"), os.path.join(out_dir, "mma.cuh"))
    for f in ("shim.cuh", "attention_shim.h", "q4_shim.h", "q4_gemm_driver.cpp"):
        shutil.copy(os.path.join(HERE, f), os.path.join(out_dir, f))
    for h in ("cuda_bf16.h", "cuda_fp16.h"):
        with open(os.path.join(out_dir, h), "w") as f:
            f.write('#include "q4_shim.h"\n')
    exe = os.path.join(out_dir, "q4_gemm_driver")
    subprocess.run(["g++", "-std=c++20", "-O2", "-pthread", "-I", out_dir, "-o", exe,
                    os.path.join(out_dir, "q4_gemm_driver.cpp")], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)

        def one(c):
            r = subprocess.run([exe, *map(str, c)], capture_output=True, text=True)
            return r.returncode, (r.stdout + r.stderr).strip()

        failed = 0
        with ThreadPoolExecutor(args.jobs) as pool:
            for rc, line in pool.map(one, CASES):
                print(line, flush=True)
                failed += rc != 0
    print(f"{failed} failed" if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
