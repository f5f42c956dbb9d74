"""A missing, corrupt or unsupported model fails at construction with a clear, typed error, and bad
engine arguments are rejected naming the argument."""

import json
import os
import shutil
from pathlib import Path

import pytest

from mlc_llm import MLCEngine
from mlc_llm.protocol.errors import BadRequestError, ModelLoadError, UnsupportedError

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        MLCEngine(str(tmp_path / "nope.gguf"), device="cpu", verbose=False)


def test_corrupt_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        MLCEngine(str(bad), device="cpu", verbose=False)


def test_truncated_gguf(tmp_path: Path, smollm2_path: str) -> None:
    cut = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as src:
        cut.write_bytes(src.read(4_000_000))
    with pytest.raises(ModelLoadError, match="cut.gguf"):
        MLCEngine(str(cut), device="cpu", verbose=False)


def test_missing_shard(tmp_path: Path) -> None:
    model = tmp_path / "qwen2"
    shutil.copytree(FIXTURES / "qwen2", model)
    (model / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors"):
        MLCEngine(str(model), device="cpu", verbose=False)


def test_unsupported_architecture(tmp_path: Path) -> None:
    model = tmp_path / "gpt2"
    shutil.copytree(FIXTURES / "llama", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture"):
        MLCEngine(str(model), device="cpu", verbose=False)


def test_tiny_hf_model_loads_and_generates() -> None:
    eng = MLCEngine(str(FIXTURES / "llama"), device="cpu", verbose=False)
    try:
        out = eng.completions.create(prompt="t1 t2 t3", max_tokens=4, temperature=0.0)
        assert out.usage.completion_tokens == 4
    finally:
        eng.terminate()


def test_bad_engine_arguments(smollm2_path: str) -> None:
    with pytest.raises(BadRequestError) as e:
        MLCEngine(smollm2_path, device="cpu", mode="turbo", verbose=False)
    assert e.value.field == "mode"
    with pytest.raises(BadRequestError) as e:
        MLCEngine(smollm2_path, device="tpu", verbose=False)
    assert e.value.field == "device"
    with pytest.raises(UnsupportedError):
        MLCEngine(smollm2_path, device="cpu", speculative_mode="medusa", verbose=False)
