"""GPU smoke tests for the CUDA build of mlc_llm._core (run with `pytest -m gpu tests/gpu`).

Skipped where no NVIDIA GPU is present (CI) or where the installed build has no CUDA support.
With MLC_REQUIRE_GPU=1 (set by .ci/cuda/run_gpu.sh) every such skip is a failure instead, so a
broken install on the GPU host cannot pass silently.
"""

import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.gpu

_ERR = re.compile(r"matmul_max_abs_err=(\S+)")
_REQUIRE = os.environ.get("MLC_REQUIRE_GPU") == "1"


def _skip(reason: str):
    if _REQUIRE:
        pytest.fail(f"MLC_REQUIRE_GPU=1 but {reason}")
    pytest.skip(reason)


def _gpu_present() -> bool:
    if os.path.exists("/dev/nvidia0"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


@pytest.fixture(scope="module")
def core():
    if not _gpu_present():
        _skip("no NVIDIA GPU on this machine")
    try:
        import mlc_llm._core as c
    except ImportError as e:
        _skip(f"mlc_llm._core is not importable: {e}")
    if c.cuda_device_count() == 0:
        try:
            c.device_smoke_test("cuda:0")
        except Exception as e:  # noqa: BLE001 - only the message matters here
            if "no CUDA support" in str(e):
                _skip("this build of mlc_llm._core has no CUDA support")
    return c


def _max_abs_err(report: str) -> float:
    m = _ERR.search(report)
    assert m, f"unexpected smoke test report: {report!r}"
    return float(m.group(1))


def test_cuda_device_count(core):
    assert core.cuda_device_count() >= 1


def test_device_smoke_test_cuda0(core):
    report = core.device_smoke_test("cuda:0")
    assert "device=cuda:0" in report, report
    err = _max_abs_err(report)
    assert err == err, f"NaN in {report!r}"
    assert err < 1e-3, report


def test_auto_picks_cuda(core):
    report = core.device_smoke_test("auto")
    assert "device=cuda:0" in report, report
    assert _max_abs_err(report) < 1e-3, report


def test_missing_device_is_an_error(core):
    with pytest.raises(Exception, match="(?i)cuda"):
        core.device_smoke_test(f"cuda:{core.cuda_device_count() + 7}")
