"""Our CUDA paged-attention and KV-write kernels against the CPU reference (run with `pytest -m gpu tests/gpu`).

Each case builds one random step on the Rust side (`mlc_llm._core._attention_check`): scattered block
tables, random cached context, new K/V written through the KV-write kernel, then attention of every query
token over positions 0..=pos of its own sequence. The CPU reference runs in f32 on the same values rounded
to the device dtype, so the only differences are the kernels' f32 arithmetic order and the final rounding.
Skips (no GPU, no CUDA build) become failures with MLC_REQUIRE_GPU=1, as in test_smoke.py.
"""

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.gpu

_REQUIRE = os.environ.get("MLC_REQUIRE_GPU") == "1"
# Largest |device - reference| allowed per dtype: f32 differs only in summation order; bf16 / f16 add
# the rounding of the output (|out| <= ~1 here: half an ulp is 2^-9 for bf16, 2^-12 for f16).
_TOL = {"f32": 5e-5, "bf16": 1e-2, "f16": 2e-3}


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
        _skip("this build of mlc_llm._core sees no CUDA device")
    if not hasattr(c, "_attention_check"):
        _skip("this build of mlc_llm._core has no kernel test entry points")
    return c


def _check(core, dtype, heads, kv_heads, head_dim, seqs, block_size=16, seed=0):
    case = {"dtype": dtype, "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
            "block_size": block_size, "seqs": seqs, "seed": seed}
    r = json.loads(core._attention_check("cuda:0", json.dumps(case)))
    print(f"{dtype} h={heads}/{kv_heads} d={head_dim} bs={block_size} seqs={seqs}: {r}")
    results = os.environ.get("MLC_GPU_RESULTS")
    if results:  # the numbers travel back from the GPU host (see .ci/cuda/run_gpu.sh)
        with open(results, "a") as f:
            f.write(json.dumps({"test": "kernels", **case, **r}) + "\n")
    assert r["kv_max_abs_err"] == 0.0, r
    assert r["max_abs_ref"] > 0.0, r
    assert r["max_abs_err"] <= _TOL[dtype], r
    assert r["num_tokens"] == sum(q for q, _ in seqs)
    return r


# Contexts ending exactly at a block boundary, one past it, one short of it; prefill and decode mixed.
_EDGES = [(1, 16), (1, 17), (1, 15), (1, 32), (1, 33), (16, 16), (17, 17), (3, 48), (5, 49), (2, 64), (1, 65)]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_block_boundaries(core, dtype, head_dim):
    _check(core, dtype, 8, 2, head_dim, _EDGES, seed=head_dim)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_one_token_contexts(core, dtype, head_dim):
    r = _check(core, dtype, 4, 4, head_dim, [(1, 1), (1, 1), (1, 2)], seed=1)
    assert r["max_splits"] == 1 and r["num_partials"] == 0, r


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_4096_is_split(core, dtype, head_dim):
    # Batch-1 decode over 4096 cached tokens: 64 partitions per head (flash-decoding), merged by the last.
    r = _check(core, dtype, 32, 8, head_dim, [(1, 4096)], seed=2)
    assert r["max_splits"] == 32 and r["num_partials"] == 32 and r["num_work"] == 32, r


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_prefill_4096(core, dtype):
    r = _check(core, dtype, 8, 2, 64, [(4096, 4096)], seed=3)
    assert r["max_splits"] == 1 and r["num_partials"] == 0, r


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_mixed_prefill_and_decode(core, dtype, head_dim):
    # Decodes at several lengths, a fresh prefill, a chunk continuing a prompt, a short (split) chunk.
    seqs = [(1, 4096), (300, 300), (7, 520), (1, 17), (64, 1000), (1, 129), (1, 128), (200, 700), (1, 2000)]
    r = _check(core, dtype, 16, 4, head_dim, seqs, seed=4 + head_dim)
    assert r["max_splits"] == 32 and r["num_partials"] > 0, r


@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (12, 1), (32, 8)])
def test_gqa_ratios(core, heads, kv_heads):
    _check(core, "bf16", heads, kv_heads, 128, [(1, 300), (40, 40), (2, 1030)], seed=heads)


@pytest.mark.parametrize("head_dim", [32, 80, 96, 256])
def test_other_head_dims_use_the_generic_path(core, head_dim):
    _check(core, "f32", 4, 2, head_dim, [(1, 200), (20, 20), (3, 70)], seed=head_dim)
    _check(core, "bf16", 4, 2, head_dim, [(1, 200), (20, 20), (3, 70)], seed=head_dim)


@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_other_block_sizes(core, block_size):
    _check(core, "bf16", 8, 2, 128, [(1, 257), (33, 33), (4, 100)], block_size=block_size, seed=block_size)


# The tiled prefill kernel (bf16 / f16, head_dim 64 / 128) takes every sequence with more than 16 queries in
# the step: one partial tile (17), one exact tile (64), one past it (65), many tiles (1000).
_PROMPTS = [(17, 17), (64, 64), (65, 65), (1000, 1000)]
# Chunks continuing a cached context whose start is not block aligned (900, 734, 3983, 1), beside a
# decode, a short (per-token, split) chunk and a fresh prompt, all in one step.
_CHUNKS = [(100, 1000), (37, 53), (500, 1234), (17, 4000), (1, 777), (16, 300), (129, 129), (40, 41)]


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (16, 4)])
def test_tiled_prefill(core, dtype, head_dim, heads, kv_heads, monkeypatch):
    r = _check(core, dtype, heads, kv_heads, head_dim, _PROMPTS, seed=head_dim + heads)
    assert r["max_splits"] == 1 and r["num_partials"] == 0, r
    # The same case on the per-token kernel: also within tolerance, and not bit-identical (so the
    # default run above did take the tiled kernel).
    monkeypatch.setenv("MLC_TILED_PREFILL", "0")
    per_token = _check(core, dtype, heads, kv_heads, head_dim, _PROMPTS, seed=head_dim + heads)
    assert per_token["mean_abs_err"] != r["mean_abs_err"], (r, per_token)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 8, 32])
def test_tiled_chunks_continue_a_cached_context(core, dtype, head_dim, block_size):
    r = _check(core, dtype, 32, 8, head_dim, _CHUNKS, block_size=block_size, seed=block_size + head_dim)
    assert r["max_splits"] == 7 and r["num_partials"] > 0, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("n", [2048, 4096])
def test_tiled_long_prompts(core, dtype, n):
    _check(core, dtype, 8, 2, 128, [(n, n)], seed=n)


# Informational timings (recorded, never asserted): the Llama-3-8B attention shape (32 heads, 8 KV heads,
# head_dim 128) in bf16; mean of back-to-back attend calls, allocation of the output included.
@pytest.mark.parametrize("name,seqs,repeat", [
    ("decode_b1_ctx128", [(1, 128)], 100),
    ("decode_b1_ctx4096", [(1, 4096)], 100),
    ("decode_b16_ctx4096", [(1, 4096)] * 16, 50),
    ("decode_b64_ctx1024", [(1, 1024)] * 64, 50),
    ("prefill_512", [(512, 512)], 20),
    ("prefill_2048", [(2048, 2048)], 20),
    ("prefill_4096", [(4096, 4096)], 10),
    ("chunk_512_ctx4096", [(512, 4096)], 20),
    # The per-token kernel on the same prompts (the path before the tiled kernel, and its fallback).
    ("prefill_2048_per_token", [(2048, 2048)], 5),
    ("prefill_4096_per_token", [(4096, 4096)], 3),
])
def test_attention_timing(core, name, seqs, repeat, monkeypatch):
    if name.endswith("_per_token"):
        monkeypatch.setenv("MLC_TILED_PREFILL", "0")
    case = {"dtype": "bf16", "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "block_size": 16,
            "seqs": seqs, "seed": 5, "reference": False, "repeat": repeat}
    r = json.loads(core._attention_check("cuda:0", json.dumps(case)))
    kv_bytes = sum(ctx for _, ctx in seqs) * 8 * 128 * 2 * 2  # K and V of every context, read once
    causal_flops = sum(4 * 32 * 128 * sum(ctx - q + i + 1 for i in range(q)) for q, ctx in seqs)
    us = r["attend_us"]
    result = {"test": "attention_timing", "name": name, "attend_us": round(us, 2),
              "kv_gb_per_s": round(kv_bytes / us / 1e3, 1), "tflop_per_s": round(causal_flops / us / 1e6, 2),
              "num_work": r["num_work"], "max_splits": r["max_splits"]}
    print(result)
    results = os.environ.get("MLC_GPU_RESULTS")
    if results:
        with open(results, "a") as f:
            f.write(json.dumps(result) + "\n")
    assert us > 0


def test_malformed_calls_are_errors(core):
    cases = json.loads(core._attention_error_cases("cuda:0"))
    assert len(cases) >= 10
    for name, error in cases:
        print(f"{name}: {error}")
        assert error, f"{name}: the call succeeded"
