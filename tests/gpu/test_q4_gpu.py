"""The CUDA Q4_0 matmul (our kernels in rust/kernels/kernels/q4_gemm.cu) against a CPU reference, and the
engine on a Q4_0 GGUF through it (run with `pytest -m gpu tests/gpu`).

Op cases run on the Rust side (`mlc_llm._core._q4_check`, see `mlc_core::model::q4_check`): random weights
quantized to Q4_0 by candle's CPU quantizer, random activations rounded to the case's dtype, `x . W^T` on
cuda:0 and the reference on the CPU: the blocks dequantized by a plain-Rust reading of the GGML layout and
f64 dot products. Batches up to 16 tokens run our GEMV kernels (tensor cores for bf16 / f16 with K a
multiple of 256, one tile of 8 tokens a block, 1-4 or 8 when asked; the scalar kernel otherwise), up to 128 our tensor-core GEMM (q4_gemm_tc.cu; bf16 / f16,
K % 256 == 0, aligned operands), and larger ones (prefill chunks) and what neither kernel takes dequantize
and use cuBLAS.

Tolerances: the GEMV kernels accumulate in f32 and round once when they store, so every output whose
reference is not tiny (|ref| >= max |ref| / 8) is within the output dtype's rounding (2^-8 relative for
bf16, 2^-11 for f16) plus f32 summation-order noise. The GEMM and the dequantize path round the weights to
the dtype first, so they are held to the error relative to the largest output, as in test_fused.py.

End to end: the tiny random Llama of test_engine_gpu.py written as a Q4_0 GGUF (benches/gpu/gguf_q4.py), our
engine on cuda:0 with `quantized_matmul` (the Q4_0 kernels) against our engine on the CPU with the weights
dequantized to f32: identical greedy tokens in float32; in bfloat16 the tokens are recorded and the leading
ones compared. Skips become failures with MLC_REQUIRE_GPU=1, as in test_smoke.py.
"""

import json
import os
import sys

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

# Element-wise relative bound on the GEMV path (output rounding + f32 order noise) and the bound relative
# to the largest output on any path.
_ELEM_TOL = {"f32": 1e-4, "bf16": 2.0**-8 + 1e-3, "f16": 2.0**-11 + 1e-3}
_MAX_TOL = {"f32": 1e-5, "bf16": 2e-2, "f16": 4e-3}
_GEMV_MAX_TOKENS = 16  # q4::GEMV_MAX_TOKENS
_GEMM_MAX_TOKENS = 128  # q4::GEMM_MAX_TOKENS
_PATH_NAMES = {"gemv": "gemv", "gemm": "gemm", "dequant": "dequant_matmul"}


@pytest.fixture(scope="module")
def q4_core(core):
    if not hasattr(core, "_q4_check"):
        _skip("this build of mlc_llm._core has no Q4_0 test entry point")
    return core


def _run(c, case):
    r = json.loads(c._q4_check("cuda:0", json.dumps(case)))
    print(f"{case}: {r}")
    path = os.environ.get("MLC_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": "q4", **case, **r}) + "\n")
    return r


def _expected_path(case):
    if case["tokens"] <= _GEMV_MAX_TOKENS:
        return "gemv"
    gemm = case["dtype"] in ("bf16", "f16") and case["cols"] % 256 == 0 and not case.get("misaligned_x")
    return "gemm" if gemm and case["tokens"] <= _GEMM_MAX_TOKENS else "dequant_matmul"


def _check(c, case):
    r = _run(c, case)
    dtype = case["dtype"]
    assert r["max_abs_ref"] > 0.0, r
    assert r["dequant_max_abs_err"] == 0.0, r  # d * (q - 8) in f32 on both sides: exact
    assert r["path"] == (_PATH_NAMES[case["path"]] if "path" in case else _expected_path(case)), r
    assert r["max_rel_err"] <= _MAX_TOL[dtype], r
    if r["path"] == "gemv":
        assert r["max_elem_rel_err"] <= _ELEM_TOL[dtype], r
    return r


# Llama-3-8B's projections (q/k/v stacked 6144, o 4096, gate/up stacked 28672, down with K = 14336), an
# odd N, a K that is a multiple of 32 but not of 256 (scalar kernel), a small model's width.
# K = 14336 and 4352 give the GEMV's warps 7, or 2 to 3, groups of 256 inputs (its ring of 2 copy stages
# wraps), K = 4096 two each.
_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1001, 4096), (1001, 4352), (999, 1056), (577, 576)]


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("rows,cols", _SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_q4_decode_batches(q4_core, dtype, rows, cols, tokens):
    _check(q4_core, {"dtype": dtype, "tokens": tokens, "rows": rows, "cols": cols, "seed": rows + tokens})


# f32 activations always take the scalar kernel (the tensor cores take bf16 / f16 only).
@pytest.mark.parametrize("rows,cols", [(4096, 4096), (999, 1056)])
@pytest.mark.parametrize("tokens", [1, 8, 20, 40])
def test_q4_f32(q4_core, rows, cols, tokens):
    _check(q4_core, {"dtype": "f32", "tokens": tokens, "rows": rows, "cols": cols, "seed": rows + tokens})


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("tokens", [9, 16, 31, 32, 33, 64, 256, 257, 600])
@pytest.mark.parametrize("rows,cols", [(4096, 4096), (1001, 14336), (999, 1056)])
def test_q4_larger_batches(q4_core, dtype, tokens, rows, cols):
    _check(q4_core, {"dtype": dtype, "tokens": tokens, "rows": rows, "cols": cols, "seed": tokens})


# The tensor-core GEMM, forced: decode batches past the GEMV, prefill-sized chunks it does not get by
# default (partial token and row tiles, K of one and many 256-groups, split over blocks or not).
# Prefill sizes only on the smaller shapes (the f64 reference of 2048 x 6144 x 4096 takes minutes).
_GEMM_CASES = [(t, r, c) for t in (33, 64, 65, 100, 128, 200, 256) for r, c in ((4096, 4096), (1001, 14336), (6144, 4096), (257, 256))]
_GEMM_CASES += [(t, r, c) for t in (512, 2048) for r, c in ((4096, 4096), (257, 256), (1001, 1024))]


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("tokens,rows,cols", _GEMM_CASES)
def test_q4_gemm(q4_core, dtype, tokens, rows, cols):
    _check(q4_core, {"dtype": dtype, "tokens": tokens, "rows": rows, "cols": cols, "path": "gemm", "seed": tokens + rows})


@pytest.mark.parametrize("path", ["gemm", "dequant"])
@pytest.mark.parametrize("tokens", [1, 8, 40])
def test_q4_forced_paths(q4_core, path, tokens):
    _check(q4_core, {"dtype": "bf16", "tokens": tokens, "rows": 1000, "cols": 4096, "path": path, "seed": 9})


@pytest.mark.parametrize("tokens", [1, 2, 5, 8])
def test_q4_output_projection(q4_core, tokens):
    # Llama-3's vocabulary: 8016 row tiles; rows are compared on a sample plus the last tile.
    _check(q4_core, {"dtype": "bf16", "tokens": tokens, "rows": 128256, "cols": 4096, "seed": tokens})


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_q4_stacked(q4_core, dtype, tokens):
    r = _check(q4_core, {"dtype": dtype, "tokens": tokens, "rows": 6144, "cols": 4096, "stacked": True, "seed": 3})
    assert r["stacked"] is True, r


# The MLP's gate/up projection with silu(gate) * up in the GEMV's epilogue (bf16 / f16, K % 256 == 0,
# up to 256 tokens; everything else falls back to the GEMV or dequantize path, then silu_mul). Its gate
# and up sums are rounded to the dtype before the activation, so it must equal the unfused GEMV +
# silu_mul exactly; against the f64 reference silu(gate) * up the error is the dtype's rounding of gate,
# up, silu and the product.
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("rows,cols", [(28672, 4096), (2002, 4096), (2000, 1056)])
@pytest.mark.parametrize("tokens", [1, 3, 8, 20, 40, 256])
def test_q4_gate_up_silu(q4_core, dtype, rows, cols, tokens):
    r = _run(q4_core, {"dtype": dtype, "tokens": tokens, "rows": rows, "cols": cols, "silu": True, "seed": rows + tokens})
    assert r["max_abs_ref"] > 0.0, r
    assert r["dequant_max_abs_err"] == 0.0, r
    assert r["silu_unfused_max_abs_diff"] == 0.0, r
    assert r["max_rel_err"] <= 2 * _MAX_TOL[dtype], r
    if r["path"] == "gemv":
        assert r["max_elem_rel_err"] <= 4 * _ELEM_TOL[dtype], r


@pytest.mark.parametrize("tokens", [1, 8])
def test_q4_misaligned_activations(q4_core, tokens):
    # x starting 2 bytes into its buffer: the tensor-core kernel's 8-byte loads would be unaligned, the
    # scalar kernel runs instead.
    _check(q4_core, {"dtype": "bf16", "tokens": tokens, "rows": 1000, "cols": 4096, "misaligned_x": True, "seed": 5})


# The GEMV's token tiles (1-4 or 8 tiles of 8 tokens a block, several blocks past 64 tokens; off in the
# engine, q4::gemv_max_tiles), forced onto the GEMV whatever q4::GEMV_MAX_TOKENS says: partial tiles, 8-tile
# blocks with 5-8 live tiles, a second block; and the engine's one tile a block at the same sizes.
# (Two shapes and seven sizes: the f64 reference of 4096 x 14336 at up to 100 tokens took most of the
# test file's time on the GPU host, and K = 14336 adds nothing the tiles depend on.)
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("rows,cols", [(6144, 4096), (1001, 4352)])
@pytest.mark.parametrize("tokens", [9, 16, 20, 24, 33, 64, 100])
@pytest.mark.parametrize("tiles", [1, 8])
def test_q4_gemv_token_tiles(q4_core, dtype, rows, cols, tokens, tiles):
    _check(q4_core, {"dtype": dtype, "tokens": tokens, "rows": rows, "cols": cols, "path": "gemv", "tiles": tiles,
                     "seed": rows + tokens})


# Informational timings of the three paths from 16 to 2048 tokens (recorded, never asserted): where the
# GEMV should hand over to the GEMM, the GEMM against dequantize + cuBLAS, and both against "dense" (cuBLAS
# on the weight dequantized beforehand: what a 16-bit model of the same shape runs; 4-bit should not be
# slower at any batch).
_TIMED = [(t, p) for t in (16, 32, 33, 48, 64, 96, 128, 192, 256, 512, 2048) for p in ("gemv", "gemm", "dequant", "dense")
          if t <= 64 or p != "gemv"]


def _time_path(q4_core, dtype, name, rows, cols, tokens, path):
    # "gemv_t8": the GEMV with up to 8 token tiles a block (the engine takes 1: q4::gemv_max_tiles).
    case = {"dtype": dtype, "tokens": tokens, "rows": rows, "cols": cols, "repeat": 20, "seed": 1, "path": path}
    if path == "gemv_t8":
        case.update(path="gemv", tiles=8)
    r = _run(q4_core, case)
    result = {"test": "q4_path_timing", "dtype": dtype, "name": name, "tokens": tokens, "path": path,
              "device_us": round(r["device_us"], 2), "tflops": round(2 * tokens * rows * cols / r["device_us"] / 1e6, 1),
              "max_rel_err": r["max_rel_err"]}
    print(result)
    path_out = os.environ.get("MLC_GPU_RESULTS")
    if path_out:
        with open(path_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    assert r["max_rel_err"] <= _MAX_TOL[dtype], r


@pytest.mark.parametrize("tokens,path", _TIMED)
@pytest.mark.parametrize("name,rows,cols", [("qkv", 6144, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)])
def test_q4_path_timing(q4_core, name, rows, cols, tokens, path):
    _time_path(q4_core, "f16", name, rows, cols, tokens, path)


# The GEMV (one token tile a block, and up to 8) against the GEMM and dense cuBLAS from 1 to 128 tokens in
# bf16 (recorded, never asserted): where the GEMV should hand over to the GEMM.
_TILE_TIMED = [(t, p) for t in (1, 8, 16, 24, 32, 40, 48, 64, 96, 128) for p in ("gemv", "gemv_t8", "gemm", "dense")
               if (p != "gemm" or t >= 16) and (p != "gemv_t8" or 8 < t <= 64)]


@pytest.mark.parametrize("tokens,path", _TILE_TIMED)
@pytest.mark.parametrize("name,rows,cols", [("qkv", 6144, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)])
def test_q4_gemv_tiles_timing(q4_core, name, rows, cols, tokens, path):
    _time_path(q4_core, "bf16", name, rows, cols, tokens, path)


@pytest.mark.parametrize("tokens", [33, 64, 128, 256])
@pytest.mark.parametrize("path", ["gemm", "dense"])
def test_q4_path_timing_bf16(q4_core, tokens, path):
    _time_path(q4_core, "bf16", "gate_up", 28672, 4096, tokens, path)


# Informational timings (recorded, never asserted): Llama-3-8B shapes in bf16; mean of back-to-back
# calls with one synchronize at the end, output allocation included; weight bytes over time.
@pytest.mark.parametrize("tokens", [1, 8])
@pytest.mark.parametrize("name,rows,cols", [
    ("qkv", 6144, 4096), ("o_proj", 4096, 4096), ("gate_up", 28672, 4096), ("gate_up_silu", 28672, 4096),
    ("down", 4096, 14336),
    ("lm_head", 128256, 4096),
])
def test_q4_timing(q4_core, name, rows, cols, tokens):
    r = _run(q4_core, {"dtype": "bf16", "tokens": tokens, "rows": rows, "cols": cols, "repeat": 100, "seed": 1,
                       "silu": name.endswith("_silu")})
    weight_bytes = rows * cols // 32 * 18
    result = {"test": "q4_timing", "name": name, "tokens": tokens, "device_us": round(r["device_us"], 2),
              "weight_tb_s": round(weight_bytes / r["device_us"] / 1e6, 3)}
    print(result)
    path = os.environ.get("MLC_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")
    assert r["device_us"] > 0


# ---- end to end: a Q4_0 GGUF through the kernels against the CPU's dequantized weights


@pytest.fixture(scope="module")
def tiny_q4_gguf(tmp_path_factory, torch_mod, tiny_llama):
    """tiny_llama's weights as a llama-arch Q4_0 GGUF (hidden 256: the tensor-core kernel for q/k/v, o and
    gate/up in bf16; down_proj's K = 640 runs the scalar kernel)."""
    from transformers import LlamaForCausalLM

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    if root not in sys.path:
        sys.path.insert(0, root)
    from benches.gpu.gguf_q4 import write_llama_gguf

    model = LlamaForCausalLM.from_pretrained(str(tiny_llama), torch_dtype=torch_mod.float32)
    cfg = model.config
    shape = {k: getattr(cfg, k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                                          "tie_word_embeddings", "max_position_embeddings", "num_hidden_layers",
                                          "intermediate_size", "rms_norm_eps")}
    # transformers 5 keeps the rope base in `rope_parameters` (older releases: `rope_theta`).
    rope = getattr(cfg, "rope_parameters", None) or {}
    shape["rope_theta"] = rope.get("rope_theta") if "rope_theta" in rope else cfg.__dict__.get("rope_theta", 10000.0)
    path = tmp_path_factory.mktemp("tiny_q4") / "tiny-q4_0.gguf"
    write_llama_gguf(str(path), model.state_dict(), shape, "q4_0")
    return path


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_q4_cuda_matches_cpu_dequantized(core, tiny_q4_gguf, prompts, dtype):
    max_tokens = {i: 16 for i in range(len(prompts))}
    gpu, gmeta = _run_engine(core, tiny_q4_gguf, "cuda:0", {"dtype": dtype, "quantized_matmul": True}, prompts, max_tokens)
    # The CPU's exact reference: its quantized kernels (the CPU default since they met the fidelity bound)
    # round activations to 8 bits, which would move the f32 comparison by ~2e-3.
    cpu, cmeta = _run_engine(core, tiny_q4_gguf, "cpu", {**CPU_F32, "quantized_matmul": False}, prompts, max_tokens)
    prefixes = [_common_prefix(g["ids"], c["ids"]) for g, c in zip(gpu, cpu)]
    lp = [abs(a - b) for g, c in zip(gpu, cpu) for a, b in zip(g["logprobs"], c["logprobs"])]
    result = {
        "dtype": dtype,
        "cuda": gmeta,
        "cpu": cmeta,
        "sequences_identical": sum(g["ids"] == c["ids"] for g, c in zip(gpu, cpu)),
        "prompts": len(prompts),
        "common_prefix_lens": prefixes,
        "first_logprob_max_abs_diff": max(abs(g["logprobs"][0] - c["logprobs"][0]) for g, c in zip(gpu, cpu)),
        "logprob_max_abs_diff": max(lp),
    }
    _record("engine_q4_cuda_vs_cpu", result)
    assert gmeta["device"].startswith("cuda") and cmeta["device"] == "cpu", result
    if dtype == "float32":
        # Same f32 weights (d * (q - 8)), f32 activations on both sides: only summation order differs.
        assert result["sequences_identical"] == len(prompts), result
        assert result["logprob_max_abs_diff"] < 1e-3, result
    else:
        # bf16 activations: rounding alone moves log-probabilities and flips near ties. Calibrate with the
        # same weights dequantized to dense bf16 on the GPU (cuBLAS instead of our Q4_0 kernels): the
        # kernel path may be no further from the f32 reference than that, with a margin for one sample.
        dense, _ = _run_engine(core, tiny_q4_gguf, "cuda:0", {"dtype": dtype}, prompts, max_tokens)
        first = lambda runs: [abs(r["logprobs"][0] - c["logprobs"][0]) for r, c in zip(runs, cpu)]  # noqa: E731
        result["dense_bf16_first_logprob_max_abs_diff"] = max(first(dense))
        result["first_logprob_mean_abs_diff"] = sum(first(gpu)) / len(gpu)
        result["dense_bf16_first_logprob_mean_abs_diff"] = sum(first(dense)) / len(dense)
        result["dense_bf16_common_prefix_lens"] = [_common_prefix(d["ids"], c["ids"]) for d, c in zip(dense, cpu)]
        _record("engine_q4_cuda_vs_cpu_bf16_calibrated", result)
        assert result["first_logprob_mean_abs_diff"] <= 2 * result["dense_bf16_first_logprob_mean_abs_diff"] + 0.05, result
        assert sum(p >= 1 for p in prefixes) >= len(prompts) - 1, result


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_engine_q4_batches_match_batch_one(core, tiny_q4_gguf, dtype):
    """64 sequences decoding together (q/k/v, o and gate/up take the tensor-core GEMM past 32 tokens per
    step) against each sequence alone (the GEMV), and 33 together: the same greedy tokens up to near ties.
    The GEMM and the dequantize path (prefill chunks of the batch) round each weight to the dtype before
    the products while the GEMV scales f32 sums, so log-probabilities move by the dtype's rounding of the
    weights: f16 (11 bits) keeps them within a few thousandths of a nat, bf16 (8 bits) within a few
    hundredths, as dense bf16 weights would (measured on an H100: mean 0.002 / 0.043 nats for the first
    token, 63 / 59-60 of 64 first tokens equal)."""
    import random

    rng = random.Random(1)
    many = [[rng.randrange(3, 1024) for _ in range(rng.randrange(4, 40))] for _ in range(64)]
    max_tokens = {i: 12 for i in range(len(many))}
    # max_num_sequence 1: one sequence per step, each alone on the GEMV.
    solo, _ = _run_engine(core, tiny_q4_gguf, "cuda:0", {"dtype": dtype, "quantized_matmul": True, "max_num_sequence": 1},
                          many, max_tokens)
    result = {"dtype": dtype}
    for batch in (33, 64):
        together, meta = _run_engine(core, tiny_q4_gguf, "cuda:0",
                                     {"dtype": dtype, "quantized_matmul": True, "max_num_sequence": batch}, many, max_tokens)
        first = [abs(a["logprobs"][0] - b["logprobs"][0]) for a, b in zip(together, solo)]
        result[f"batch{batch}"] = {
            "sequences_identical": sum(a["ids"] == b["ids"] for a, b in zip(together, solo)),
            "first_token_identical": sum(a["ids"][0] == b["ids"][0] for a, b in zip(together, solo)),
            "first_logprob_mean_abs_diff": sum(first) / len(first),
            "first_logprob_max_abs_diff": max(first),
            "meta": meta,
        }
    _record("engine_q4_batches_vs_batch_one", result)
    bound = {"float16": (0.01, 2, 4), "bfloat16": (0.08, 8, 40)}[dtype]  # mean nats, first tokens, sequences
    for batch in (33, 64):
        r = result[f"batch{batch}"]
        assert r["first_logprob_mean_abs_diff"] <= bound[0], result
        assert r["first_token_identical"] >= len(many) - bound[1], result
        assert r["sequences_identical"] >= len(many) - bound[2], result
