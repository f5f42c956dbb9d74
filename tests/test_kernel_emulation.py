"""The CUDA kernels' logic checked on the CPU (rust/kernels/emulate: each kernel compiled for the host against
shims of the CUDA built-ins and run one OS thread per CUDA thread, against references in double): the
tensor-core Q4_0 GEMM with its pair dequantization over every f16 scale, the fused-MoE kernels, and the decode
GEMVs (16-bit dense and Q4_0 with its copy stages). Runs
where g++ with C++20 is found (every machine that builds the Rust core has a C/C++ toolchain)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
EMULATE = os.path.join(ROOT, "rust", "kernels", "emulate")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")


@pytest.mark.parametrize("script", ["check_q4_gemm.py", "check_moe.py", "check_gemv.py"])
def test_kernel_emulation(script):
    r = subprocess.run([sys.executable, os.path.join(EMULATE, script), "--jobs", "2"], capture_output=True, text=True, timeout=600)
    print(r.stdout[-4000:], r.stderr[-2000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "all passed" in r.stdout
