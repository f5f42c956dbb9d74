"""Shared by the emulation checks: build a host driver from kernel sources and shims in a scratch
directory, run its cases in parallel (one process each), print one line per case."""
import os, shutil, subprocess
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "..", "kernels")


def build(out_dir, kernel_files, shim_files, driver):
    """Copies the kernels, mma_shim.cuh as mma.cuh, the shims (bf16 / f16 headers from q4_shim.h) and
    compiles `driver`; returns the executable."""
    for f in kernel_files:
        shutil.copy(os.path.join(KERNELS, f), os.path.join(out_dir, f))
    shutil.copy(os.path.join(HERE, "mma_shim.cuh"), os.path.join(out_dir, "mma.cuh"))
    for f in (*shim_files, driver):
        shutil.copy(os.path.join(HERE, f), os.path.join(out_dir, f))
    for h in ("cuda_bf16.h", "cuda_fp16.h"):
        with open(os.path.join(out_dir, h), "w") as f:
            f.write('#include "q4_shim.h"\n')
    exe = os.path.join(out_dir, os.path.splitext(driver)[0])
    subprocess.run(["g++", "-std=c++20", "-O2", "-pthread", "-I", out_dir, "-o", exe, os.path.join(out_dir, driver)], check=True)
    return exe


def run_cases(exe, cases, jobs):
    """Runs `exe` once per case (its arguments); prints each line; returns the number that failed."""
    def one(c):
        r = subprocess.run([exe, *map(str, c)], capture_output=True, text=True)
        return r.returncode, (r.stdout + r.stderr).strip()

    failed = 0
    with ThreadPoolExecutor(jobs) as pool:
        for rc, line in pool.map(one, cases):
            print(line, flush=True)
            failed += rc != 0
    print(f"{failed} failed" if failed else "all passed")
    return failed
