"""Our CUDA paged-attention and KV-write kernels against the CPU reference (run with `pytest -m gpu tests/gpu`).

Each case builds one random step on the Rust side (`mlc_llm._core._attention_check`): scattered block
tables, random cached context, new K/V written through the KV-write kernel, then attention of every query
token over positions 0..=pos of its own sequence (or the last `window` of them, with scores soft-capped
when the case has a `softcap`; with per-head sinks when it has `sinks`). The CPU reference runs in f32 on the same values rounded
to the device dtype, so the only differences are the kernels' f32 arithmetic order and the final rounding.
With `kv_dtype="fp8"` both caches are FP8 e4m3 with one f32 scale per row (token and KV head): the random
context and the new rows are written through `PagedKvCache::write` on both sides (the device quantizes rows
of the q dtype, the reference the same values in f32), the caches must then hold identical e4m3 values and
scales (`kv_max_abs_err` 0), and attention reads the same e4m3 values on both sides: the q dtype's tolerance.
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


def _check(core, dtype, heads, kv_heads, head_dim, seqs, block_size=16, seed=0, **layer):
    """`layer`: optional `window`, `softcap`, `scale`, `placeholders` (block-table entries before every
    query's window point at a block of NaNs), `fixed_bucket` (a CUDA-graph decode plan), `sinks`,
    `kv_dtype` ("fp8": an e4m3 cache read with q / output in `dtype`)."""
    case = {"dtype": dtype, "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
            "block_size": block_size, "seqs": seqs, "seed": seed, **layer}
    r = json.loads(core._attention_check("cuda:0", json.dumps(case)))
    print(f"{dtype} h={heads}/{kv_heads} d={head_dim} bs={block_size} {layer} seqs={seqs}: {r}")
    results = os.environ.get("MLC_GPU_RESULTS")
    if results:  # the numbers travel back from the GPU host (see .ci/cuda/run_gpu.sh)
        with open(results, "a") as f:
            f.write(json.dumps({"test": "kernels", **case, **r}) + "\n")
    assert r["kv_max_abs_err"] == 0.0, r
    assert r["max_abs_ref"] > 0.0, r
    assert r["max_abs_err"] <= _TOL[dtype], r
    assert r["nonfinite"] == 0, r
    if r["plain_max_abs_err"] is not None:  # the same step as a plain causal layer
        assert r["plain_max_abs_err"] <= _TOL[dtype], r
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
    # Batch-1 decode over 4096 cached tokens: 64 partitions of 64 keys per head (flash-decoding), merged by
    # the last.
    r = _check(core, dtype, 32, 8, head_dim, [(1, 4096)], seed=2)
    assert r["max_splits"] == 64 and r["num_partials"] == 64 and r["num_work"] == 64, r


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
    assert r["max_splits"] == 64 and r["num_partials"] > 0, r


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
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
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
    assert r["max_splits"] == 13 and r["num_partials"] > 0, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("n", [2048, 4096])
def test_tiled_long_prompts(core, dtype, n):
    _check(core, dtype, 8, 2, 128, [(n, n)], seed=n)


# Sliding windows and soft-capping (Gemma 2 / 3, Mistral; Phi-3 for head_dim 96). The windowed cases point
# every block-table entry before the window at a block of NaNs: one read of it, even of a masked key,
# makes outputs NaN. Window 5 is shorter than a block, 100 and 37 are not multiples of it.
_LAYERS = [
    {"window": 5, "placeholders": True},
    {"window": 100, "placeholders": True},
    {"softcap": 2.0},
    {"softcap": 50.0, "window": 37, "placeholders": True},
    {"softcap": 5.0, "window": 100},  # no placeholders: also checks the plain layer on the same step
]
_LAYER_SEQS = _EDGES + [(1, 300), (40, 240), (7, 130), (20, 20)]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("layer", range(len(_LAYERS)))
def test_windows_and_caps(core, dtype, head_dim, layer):
    r = _check(core, dtype, 8, 2, head_dim, _LAYER_SEQS, seed=layer + head_dim, **_LAYERS[layer])
    if _LAYERS[layer].get("placeholders"):
        assert r["placeholders"] > 0, r


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("window", [100, 4096])
def test_windowed_decode_skips_whole_partitions(core, dtype, head_dim, window):
    # Long decodes split into up to 64 partitions of the whole context; a sliding layer walks only the
    # partitions from its window start (the rest return at once), and reads nothing before the window.
    seqs = [(1, 8192), (1, 4097), (1, 3000), (1, 700), (1, 100), (3, 2500)]
    r = _check(core, dtype, 16, 8, head_dim, seqs, seed=window, window=window, softcap=50.0, placeholders=True)
    assert r["max_splits"] == 64 and r["num_partials"] > 0 and r["placeholders"] > 0, r
    # The same step as alternating layers see it: also checked as a plain causal layer.
    _check(core, dtype, 16, 8, head_dim, seqs, seed=window, window=window, softcap=50.0)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("layer", [{"window": 128}, {"window": 1000, "softcap": 30.0}, {"window": 47}, {"softcap": 20.0}])
def test_tiled_prefill_with_windows(core, dtype, head_dim, layer, monkeypatch):
    # Chunks crossing the window (key tiles wholly before a block's first window are never loaded),
    # a window shorter than one query tile (47), a decode and a short chunk beside them.
    seqs = [(100, 1000), (300, 300), (200, 1234), (17, 4000), (1, 777), (129, 129), (65, 2000), (16, 300)]
    placeholders = "window" in layer
    r = _check(core, dtype, 16, 4, head_dim, seqs, seed=head_dim, placeholders=placeholders, **layer)
    if placeholders:
        assert r["placeholders"] > 0, r
    if layer != {"window": 1000, "softcap": 30.0}:
        return
    # The same case on the per-token kernel: also within tolerance, and not bit-identical (so the
    # default run above did take the tiled kernel).
    monkeypatch.setenv("MLC_TILED_PREFILL", "0")
    per_token = _check(core, dtype, 16, 4, head_dim, seqs, seed=head_dim, placeholders=placeholders, **layer)
    assert per_token["mean_abs_err"] != r["mean_abs_err"], (r, per_token)


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [96, 128, 256])
@pytest.mark.parametrize("layer", [{}, {"window": 512, "softcap": 50.0, "placeholders": True}, {"window": 9}])
def test_fixed_decode_plan(core, dtype, head_dim, layer):
    # The CUDA-graph layout: 3 decodes padded to 8 rows, 128 partition rows per token (5000 keys), the
    # rows past a token's own (or its window's) partitions returning at once.
    r = _check(core, dtype, 8, 4, head_dim, [(1, 5000), (1, 300), (1, 17)], seed=head_dim, fixed_bucket=8, **layer)
    assert r["max_splits"] == 64 and r["num_work"] == 8 * 64, r


# gpt-oss's attention sinks (`sinks`: size a, head h's sink a * [2, -1, 0.5, 0.1][h % 4] + noise: with 4,
# above every score of a row, below all of them, among them; with 15, a sink that leaves the keys almost
# nothing): its shape (head_dim 64, GQA, layers alternating a window of 128 and full attention), decodes
# split into partitions (the sink enters once, after the merge), unsplit ones, prefill tiles and short
# chunks in one step, and the CUDA-graph decode layout.
_SINK_SEQS = [(1, 4000), (1, 300), (1, 40), (200, 1234), (300, 300), (16, 300), (129, 129)]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layer", [{}, {"window": 128, "placeholders": True}, {"window": 47, "softcap": 20.0}])
@pytest.mark.parametrize("sinks", [4.0, 15.0])
def test_sinks(core, dtype, head_dim, layer, sinks):
    r = _check(core, dtype, 16, 4, head_dim, _SINK_SEQS, seed=head_dim, sinks=sinks, **layer)
    assert r["max_splits"] > 1, r


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("layer", [{}, {"window": 128, "placeholders": True}])
def test_sinks_fixed_decode_plan(core, dtype, layer):
    r = _check(core, dtype, 8, 2, 64, [(1, 5000), (1, 300), (1, 17)], seed=9, fixed_bucket=8, sinks=4.0, **layer)
    assert r["max_splits"] == 64, r


# FP8 e4m3 caches (kv_cache_dtype "fp8_e4m3"): the cases above that matter, with q / output in bf16 or f16.
# The device and the reference hold the same e4m3 values and scales, so the q dtype's tolerance applies.
_FP8 = {"kv_dtype": "fp8"}


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_block_boundaries(core, dtype, head_dim):
    _check(core, dtype, 8, 2, head_dim, _EDGES, seed=head_dim, **_FP8)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_decode_short_and_4096_split(core, dtype, head_dim):
    r = _check(core, dtype, 4, 4, head_dim, [(1, 1), (1, 1), (1, 2), (1, 40)], seed=1, **_FP8)
    assert r["max_splits"] == 1 and r["num_partials"] == 0, r
    r = _check(core, dtype, 32, 8, head_dim, [(1, 4096)], seed=2, **_FP8)
    assert r["max_splits"] == 64 and r["num_partials"] == 64 and r["num_work"] == 64, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_mixed_prefill_and_decode(core, dtype, head_dim):
    seqs = [(1, 4096), (300, 300), (7, 520), (1, 17), (64, 1000), (1, 129), (1, 128), (200, 700), (1, 2000)]
    r = _check(core, dtype, 16, 4, head_dim, seqs, seed=4 + head_dim, **_FP8)
    assert r["max_splits"] == 64 and r["num_partials"] > 0, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_prefill_tiles_and_chunks(core, dtype, head_dim):
    # The tiled prefill kernel's prompts, then chunks continuing unaligned cached contexts beside decodes.
    r = _check(core, dtype, 16, 4, head_dim, _PROMPTS, seed=head_dim, **_FP8)
    assert r["max_splits"] == 1 and r["num_partials"] == 0, r
    _check(core, dtype, 32, 8, head_dim, _CHUNKS, seed=head_dim + 1, **_FP8)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (32, 8), (16, 2), (12, 1)])  # GQA groups of 1, 4, 8, 12
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_gqa_ratios(core, dtype, heads, kv_heads, head_dim):
    _check(core, dtype, heads, kv_heads, head_dim, [(1, 300), (40, 40), (2, 1030), (1, 4096)], seed=heads, **_FP8)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("layer", range(len(_LAYERS)))
def test_fp8_windows_and_caps(core, dtype, head_dim, layer):
    # Placeholder blocks of an e4m3 cache hold NaN values and NaN row scales: a read of one shows.
    r = _check(core, dtype, 8, 2, head_dim, _LAYER_SEQS, seed=layer + head_dim, **_LAYERS[layer], **_FP8)
    if _LAYERS[layer].get("placeholders"):
        assert r["placeholders"] > 0, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [128, 256])
def test_fp8_windowed_decode_skips_whole_partitions(core, dtype, head_dim):
    seqs = [(1, 8192), (1, 4097), (1, 3000), (1, 700), (1, 100), (3, 2500)]
    r = _check(core, dtype, 16, 8, head_dim, seqs, seed=7, window=100, softcap=50.0, placeholders=True, **_FP8)
    assert r["max_splits"] == 64 and r["num_partials"] > 0 and r["placeholders"] > 0, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("layer", [{}, {"window": 128, "placeholders": True}, {"window": 47, "softcap": 20.0}])
def test_fp8_sinks(core, dtype, head_dim, layer):
    r = _check(core, dtype, 16, 4, head_dim, _SINK_SEQS, seed=head_dim, sinks=4.0, **layer, **_FP8)
    assert r["max_splits"] > 1, r


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("layer", [{}, {"window": 512, "softcap": 50.0, "placeholders": True}, {"sinks": 4.0}])
def test_fp8_fixed_decode_plan(core, dtype, head_dim, layer):
    r = _check(core, dtype, 8, 4, head_dim, [(1, 5000), (1, 300), (1, 17)], seed=head_dim, fixed_bucket=8, **layer, **_FP8)
    assert r["max_splits"] == 64 and r["num_work"] == 8 * 64, r


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
    # The same decodes over an FP8 e4m3 cache (1 byte per element, a 4-byte scale per row).
    ("decode_b16_ctx4096_fp8", [(1, 4096)] * 16, 50),
    ("decode_b64_ctx1024_fp8", [(1, 1024)] * 64, 50),
    ("prefill_2048_fp8", [(2048, 2048)], 20),
    ("chunk_512_ctx4096_fp8", [(512, 4096)], 20),
])
def test_attention_timing(core, name, seqs, repeat, monkeypatch):
    _time(core, name, seqs, repeat, monkeypatch)


# The Gemma-2-9B attention shape (16 heads, 8 KV heads, head_dim 256, window 4096, cap 50): a full and a
# sliding layer over the same steps, and the tiled kernel at head_dim 256 against the per-token one.
_GEMMA = {"heads": 16, "kv_heads": 8, "head_dim": 256}


@pytest.mark.parametrize("name,seqs,repeat,layer", [
    ("gemma_decode_b1_ctx8192_full", [(1, 8192)], 100, {"softcap": 50.0}),
    ("gemma_decode_b1_ctx8192_window4096", [(1, 8192)], 100, {"softcap": 50.0, "window": 4096}),
    ("gemma_decode_b16_ctx8192_window4096", [(1, 8192)] * 16, 30, {"softcap": 50.0, "window": 4096}),
    ("gemma_prefill_2048", [(2048, 2048)], 10, {"softcap": 50.0}),
    ("gemma_prefill_2048_per_token", [(2048, 2048)], 3, {"softcap": 50.0}),
    ("gemma_prefill_8192_window4096", [(8192, 8192)], 3, {"softcap": 50.0, "window": 4096}),
    ("gemma_prefill_8192_full", [(8192, 8192)], 3, {"softcap": 50.0}),
])
def test_attention_timing_gemma(core, name, seqs, repeat, layer, monkeypatch):
    _time(core, name, seqs, repeat, monkeypatch, **_GEMMA, **layer)


def _time(core, name, seqs, repeat, monkeypatch, heads=32, kv_heads=8, head_dim=128, **layer):
    if name.endswith("_per_token"):
        monkeypatch.setenv("MLC_TILED_PREFILL", "0")
    fp8 = name.endswith("_fp8")
    if fp8:
        layer = {**layer, **_FP8}
    case = {"dtype": "bf16", "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim, "block_size": 16,
            "seqs": seqs, "seed": 5, "reference": False, "repeat": repeat, **layer}
    r = json.loads(core._attention_check("cuda:0", json.dumps(case)))
    w = layer.get("window", 1 << 62)
    keys = lambda pos: min(pos + 1, w)  # noqa: E731 - keys a query at `pos` attends
    row_bytes = head_dim + 4 if fp8 else head_dim * 2  # e4m3 values and the row's f32 scale, or bf16 values
    kv_bytes = sum(min(ctx, w + q - 1) for q, ctx in seqs) * kv_heads * row_bytes * 2  # K and V read once
    causal_flops = sum(4 * heads * head_dim * sum(keys(ctx - q + i) for i in range(q)) for q, ctx in seqs)
    us = r["attend_us"]
    result = {"test": "attention_timing", "name": name, "kv_dtype": "fp8" if fp8 else "bf16", "attend_us": round(us, 2),
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
