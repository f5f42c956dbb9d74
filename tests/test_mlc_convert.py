"""`mlc_llm convert_weight` + `gen_config` on a tiny random HF Llama (tests/fixtures/models/llama): the files
follow MLC's documented schemas, q0f32 reproduces HF transformers' logits, and 4-bit weights give the logits
of an independent numpy reading of the same packed weights (tests/mlc_reference.py) within the error of the
CPU's 8-bit activation quantization."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import jsonschema
import numpy as np
import pytest
from mlc_reference import hf_weights, llama_forward

from mlc_llm import _core

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "llama"
REPO = Path(__file__).parent.parent

# tvm.contrib.tvmjs dump_tensor_cache's index, as MLC's convert_weight writes it.
TENSOR_CACHE_SCHEMA = {
    "type": "object",
    "required": ["metadata", "records"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["ParamSize", "ParamBytes", "BitsPerParam"],
            "properties": {"ParamSize": {"type": "integer"}, "ParamBytes": {"type": "number"}, "BitsPerParam": {"type": "number"}},
        },
        "records": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["dataPath", "format", "nbytes", "records", "md5sum"],
                "properties": {
                    "dataPath": {"type": "string", "pattern": r"^params_shard_\d+\.bin$"},
                    "format": {"const": "raw-shard"},
                    "nbytes": {"type": "integer", "maximum": 32 * 1024 * 1024},
                    "md5sum": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    "records": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "shape", "dtype", "format", "nbytes", "byteOffset"],
                            "properties": {
                                "name": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer"}},
                                "dtype": {"enum": ["float32", "float16", "bfloat16", "uint32"]},
                                "format": {"enum": ["raw", "f32-to-bf16"]},
                                "nbytes": {"type": "integer"},
                                "byteOffset": {"type": "integer"},
                            },
                        },
                    },
                },
            },
        },
    },
}

_OPT_NUMBER = {"type": ["number", "null"]}
# mlc_llm.protocol.mlc_chat_config.MLCChatConfig (pydantic model dumped by alias) and its Conversation.
CHAT_CONFIG_SCHEMA = {
    "type": "object",
    "required": [
        "version", "model_type", "quantization", "model_config", "vocab_size", "context_window_size",
        "sliding_window_size", "prefill_chunk_size", "attention_sink_size", "tensor_parallel_shards",
        "pipeline_parallel_stages", "active_vocab_size", "temperature", "presence_penalty", "frequency_penalty",
        "repetition_penalty", "top_p", "tokenizer_files", "tokenizer_info", "conv_template", "pad_token_id",
        "bos_token_id", "eos_token_id",
    ],
    "properties": {
        "version": {"type": "string"},
        "model_type": {"type": "string"},
        "quantization": {"type": "string"},
        "model_config": {"type": "object", "required": ["hidden_size", "num_hidden_layers", "vocab_size", "context_window_size"]},
        "vocab_size": {"type": "integer"},
        "context_window_size": {"type": "integer"},
        "sliding_window_size": {"type": "integer"},
        "prefill_chunk_size": {"type": "integer"},
        "attention_sink_size": {"type": "integer"},
        "tensor_parallel_shards": {"type": "integer"},
        "pipeline_parallel_stages": {"type": "integer"},
        "active_vocab_size": {"type": "integer"},
        "temperature": _OPT_NUMBER,
        "presence_penalty": _OPT_NUMBER,
        "frequency_penalty": _OPT_NUMBER,
        "repetition_penalty": _OPT_NUMBER,
        "top_p": _OPT_NUMBER,
        "tokenizer_files": {"type": "array", "items": {"type": "string"}},
        "tokenizer_info": {
            "type": "object",
            "required": ["token_postproc_method", "prepend_space_in_encode", "strip_space_in_decode"],
        },
        "conv_template": {
            "type": "object",
            "required": ["name", "system_template", "system_message", "roles", "seps", "role_content_sep", "role_empty_sep", "stop_str", "stop_token_ids"],
            "properties": {
                "roles": {"type": "object", "required": ["user", "assistant"]},
                "seps": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}},
                "stop_str": {"type": "array", "items": {"type": "string"}},
                "stop_token_ids": {"type": "array", "items": {"type": "integer"}},
                "system_prefix_token_ids": {"type": ["array", "null"], "items": {"type": "integer"}},
            },
        },
        "pad_token_id": {"type": ["integer", "null"]},
        "bos_token_id": {"type": ["integer", "null"]},
        "eos_token_id": {"type": ["integer", "array", "null"]},
    },
}


def mlc_llm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    return subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True, env=env, timeout=300)


def make_model(tmp: Path, quantization: str, conv_template: str = "llama-2") -> Path:
    out = tmp / f"llama-{quantization}-MLC"
    done = mlc_llm("convert_weight", str(FIXTURE / "config.json"), "--quantization", quantization, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "parameters" in done.stdout
    done = mlc_llm("gen_config", str(FIXTURE), "--quantization", quantization, "--conv-template", conv_template, "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    tmp = tmp_path_factory.mktemp("mlc")
    return {q: make_model(tmp, q) for q in ["q0f32", "q4f16_1", "q4f32_1"]}


def reference() -> dict:
    ref = json.loads((FIXTURE / "reference.json").read_text())
    ref["logits"] = np.fromfile(FIXTURE / ref["logits_file"], dtype="<f4").reshape(ref["logits_shape"])
    return ref


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("quantization", ["q0f32", "q4f16_1", "q4f32_1"])
def test_files_follow_mlc_schemas(models: Dict[str, Path], quantization: str) -> None:
    out = models[quantization]
    index = json.loads((out / "tensor-cache.json").read_text())
    jsonschema.validate(index, TENSOR_CACHE_SCHEMA)
    chat = json.loads((out / "mlc-chat-config.json").read_text())
    jsonschema.validate(chat, CHAT_CONFIG_SCHEMA)
    assert chat["quantization"] == quantization and chat["model_type"] == "llama"
    assert chat["conv_template"]["name"] == "llama-2"
    assert set(chat["tokenizer_files"]) == {"tokenizer.json", "tokenizer_config.json"}
    assert all((out / f).exists() for f in chat["tokenizer_files"])
    names = set()
    for shard in index["records"]:
        data = (out / shard["dataPath"]).read_bytes()
        assert len(data) == shard["nbytes"] and hashlib.md5(data).hexdigest() == shard["md5sum"]
        end = 0
        for rec in shard["records"]:
            assert rec["byteOffset"] == end, "records are packed in order"
            end += rec["nbytes"]
            names.add(rec["name"])
        assert end == shard["nbytes"]
    assert index["metadata"]["ParamSize"] == len(names)
    if quantization == "q0f32":
        assert "model.layers.0.self_attn.qkv_proj.weight" in names and "model.layers.1.mlp.gate_up_proj.weight" in names
    else:
        assert {"model.layers.0.self_attn.qkv_proj.q_weight", "model.embed_tokens.q_scale", "lm_head.q_weight"} <= names
        assert "model.layers.0.input_layernorm.weight" in names


def test_q0f32_reproduces_transformers(models: Dict[str, Path]) -> None:
    ref = reference()
    for i, prompt in enumerate(ref["prompts"]):
        tokens, rows = _core._greedy_logits(str(models["q0f32"]), "cpu", prompt, 32)
        assert tokens == ref["greedy"][i]
        err = rel_err(np.array(rows), ref["logits"][i][:32])
        assert err < 1e-5, (i, err)


def numpy_rows(model: Path, prompt: List[int], tokens: List[int]) -> np.ndarray:
    """The numpy reference's logits for the positions our engine sampled from (teacher-forced on its tokens)."""
    cfg = json.loads((model / "mlc-chat-config.json").read_text())["model_config"]
    full = llama_forward(cfg, hf_weights(model), prompt + tokens)
    return full[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


@pytest.mark.parametrize(
    "quantization,bound",
    # q4f32_1 is dequantized at load: f32 arithmetic only. q4f16_1 runs as Q4_0 blocks through the CPU
    # quantized kernels (quant::cpu: activations as 8 bits plus an 8-bit residual).
    [("q4f32_1", 1e-5), ("q4f16_1", 0.1)],
)
def test_4bit_logits_match_numpy_dequantization(models: Dict[str, Path], quantization: str, bound: float) -> None:
    ref = reference()
    for prompt in ref["prompts"]:
        tokens, rows = _core._greedy_logits(str(models[quantization]), "cpu", prompt, 16)
        want = numpy_rows(models[quantization], prompt, tokens)
        err = rel_err(np.array(rows), want)
        print(f"{quantization}: max relative logit error vs numpy {err:.2e}")
        assert err < bound, (quantization, err)
        # 4-bit weights really changed the model: its logits are not the f32 ones.
        assert rel_err(np.array(rows[:1]), ref["logits"][ref["prompts"].index(prompt)][:1]) > 1e-3


def test_bad_command_lines_fail_clearly(tmp_path: Path) -> None:
    done = mlc_llm("convert_weight", str(FIXTURE), "--quantization", "q3f16_0", "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "q3f16_0" in done.stderr
    done = mlc_llm("convert_weight", str(FIXTURE), "--quantization", "q4f16_1", "--model-type", "qwen2", "-o", str(tmp_path / "x"))
    assert done.returncode == 1 and "model_type" in done.stderr and "llama" in done.stderr
    done = mlc_llm("convert_weight", str(tmp_path), "--quantization", "q4f16_1", "-o", str(tmp_path / "x"))
    assert done.returncode == 1 and "config.json" in done.stderr
    done = mlc_llm("gen_config", str(FIXTURE), "--quantization", "q4f16_1", "--conv-template", "no-such", "-o", str(tmp_path / "y"))
    assert done.returncode == 1 and "no-such" in done.stderr and "chatml" in done.stderr
    assert not (tmp_path / "y" / "mlc-chat-config.json").exists()


def test_gen_config_checks_the_template_against_the_tokenizer(tmp_path: Path) -> None:
    """The real Llama 3 tokenizer: its own template fits; ChatML's and Qwen2's markers and stop ids do not,
    and gen_config says which (the directory is still written, as MLC writes it)."""
    src = tmp_path / "llama3"
    src.mkdir()
    config = {**json.loads((FIXTURE / "config.json").read_text()), "bos_token_id": 128000, "eos_token_id": [128001, 128009]}
    (src / "config.json").write_text(json.dumps(config))
    tokenizers = Path(__file__).parent / "fixtures" / "tokenizers" / "llama3"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((tokenizers / name).read_bytes())

    done = mlc_llm("gen_config", str(src), "--quantization", "q0f32", "--conv-template", "llama-3_1", "-o", str(tmp_path / "a"))
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr

    done = mlc_llm("gen_config", str(src), "--quantization", "q0f32", "--conv-template", "chatml", "-o", str(tmp_path / "b"))
    assert done.returncode == 0 and (tmp_path / "b" / "mlc-chat-config.json").exists()
    assert "<|im_end|>, <|im_start|> are not a token of this tokenizer" in done.stderr, done.stderr
    assert "stop token id 2 is the ordinary token '#'" in done.stderr, done.stderr

    done = mlc_llm("gen_config", str(src), "--quantization", "q0f32", "--conv-template", "qwen2", "-o", str(tmp_path / "c"))
    assert "stop token id 151643 is not in this tokenizer's vocabulary" in done.stderr, done.stderr
