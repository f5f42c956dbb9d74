"""The decoder layer's fused CUDA ops against their CPU reference, and the engine built on them (run with
`pytest -m gpu tests/gpu`).

Op cases run on the Rust side (`mlc_llm._core._fused_check`, see `mlc_core::model::fused_check`): random
inputs rounded to the device dtype, the op on cuda:0 (silu(gate) * up from the stacked gate/up output; the
residual add fused with RMSNorm; rope of q and k from the stacked q/k/v output with the paged-cache write of
k and v, in both rotation conventions, with and without the q/k norm of Qwen3; stacked projections, dense
and GGUF-quantized) and the reference (the unfused candle ops, f32 on the CPU). Errors are relative to the
largest reference value: f32 differs in arithmetic order only, bf16 / f16 by the outputs' rounding.

End to end: tiny random Llama, Qwen2 (q/k/v bias) and Qwen3 (q/k norm) checkpoints, our engine in float32
on cuda:0 against our engine in float32 on the CPU: identical greedy tokens. The Llama checkpoint, prompts and
engine driver are those of test_engine_gpu.py. Skips become failures with MLC_REQUIRE_GPU=1, as in
test_smoke.py.
"""

import json
import os
import shutil

import pytest

from test_engine_gpu import (  # noqa: F401 - fixtures are used by name
    CPU_F32,
    _common_prefix,
    _record,
    _run_engine,
    _skip,
    core,
    prompts,
    tiny_llama,
    torch_mod,
)

pytestmark = pytest.mark.gpu

# Largest |device - reference| / max(1, max |reference|) per dtype.
_TOL = {"f32": 1e-5, "bf16": 2e-2, "f16": 4e-3}


@pytest.fixture(scope="module")
def fused_core(core):
    if not hasattr(core, "_fused_check"):
        _skip("this build of mlc_llm._core has no fused-op test entry point")
    return core


def _run(c, case):
    r = json.loads(c._fused_check("cuda:0", json.dumps(case)))
    print(f"{case}: {r}")
    path = os.environ.get("MLC_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": "fused", **case, **r}) + "\n")
    return r


def _check(c, case):
    r = _run(c, case)
    tol = _TOL[case["dtype"]]
    assert r["max_abs_ref"] > 0.0, r
    assert r["max_abs_err"] <= tol * max(1.0, r["max_abs_ref"]), r
    if r.get("second_max_abs_err") is not None:
        assert r["second_max_abs_err"] <= tol * max(1.0, r["second_max_abs_ref"]), r
    return r


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("tokens,ffn", [(1, 14336), (7, 1000), (64, 14336), (300, 640)])
def test_silu_mul(fused_core, dtype, tokens, ffn):
    _check(fused_core, {"op": "silu_mul", "dtype": dtype, "tokens": tokens, "ffn": ffn, "seed": tokens})


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("tokens,hidden", [(1, 4096), (64, 4096), (513, 576), (3, 1000), (2, 8192)])
def test_add_rms_norm(fused_core, dtype, tokens, hidden):
    _check(fused_core, {"op": "add_rms_norm", "dtype": dtype, "tokens": tokens, "hidden": hidden, "seed": hidden})


# Decode at several lengths, a fresh prefill and a chunk continuing a prompt, across block boundaries.
_SEQS = [(1, 300), (40, 40), (2, 1030), (1, 16), (1, 17), (17, 33)]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_qkv(fused_core, dtype, interleaved, qk_norm):
    r = _check(fused_core, {"op": "rope_qkv", "dtype": dtype, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
                            "seqs": _SEQS, "interleaved": interleaved, "qk_norm": qk_norm, "seed": 7})
    assert r["v_max_abs_err"] == 0.0, r  # v is copied into its slots unchanged, other slots untouched
    assert r["num_tokens"] == sum(q for q, _ in _SEQS)


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 256])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_rope_qkv_head_dims(fused_core, dtype, head_dim):
    for interleaved in (False, True):
        r = _check(fused_core, {"op": "rope_qkv", "dtype": dtype, "num_heads": 6, "num_kv_heads": 2,
                                "head_dim": head_dim, "seqs": [(1, 70), (9, 9)], "interleaved": interleaved,
                                "qk_norm": head_dim == 80, "seed": head_dim})
        assert r["v_max_abs_err"] == 0.0, r


@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_rope_qkv_block_sizes(fused_core, block_size):
    r = _check(fused_core, {"op": "rope_qkv", "dtype": "bf16", "num_heads": 8, "num_kv_heads": 1, "head_dim": 64,
                            "seqs": [(1, 257), (33, 33)], "block_size": block_size, "seed": block_size})
    assert r["v_max_abs_err"] == 0.0, r


# Batches of 1 to 4 tokens in bf16 / f16 run our GEMV (model/dense_gemv.rs; with
# MLC_DENSE_GEMV_MMA_MAX_TOKENS=16 in the environment, 2 to 16 tokens its tensor-core variant where K % 32
# == 0), larger ones and f32 cuBLAS; hidden 100 is not a multiple of 8 (cuBLAS at every batch).
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("tokens", [1, 2, 4, 5, 8, 9, 16])
@pytest.mark.parametrize("hidden", [256, 4096, 100, 14336])
def test_stacked_dense_linear(fused_core, dtype, tokens, hidden):
    r = _check(fused_core, {"op": "stacked_linear", "dtype": dtype, "tokens": tokens, "hidden": hidden,
                            "outs": [256, 64, 64], "seed": tokens})
    assert r["stacked"] is True, r


# A stacked gate/up pair with silu(gate) * up: fused into the dense GEMV's epilogue at 1 to 4 tokens in
# bf16 / f16 (equal to the GEMV then silu_mul), the matmul then silu_mul elsewhere. Odd widths leave the
# last block of 8 outputs partly empty.
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("tokens", [1, 3, 4, 6, 12])
@pytest.mark.parametrize("hidden,ffn", [(4096, 14336), (256, 1003), (1000, 64)])
def test_stacked_dense_gate_up_silu(fused_core, dtype, tokens, hidden, ffn):
    r = _check(fused_core, {"op": "stacked_linear", "dtype": dtype, "tokens": tokens, "hidden": hidden,
                            "outs": [ffn, ffn], "silu": True, "seed": tokens + ffn})
    assert r["stacked"] is True, r


@pytest.mark.parametrize("quant", ["q4_0", "q8_0"])
@pytest.mark.parametrize("tokens", [1, 5])
def test_stacked_quantized_linear(fused_core, quant, tokens):
    # Stacked quantized rows are the parts' raw blocks: the device's stacked matmul equals its separate
    # ones; against the CPU the quantized kernels differ in how they quantize the activations.
    r = _run(fused_core, {"op": "stacked_linear", "dtype": "f32", "tokens": tokens, "hidden": 256,
                          "outs": [256, 64, 64], "quant": quant, "seed": tokens})
    assert r["stacked"] is True, r
    assert r["second_max_abs_err"] <= 1e-4 * max(1.0, r["second_max_abs_ref"]), r
    assert r["max_abs_err"] <= 5e-2 * max(1.0, r["max_abs_ref"]), r


# Informational timings (recorded, never asserted): Llama-3-8B shapes at batch 1 in bf16; mean of
# back-to-back calls with one synchronize at the end, output allocation included.
@pytest.mark.parametrize("name,case", [
    ("silu_mul_t1", {"op": "silu_mul", "tokens": 1, "ffn": 14336}),
    ("add_rms_norm_t1", {"op": "add_rms_norm", "tokens": 1, "hidden": 4096}),
    ("rope_qkv_t1", {"op": "rope_qkv", "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "seqs": [(1, 1000)]}),
    ("stacked_qkv_t1", {"op": "stacked_linear", "tokens": 1, "hidden": 4096, "outs": [4096, 1024, 1024]}),
    ("o_proj_t1", {"op": "stacked_linear", "tokens": 1, "hidden": 4096, "outs": [4096]}),
    ("stacked_gate_up_t1", {"op": "stacked_linear", "tokens": 1, "hidden": 4096, "outs": [14336, 14336]}),
    ("gate_up_silu_t1", {"op": "stacked_linear", "tokens": 1, "hidden": 4096, "outs": [14336, 14336], "silu": True}),
    ("o_proj_t4", {"op": "stacked_linear", "tokens": 4, "hidden": 4096, "outs": [4096]}),
    ("down_t4", {"op": "stacked_linear", "tokens": 4, "hidden": 14336, "outs": [4096]}),
    ("down_t1", {"op": "stacked_linear", "tokens": 1, "hidden": 14336, "outs": [4096]}),
    ("o_proj_t8", {"op": "stacked_linear", "tokens": 8, "hidden": 4096, "outs": [4096]}),
    ("gate_up_silu_t8", {"op": "stacked_linear", "tokens": 8, "hidden": 4096, "outs": [14336, 14336], "silu": True}),
    ("down_t8", {"op": "stacked_linear", "tokens": 8, "hidden": 14336, "outs": [4096]}),
    ("down_t16", {"op": "stacked_linear", "tokens": 16, "hidden": 14336, "outs": [4096]}),
])
def test_fused_timing(fused_core, name, case):
    r = _run(fused_core, {**case, "dtype": "bf16", "repeat": 100, "seed": 1})
    result = {"test": "fused_timing", "name": name, "device_us": round(r["device_us"], 2)}
    if case["op"] == "stacked_linear":  # weight bytes over time
        result["weight_tb_s"] = round(2 * case["hidden"] * sum(case["outs"]) / r["device_us"] / 1e6, 3)
    print(result)
    path = os.environ.get("MLC_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")
    assert r["device_us"] > 0


# ---- end to end: float32 on cuda:0 against float32 on the CPU


def _tiny(torch, tiny_llama, path, kind):
    """A tiny random Qwen2 (with random q/k/v biases) or Qwen3 (with random q/k norm weights) saved in
    float32 beside tiny_llama's word-level tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=1024, hidden_size=256, intermediate_size=640, num_hidden_layers=3, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.15)
    torch.manual_seed(1)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=32, **common))
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            for proj in (a.q_proj, a.k_proj, a.v_proj):
                if proj.bias is not None:
                    proj.bias.normal_(0.0, 0.2)
            for norm in (getattr(a, "q_norm", None), getattr(a, "k_norm", None)):
                if norm is not None:
                    norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(str(path))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / f, path / f)
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, torch_mod, tiny_llama):
    return {
        "llama": tiny_llama,
        "qwen2": _tiny(torch_mod, tiny_llama, tmp_path_factory.mktemp("tiny_qwen2"), "qwen2"),
        "qwen3": _tiny(torch_mod, tiny_llama, tmp_path_factory.mktemp("tiny_qwen3"), "qwen3"),
    }


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_engine_f32_cuda_matches_cpu_with_fused_ops(core, tiny_models, prompts, kind):
    path = tiny_models[kind]
    gpu, gmeta = _run_engine(core, path, "cuda:0", {"dtype": "float32"}, prompts)
    cpu, cmeta = _run_engine(core, path, "cpu", CPU_F32, prompts)
    same = [g["ids"] == c["ids"] for g, c in zip(gpu, cpu)]
    lp = [abs(a - b) for g, c in zip(gpu, cpu) for a, b in zip(g["logprobs"], c["logprobs"])]
    result = {
        "model": kind,
        "cuda": gmeta,
        "cpu": cmeta,
        "sequences_identical": sum(same),
        "prompts": len(prompts),
        "common_prefix_lens": [_common_prefix(g["ids"], c["ids"]) for g, c in zip(gpu, cpu)],
        "logprob_max_abs_diff": max(lp),
    }
    _record("engine_f32_cuda_vs_cpu_fused", result)
    assert gmeta["device"].startswith("cuda") and cmeta["device"] == "cpu", result
    assert all(same), result
    assert result["logprob_max_abs_diff"] < 1e-3, result
