"""The FP8 e4m3 KV cache through the whole engine on the GPU (run with `pytest -m gpu tests/gpu` on the GPU host,
which has torch and transformers): a tiny random Llama (test_arch_parity's llama shape and weight scheme: 3
layers, 4 heads, 2 KV heads, head_dim 64, saved in bf16) run by `mlc_llm._core.Engine` on cuda:0 in bf16,
once with the default KV cache (bf16) and once with `kv_cache_dtype="fp8_e4m3"`:

* accuracy: several prompts (20-300 tokens) decode 32 tokens greedily with the bf16 cache; the fp8 engine is
  teacher-forced on those tokens (greedy, with top-20 logprobs: where its choice differs from the bf16 run's,
  the bf16 token's logprob is read from its top 20 and the request restarts from prompt + the bf16 tokens so
  far), so both logprobs of every step are of the same token after the same sequence. Mean |delta logprob|
  <= 0.03 nats (issue 13's bound for the FP8 KV cache alone); the max is reported. The same measurement by
  the CPU engine in f32 (f32 cache against fp8 cache) gives what e4m3 itself costs on this model: the CUDA
  path must stay within 1.5x of it + 0.02 (on the CPU, random fixture Llamas and SmolLM2 measure 0.11-0.16
  nats: 0.03 may be beyond e4m3's 3 mantissa bits, see README "kv_cache_dtype");
* capacity: with the same memory budget (mode "server", an explicit gpu_memory_utilization small enough that
  memory, not the mode's cap, sizes the cache) the fp8 engine gets at least 1.8x the KV blocks of the bf16 one
  (2x the elements less the row scales: 4 bytes per 64 values), and reports kv_cache_dtype float8_e4m3.

Numbers are printed and, when MLC_GPU_RESULTS names a file, appended to it as JSON lines.
Skips become failures with MLC_REQUIRE_GPU=1, as in the other GPU tests.
"""

import json
import random
import time

import pytest
from test_arch_parity import ARCHS, COMMON, VOCAB, _init_weights, _write_tokenizer  # the random-model scheme
from test_engine_gpu import _record, core, torch_mod  # noqa: F401 - shared GPU-test helpers and fixtures

pytestmark = pytest.mark.gpu

_PROMPT_LENS = [20, 57, 130, 211, 300]
_NEW_TOKENS = 32
_TOP = 20  # top logprobs per step: where the bf16 token is found after a divergence
_MAX_MEAN_DELTA = 0.03  # nats, issue 13
_MIN_BLOCK_RATIO = 1.8
# The final norm's scale (test_arch_parity uses 24, which makes nearly every greedy token certain and hides
# any error of the cache): 4 spreads the logits over a few nats (the mean chosen logprob is reported).
_FINAL_NORM_SCALE = 4.0
_MAX_POSITIONS = 1 << 17  # server mode caps the cache at 128 x this: far above the memory budget below
_KV_BUDGET_BYTES = 4 << 30  # gpu_memory_utilization x total memory: about 3 GiB left for the KV cache


@pytest.fixture(scope="module")
def llama(tmp_path_factory, torch_mod):
    """A random bf16 Llama checkpoint (test_arch_parity's llama, longer max_position_embeddings)."""
    import transformers

    torch = torch_mod
    cfg_name, cls_name, overrides, gemma, qk_gain, _ = ARCHS["llama"]
    cfg = getattr(transformers, cfg_name)(**{**COMMON, **overrides, "max_position_embeddings": _MAX_POSITIONS})
    assert cfg.head_dim == 64, cfg
    torch.manual_seed(13)
    model = getattr(transformers, cls_name)(cfg).eval()
    _init_weights(model, 13, gemma, qk_gain, _FINAL_NORM_SCALE, torch)
    path = tmp_path_factory.mktemp("fp8_kv_llama")
    model.to(torch.bfloat16).save_pretrained(str(path))
    gc = path / "generation_config.json"
    if gc.exists():
        gc.unlink()
    _write_tokenizer(path, VOCAB)
    return path


def _run(eng, requests: dict) -> dict:
    """Greedy runs of `requests` (id -> (prompt, max_tokens)), all added at once: id -> list of (token id,
    logprob, token text, {token text: logprob} of the top _TOP) (logprobs name tokens by text)."""
    params = {"temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": _TOP}
    out = {rid: [] for rid in requests}
    for rid, (prompt, n) in requests.items():
        eng.add_request(rid, prompt, json.dumps({**params, "max_tokens": n}))
    done, deadline = set(), time.time() + 300
    while len(done) < len(requests):
        assert time.time() < deadline, f"the engine did not finish: {sorted(done)}"
        for d in eng.poll(1000):
            assert d.get("error") is None, d
            for tok, lp in zip(d["token_ids"], d["logprobs"] or []):
                tops = {t["token"]: t["logprob"] for t in lp["top_logprobs"]}
                out[d["request_id"]].append((tok, lp["logprob"], lp["token"], tops))
            if d["finish_reason"] is not None:
                assert d["finish_reason"] == "length", d
                done.add(d["request_id"])
    for rid, (_, n) in requests.items():
        assert len(out[rid]) == n, (rid, len(out[rid]), n)
    return out


def _teacher_forced(eng, prompts, targets, texts):
    """Per prompt, the engine's logprob of each target token (ids `targets`, texts `texts`) after prompt + the
    targets before it, and the number of restarts (steps where its own greedy choice differed)."""
    lps = [[] for _ in prompts]
    restarts = 0
    while True:
        todo = {f"p{i}_{len(lps[i])}": (prompts[i] + targets[i][: len(lps[i])], len(targets[i]) - len(lps[i]))
                for i in range(len(prompts)) if len(lps[i]) < len(targets[i])}
        if not todo:
            return lps, restarts
        for rid, steps in _run(eng, todo).items():
            i = int(rid[1:].split("_")[0])
            for tok, lp, _, tops in steps:
                j = len(lps[i])
                if tok == targets[i][j]:
                    lps[i].append(lp)
                    continue
                other = tops.get(texts[i][j])
                assert other is not None, f"prompt {i} step {j}: {texts[i][j]!r} not in the top {_TOP} {tops}"
                lps[i].append(other)
                restarts += 1
                break


def _measure(core, path, device: str, dtype: str, prompts, ref_kv: str) -> dict:
    """Greedy runs of `prompts` with the `ref_kv` KV cache, then the fp8 cache teacher-forced on their tokens:
    |delta logprob| per step, restarts and both engines' info."""
    def engine(extra):
        config = {"verbose": False, "dtype": dtype, "max_total_sequence_length": 8192, "max_num_sequence": 16, **extra}
        return core.Engine(str(path), device, json.dumps(config))

    eng = engine({"kv_cache_dtype": ref_kv})
    try:
        info = json.loads(eng.info())
        ref = _run(eng, {f"p{i}": (p, _NEW_TOKENS) for i, p in enumerate(prompts)})
    finally:
        eng.terminate()
    steps = [ref[f"p{i}"] for i in range(len(prompts))]
    targets = [[tok for tok, _, _, _ in s] for s in steps]
    texts = [[text for _, _, text, _ in s] for s in steps]
    ref_lps = [[lp for _, lp, _, _ in s] for s in steps]
    eng = engine({"kv_cache_dtype": "fp8_e4m3"})
    try:
        fp8_info = json.loads(eng.info())
        fp8_lps, restarts = _teacher_forced(eng, prompts, targets, texts)
    finally:
        eng.terminate()
    deltas = [abs(a - b) for r, f in zip(ref_lps, fp8_lps) for a, b in zip(r, f)]
    assert len(deltas) == len(prompts) * _NEW_TOKENS, (len(deltas), restarts)
    return {
        "device": fp8_info.get("device"),
        "kv_cache_dtype": [info.get("kv_cache_dtype"), fp8_info.get("kv_cache_dtype")],
        "restarts": restarts,
        "mean_ref_logprob": round(sum(map(sum, ref_lps)) / len(deltas), 4),
        "mean_abs_delta_logprob": round(sum(deltas) / len(deltas), 5),
        "max_abs_delta_logprob": round(max(deltas), 4),
    }


@pytest.fixture(scope="module")
def fp8_vs_bf16(core, llama):
    rng = random.Random(13)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in _PROMPT_LENS]
    gpu = _measure(core, llama, "cuda:0", "bfloat16", prompts, "auto")
    # What e4m3 itself costs on this model: the CPU engine in f32, f32 cache (asked for: the CPU's default
    # cache is f16) against fp8 cache (its read path is checked exactly against the rounded values in
    # attention/cpu.rs). The CUDA path should cost about as much: more means the kernels lose accuracy of
    # their own.
    cpu = _measure(core, llama, "cpu", "float32", prompts, "float32")
    result = {"prompt_lens": _PROMPT_LENS, "new_tokens": _NEW_TOKENS, "steps": len(prompts) * _NEW_TOKENS, **gpu, "cpu_f32": cpu}
    _record("fp8_kv_cache_vs_bf16_cache", result)
    return gpu, cpu, result


def test_fp8_kv_cache_logprobs_cost_what_e4m3_costs_on_the_cpu(fp8_vs_bf16):
    gpu, cpu, result = fp8_vs_bf16
    assert gpu["device"].startswith("cuda"), result
    assert gpu["kv_cache_dtype"] == ["bfloat16", "float8_e4m3"], result
    assert cpu["kv_cache_dtype"] == ["float32", "float8_e4m3"], result
    assert gpu["mean_abs_delta_logprob"] <= 1.5 * cpu["mean_abs_delta_logprob"] + 0.02, result


# On the H100 (2026-12-07) the CUDA cache cost 0.093 nats per token and the CPU's f32 engine 0.098 (f16 cache
# against fp8): e4m3's 3 mantissa bits with a scale per row cost about 0.1 here, beyond issue 13's 0.03
# whatever the kernels do. Strict: a cache format that meets the bound turns this into a failure to update.
@pytest.mark.xfail(strict=True, reason="e4m3 with per-row scales costs ~0.09-0.1 nats per token on this model, "
                   "on the CPU in f32 as on CUDA; issue 13's bound is 0.03")
def test_fp8_kv_cache_meets_the_issue_bound(fp8_vs_bf16):
    gpu, _, result = fp8_vs_bf16
    assert gpu["mean_abs_delta_logprob"] <= _MAX_MEAN_DELTA, result


def test_fp8_kv_cache_holds_more_blocks_in_the_same_memory(core, llama, torch_mod):
    total = torch_mod.cuda.get_device_properties(0).total_memory
    util = round(_KV_BUDGET_BYTES / total, 6)
    sizes = {}
    for name, extra in [("bf16", {}), ("fp8", {"kv_cache_dtype": "fp8_e4m3"})]:
        config = {"verbose": False, "dtype": "bfloat16", "mode": "server", "gpu_memory_utilization": util, **extra}
        eng = core.Engine(str(llama), "cuda:0", json.dumps(config))
        try:
            sizes[name] = json.loads(eng.info())
        finally:
            eng.terminate()
    b, f = sizes["bf16"], sizes["fp8"]
    result = {
        "device": f.get("device"),
        "gpu_memory_utilization": util,
        "kv_cache_dtype": [b.get("kv_cache_dtype"), f.get("kv_cache_dtype")],
        "num_kv_blocks": [b["num_kv_blocks"], f["num_kv_blocks"]],
        "max_total_sequence_length": [b["max_total_sequence_length"], f["max_total_sequence_length"]],
        "ratio": round(f["num_kv_blocks"] / b["num_kv_blocks"], 4),
    }
    _record("fp8_kv_cache_blocks_vs_bf16", result)
    assert (b["kv_cache_dtype"], f["kv_cache_dtype"]) == ("bfloat16", "float8_e4m3"), result
    # Memory, not server mode's cap (128 x max_position_embeddings tokens), sized both caches.
    assert f["max_total_sequence_length"] < 128 * _MAX_POSITIONS, result
    assert result["ratio"] >= _MIN_BLOCK_RATIO, result
