"""MLC model directories and 16-bit HF checkpoints on CUDA (run with `pytest -m gpu tests/gpu`).

- q4f16_1 made by our `mlc_llm convert_weight` from the tiny random Llama fixture: on cuda:0 in float32 the
  4-bit weights go through our Q4_0 kernels (no activation quantization, unlike the CPU path), so the logits
  must equal an independent numpy dequantization + forward pass of the same packed weights
  (tests/mlc_reference.py) to f32 precision; by default the directory runs in its model dtype (float16).
- 16-bit HF checkpoints keep their own type on CUDA: the f16 Mistral fixture runs in float16 and the bf16
  Llama-3 fixture in bfloat16 (no upcast, no conversion between the two), against HF transformers' f32
  logits of the same weights (tests/fixtures/models/*/reference.json) within that dtype's rounding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_engine_gpu import _record, _skip, core  # noqa: F401 - fixtures are used by name

pytestmark = pytest.mark.gpu

TESTS = Path(__file__).resolve().parent.parent
MODELS = TESTS / "fixtures" / "models"
sys.path.insert(0, str(TESTS))  # mlc_reference (plain numpy, no mlc_llm)

from mlc_reference import hf_weights, llama_forward  # noqa: E402


def _convert(tmp: Path, quantization: str) -> Path:
    out = tmp / f"llama-{quantization}"
    for cmd in (["convert_weight", str(MODELS / "llama"), "--quantization", quantization, "-o", str(out)],
                ["gen_config", str(MODELS / "llama"), "--quantization", quantization, "--conv-template", "chatml", "-o", str(out)]):
        done = subprocess.run([sys.executable, "-m", "mlc_llm", *cmd], capture_output=True, text=True, env=dict(os.environ))
        assert done.returncode == 0, done.stderr
    return out


def _reference(name: str):
    ref = json.loads((MODELS / name / "reference.json").read_text())
    logits = np.fromfile(MODELS / name / ref["logits_file"], dtype="<f4").reshape(ref["logits_shape"])
    return ref, logits


def _rel(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def q4_dir(tmp_path_factory, core):
    if not hasattr(core, "_greedy_logits"):
        _skip("this build of mlc_llm._core has no _greedy_logits test entry point")
    return _convert(tmp_path_factory.mktemp("mlc_gpu"), "q4f16_1")


def test_q4f16_1_on_cuda_matches_numpy_dequantization(core, q4_dir):
    ref, _ = _reference("llama")
    cfg = json.loads((q4_dir / "mlc-chat-config.json").read_text())["model_config"]
    weights = hf_weights(q4_dir)
    worst = 0.0
    for prompt in ref["prompts"]:
        tokens, rows = core._greedy_logits(str(q4_dir), "cuda:0", prompt, 16, "float32")
        full = llama_forward(cfg, weights, prompt + tokens)[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        worst = max(worst, _rel(rows, full))
        assert (np.asarray(rows).argmax(-1) == np.asarray(tokens)).all()
    _record("mlc_q4f16_1_cuda_f32_vs_numpy", {"max_rel_logit_err": worst})
    assert worst < 1e-4, worst


def test_q4f16_1_runs_in_float16_by_default(core, q4_dir):
    ref, _ = _reference("llama")
    cfg = json.loads((q4_dir / "mlc-chat-config.json").read_text())["model_config"]
    weights = hf_weights(q4_dir)
    engine = core.Engine(str(q4_dir), "cuda:0", json.dumps({"verbose": False}))
    try:
        assert json.loads(engine.info())["dtype"] == "float16"
    finally:
        engine.terminate()
    prompt = ref["prompts"][0]
    tokens, rows = core._greedy_logits(str(q4_dir), "cuda:0", prompt, 8)
    full = llama_forward(cfg, weights, prompt + tokens)[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
    err = _rel(rows, full)
    _record("mlc_q4f16_1_cuda_f16_vs_numpy", {"max_rel_logit_err": err})
    assert err < 2e-2, err


@pytest.mark.parametrize("name,dtype,bound", [("mistral", "float16", 1e-2), ("llama3", "bfloat16", 5e-2)])
def test_16bit_checkpoints_keep_their_dtype_on_cuda(core, name, dtype, bound):
    if not hasattr(core, "_greedy_logits"):
        _skip("this build of mlc_llm._core has no _greedy_logits test entry point")
    engine = core.Engine(str(MODELS / name), "cuda:0", json.dumps({"verbose": False}))
    try:
        assert json.loads(engine.info())["dtype"] == dtype
    finally:
        engine.terminate()
    ref, logits = _reference(name)
    prompt = ref["prompts"][0]
    tokens, rows = core._greedy_logits(str(MODELS / name), "cuda:0", prompt, 8)
    same = 0
    while same < len(tokens) and tokens[same] == ref["greedy"][0][same]:
        same += 1
    # Rows are comparable while our tokens follow the reference's.
    err = _rel(rows[: max(same, 1)], logits[0][: max(same, 1)])
    _record(f"{name}_{dtype}_cuda_vs_hf_f32", {"max_rel_logit_err": err, "tokens_equal": same, "of": len(tokens)})
    assert err < bound, err
    assert same >= 1
