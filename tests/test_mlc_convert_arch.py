"""`mlc_llm convert_weight` + `gen_config` on the tiny HF Gemma 2, Gemma 3 (text), Phi-3 and OLMo 2 fixtures.

mlc-chat-config.json's `model_type` and `model_config` must be what MLC LLM's config classes write: their
fields, in declaration order, with the values their `__post_init__` gives (spelled out below from
mlc-ai/mlc-llm python/mlc_llm/model/gemma/gemma_model.py + gemma2/gemma2_model.py (`Gemma2Config`),
gemma3/gemma3_model.py (`Gemma3Config`, `Gemma3TextConfig`), phi3/phi3_model.py (`Phi3Config`); MLC has no
OLMo 2 model, ours follows its olmo/olmo_model.py `OLMoConfig`). Keys MLC's class drops but the checkpoint's
math needs are kept beside them (`mlc_arch.HF_KEPT`). The directory then reproduces transformers' logits at
q0f32; 4-bit directories are checked value by value in rust/core/tests/mlc_roundtrip.rs."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from mlc_llm import _core

MODELS = Path(__file__).parent / "fixtures" / "models"
REPO = Path(__file__).parent.parent
ARCHS = {"gemma2": "gemma_instruction", "gemma3": "gemma3_instruction", "gemma3_v4cfg": "gemma3_instruction", "phi3": "phi-3", "olmo2": "olmo2"}


def mlc_llm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    return subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True, env=env, timeout=300)


def gen_config(src: Path, out: Path, quantization: str, template: str, *extra: str) -> Dict[str, Any]:
    done = mlc_llm("gen_config", str(src), "--quantization", quantization, "--conv-template", template, "-o", str(out), *extra)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "mlc-chat-config.json").read_text())


def make(tmp: Path, name: str, quantization: str) -> Path:
    out = tmp / f"{name}-{quantization}-MLC"
    done = mlc_llm("convert_weight", str(MODELS / name), "--quantization", quantization, "-o", str(out))
    assert done.returncode == 0, done.stderr
    gen_config(MODELS / name, out, quantization, ARCHS[name])
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Dict[Tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("mlc-arch")
    return {(name, q): make(tmp, name, q) for name in ARCHS for q in ["q0f32", "q4f16_1"]}


def hf(name: str) -> Dict[str, Any]:
    return json.loads((MODELS / name / "config.json").read_text())


def expected_model_config(name: str) -> Dict[str, Any]:
    """What MLC's config class writes for the fixture (gen_config's default --max-batch-size 128)."""
    if name == "gemma2":
        # GemmaConfig fields, then Gemma2Config's; context_window_size = sliding_window (16), and the
        # second __post_init__ clamps prefill_chunk_size (min(512, 8192)) to it.
        return {
            "hidden_size": 64, "intermediate_size": 160, "attention_bias": False, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 256, "num_hidden_layers": 4, "rms_norm_eps": 1e-06, "vocab_size": 2048,
            "hidden_activation": "gelu_pytorch_tanh", "position_embedding_base": 10000.0, "context_window_size": 16,
            "prefill_chunk_size": 16, "tensor_parallel_shards": 1, "max_batch_size": 128, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 64, "sliding_window": 16,
            "max_position_embeddings": 512,  # kept: MLC caps the context at the window
        }
    if name in ("gemma3", "gemma3_v4cfg"):
        # Gemma3TextConfig's fields (position_embedding_base popped from rope_theta; context_window_size =
        # max(sliding_window, 8192)) and every other key of config.json in its kwargs; Gemma3Config at the top.
        fields = ["hidden_size", "intermediate_size", "num_hidden_layers", "attention_bias", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_activation"]
        cfg = hf(name)
        text = {k: cfg[k] for k in fields}
        text.update({"position_embedding_base": 1000000.0, "context_window_size": 8192, "prefill_chunk_size": 8192,
                     "query_pre_attn_scalar": 48, "sliding_window": 16})
        skip = set(fields) | {"vocab_size", "rope_theta", "query_pre_attn_scalar", "sliding_window"}
        text["kwargs"] = {k: v for k, v in cfg.items() if k not in skip}
        return {"text_config": text, "vocab_size": 2048, "tensor_parallel_shards": 1, "max_batch_size": 128,
                "context_window_size": 8192, "sliding_window_size": -1, "prefill_chunk_size": 8192, "is_text_model": True}
    if name == "phi3":
        cfg = hf(name)
        scaling = {**cfg["rope_scaling"], "rope_type": "longrope", "max_position_embeddings": 256, "original_max_position_embeddings": 32}
        return {
            "model_type": "phi3", "hidden_size": 64, "vocab_size": 2048, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 160, "rms_norm_eps": 1e-06, "num_key_value_heads": 1, "max_position_embeddings": 256,
            "position_embedding_base": 10000.0, "rope_scaling": scaling, "original_max_position_embeddings": 32,
            "context_window_size": 256, "prefill_chunk_size": 256, "head_dim": 32, "tensor_parallel_shards": 1,
            "max_batch_size": 128, "tie_word_embeddings": False, "partial_rotary_factor": 0.5,
            "sliding_window": 48,  # kept: Phi3Config has no window
        }
    assert name == "olmo2"
    return {
        "vocab_size": 2048, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "position_embedding_base": 500000.0, "rope_scaling": None, "intermediate_size": 160, "hidden_act": "silu",
        "num_hidden_layers": 2, "tie_word_embeddings": False, "context_window_size": 512, "prefill_chunk_size": 512,
        "tensor_parallel_shards": 1, "pipeline_parallel_stages": 1, "max_batch_size": 128, "rms_norm_eps": 1e-06,
        "attention_bias": False,
    }


def ordered(d: Any) -> Any:
    """`d` with every dict as its list of items, so that == also compares key order."""
    if isinstance(d, dict):
        return [(k, ordered(v)) for k, v in d.items()]
    return d


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "gemma3_v4cfg", "phi3", "olmo2"])
def test_model_config_is_what_mlc_writes(name: str, tmp_path: Path) -> None:
    chat = gen_config(MODELS / name, tmp_path, "q4f16_1", "chatml")
    assert chat["model_type"] == hf(name)["model_type"]
    assert ordered(chat["model_config"]) == ordered(expected_model_config(name))
    mc = chat["model_config"]
    # The top level takes MLC's getattr(model_config, ...) defaults.
    assert chat["context_window_size"] == mc["context_window_size"]
    assert chat["prefill_chunk_size"] == mc["prefill_chunk_size"]
    assert chat["sliding_window_size"] == mc.get("sliding_window_size", -1)
    assert chat["pipeline_parallel_stages"] == mc.get("pipeline_parallel_stages", 1)
    assert chat["vocab_size"] == 2048


def test_overrides_follow_mlcs_config_classes(tmp_path: Path) -> None:
    # Gemma2Config clamps the chunk (min(512, 8192)) to the overridden window, then resets the window to
    # sliding_window; Phi3Config clamps the chunk to the new window.
    chat = gen_config(MODELS / "gemma2", tmp_path / "g", "q0f32", "chatml", "--context-window-size", "64")
    assert (chat["model_config"]["context_window_size"], chat["model_config"]["prefill_chunk_size"]) == (16, 64)
    chat = gen_config(MODELS / "phi3", tmp_path / "p", "q0f32", "chatml", "--context-window-size", "128")
    assert (chat["model_config"]["context_window_size"], chat["model_config"]["prefill_chunk_size"]) == (128, 128)
    # --model-type gemma3 reads a gemma3_text checkpoint with the same classes and names the directory gemma3.
    chat = gen_config(MODELS / "gemma3_v4cfg", tmp_path / "m", "q0f32", "chatml", "--model-type", "gemma3")
    assert chat["model_type"] == "gemma3" and chat["model_config"]["is_text_model"] is True


def tensor_names(out: Path) -> List[str]:
    index = json.loads((out / "tensor-cache.json").read_text())
    return [r["name"] for shard in index["records"] for r in shard["records"]]


def test_parameters_carry_mlcs_names(dirs: Dict[Tuple[str, str], Path]) -> None:
    names = {name: set(tensor_names(dirs[(name, "q4f16_1")])) for name in ARCHS}
    assert {"model.layers.0.self_attn.qkv_proj.q_weight", "model.layers.0.pre_feedforward_layernorm.weight"} <= names["gemma2"]
    assert not any(n.startswith("lm_head") for n in names["gemma2"] | names["gemma3_v4cfg"])
    assert names["gemma3"] == names["gemma3_v4cfg"]
    assert {"language_model.model.layers.0.self_attn.k_proj.q_scale", "language_model.model.layers.0.self_attn.k_norm.weight",
            "language_model.model.embed_tokens.q_weight"} <= names["gemma3_v4cfg"]
    assert {"transformer.h.1.mixer.qkv_proj.q_weight", "transformer.h.1.mixer.out_proj.q_weight", "transformer.h.0.ln.weight",
            "transformer.embd.q_weight", "lm_head.q_weight", "transformer.norm.weight"} <= names["phi3"]
    assert {"model.layers.1.self_attn.q_norm.weight", "model.layers.1.post_feedforward_layernorm.weight",
            "model.layers.1.mlp.gate_up_proj.q_weight"} <= names["olmo2"]


def reference(name: str) -> Dict[str, Any]:
    ref = json.loads((MODELS / name / "reference.json").read_text())
    ref["logits"] = np.fromfile(MODELS / name / ref["logits_file"], dtype="<f4").reshape(ref["logits_shape"])
    return ref


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def compared_rows(name: str, prompt: List[int]) -> int:
    """Every row (Phi-3 included: past its original context transformers and this engine both recompute the
    sequence with the long factors)."""
    return 32


# Gemma 2's soft-capped scores (up to 63) make its fixture the most sensitive to float reassociation; the HF
# directory itself gives the same logits through this engine.
Q0F32_BOUND = {"gemma2": 1.5e-4}


@pytest.mark.parametrize("name", list(ARCHS))
def test_q0f32_reproduces_transformers(dirs: Dict[Tuple[str, str], Path], name: str) -> None:
    ref = reference(name)
    for i, prompt in enumerate(ref["prompts"]):
        tokens, rows = _core._greedy_logits(str(dirs[(name, "q0f32")]), "cpu", prompt, 32)
        hf_tokens, hf_rows = _core._greedy_logits(str(MODELS / name), "cpu", prompt, 32)
        assert tokens == hf_tokens and np.array_equal(np.array(rows), np.array(hf_rows)), "the MLC directory is the HF model"
        n = compared_rows(name, prompt)
        assert tokens[:n] == ref["greedy"][i][:n]
        if n:
            err = rel_err(np.array(rows[:n]), ref["logits"][i][:n])
            print(f"{name} q0f32 prompt {i}: max relative logit error {err:.2e} over {n} rows")
            assert err < Q0F32_BOUND.get(name, 1e-4), (i, err)


@pytest.mark.parametrize("name", list(ARCHS))
def test_q4f16_1_runs_quantized(dirs: Dict[Tuple[str, str], Path], name: str) -> None:
    ref = reference(name)
    prompt = ref["prompts"][0]
    tokens, rows = _core._greedy_logits(str(dirs[(name, "q4f16_1")]), "cpu", prompt, 4)
    assert len(tokens) == 4 and np.isfinite(rows).all()
    assert rel_err(np.array(rows[:1]), ref["logits"][0][:1]) > 1e-3, "4-bit weights change the logits"


def test_unrepresentable_checkpoints_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "untied-gemma2"
    src.mkdir()
    for f in (MODELS / "gemma2").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    cfg = hf("gemma2")
    (src / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    done = mlc_llm("convert_weight", str(src), "--quantization", "q0f32", "-o", str(tmp_path / "out"))
    assert done.returncode == 1 and "tie_word_embeddings" in done.stderr, done.stderr


def test_gen_config_refuses_what_it_cannot_describe(tmp_path: Path) -> None:
    for name, edit, words in [
        ("falcon", {"model_type": "falcon"}, ["falcon", "gemma3_text"]),
        ("gemma3-mm", {"model_type": "gemma3", "text_config": hf("gemma3_v4cfg")}, ["multimodal"]),
    ]:
        src = tmp_path / name
        src.mkdir()
        (src / "config.json").write_text(json.dumps({**hf("gemma3_v4cfg"), **edit}))
        done = mlc_llm("gen_config", str(src), "--quantization", "q0f32", "--conv-template", "chatml", "-o", str(tmp_path / f"{name}-out"))
        assert done.returncode == 1 and all(w in done.stderr for w in words), done.stderr


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_moe_directories_from_the_cli_reproduce_transformers(tmp_path: Path, name: str) -> None:
    """`convert_weight` + `gen_config` on the mixture-of-experts fixtures: MLC's model_config fields for the
    experts (MixtralConfig's num_local_experts; Qwen3MoeConfig's num_experts, moe_intermediate_size, ...), and
    the q0f32 directory is the HF model (same tokens and logits as the checkpoint itself)."""
    out = tmp_path / f"{name}-q0f32-MLC"
    done = mlc_llm("convert_weight", str(MODELS / name), "--quantization", "q0f32", "-o", str(out))
    assert done.returncode == 0, done.stderr
    cfg = gen_config(MODELS / name, out, "q0f32", "chatml")["model_config"]
    if name == "mixtral":
        assert (cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (4, 2)
    else:
        assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"], cfg["norm_topk_prob"]) == (16, 4, 32, True)
    ref = reference(name)
    prompt = ref["prompts"][1]
    tokens, rows = _core._greedy_logits(str(out), "cpu", prompt, 32)
    hf_tokens, hf_rows = _core._greedy_logits(str(MODELS / name), "cpu", prompt, 32)
    assert tokens == hf_tokens == ref["greedy"][1]
    assert np.array_equal(np.array(rows), np.array(hf_rows))
