"""Shared by the emulation checks: build a host driver from kernel sources and shims in a scratch
directory, run its cases in parallel (one process each), print one line per case."""
import os, re, shutil, subprocess
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
    subprocess.run(["g++", "-std=c++20", "-O2", "-fno-strict-aliasing", "-pthread", "-I", out_dir, "-o", exe, os.path.join(out_dir, driver)], check=True)
    list_shared(exe, [os.path.join(out_dir, f) for f in kernel_files])
    return exe


def list_shared(exe, sources):
    """Writes <exe>.shared: offset (from g_slots) and size of every instance of the __shared__ variables
    declared in `sources`, which harness.h's launch fills with 0xff bytes before each block."""
    names = set()
    for path in sources:
        with open(path) as f:
            for decl in re.findall(r"__shared__([^;]*);", f.read()):
                m = re.search(r"(\w+)\s*(\[[^\]]*\]\s*)*$", decl.strip())
                if m:
                    names.add(m.group(1))
    out = subprocess.run(["nm", "-S", "-C", "--defined-only", exe], capture_output=True, text=True, check=True).stdout
    syms, base = [], None
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) != 4:
            continue
        addr, size, kind, name = parts
        if name == "g_slots":
            base = int(addr, 16)
        elif kind in "bBdDu" and "::" in name and name.rsplit("::", 1)[1] in names:
            syms.append((int(addr, 16), int(size, 16)))
    with open(exe + ".shared", "w") as f:
        for addr, size in syms if base is not None else []:
            f.write(f"{addr - base} {size}\n")


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
