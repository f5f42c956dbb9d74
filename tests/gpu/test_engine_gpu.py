"""The whole engine on the GPU (run with `pytest -m gpu tests/gpu` on the GPU host, which has torch and
transformers): a tiny random Llama checkpoint (bf16, GQA, word-level tokenizer) made on the spot, greedy
generation of several batched prompts through `mlc_llm._core.Engine` on cuda:0, compared with

* HF transformers in bf16 on the same GPU (greedy `generate`, and teacher-forced on our tokens for top-1
  agreement and log-probabilities): bf16 kernels differ in summation order, so tokens may diverge
  after a near tie; top-1 agreement measures each step independently;
* our engine in float32 on the CPU, with our engine in float32 on cuda:0: the same greedy tokens.

Numbers are printed and, when MLC_GPU_RESULTS names a file, appended to it as JSON lines.
Skips become failures with MLC_REQUIRE_GPU=1, as in test_smoke.py.
"""

import json
import os
import random
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.gpu

_REQUIRE = os.environ.get("MLC_REQUIRE_GPU") == "1"
_NEW_TOKENS = 64
# Prompt lengths: short ones, one crossing several KV blocks, one long enough that every decode step
# runs the split-context (flash-decoding) path of the attention kernel.
_PROMPT_LENS = [5, 17, 33, 200, 1000]
_PARAMS = {"temperature": 0, "max_tokens": _NEW_TOKENS, "ignore_eos": True, "logprobs": True, "top_logprobs": 1}


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


def _record(name: str, result: dict) -> None:
    print(f"{name}: {json.dumps(result)}")
    path = os.environ.get("MLC_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **result}) + "\n")


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
    return c


@pytest.fixture(scope="module")
def torch_mod():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        _skip(f"torch / transformers are not importable: {e}")
    if not torch.cuda.is_available():
        _skip("torch sees no CUDA device")
    return torch


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, torch_mod):
    """A random 4-layer Llama (hidden 256, 8 heads, 2 KV heads, head_dim 32, vocab 1024) saved in bf16."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM

    torch = torch_mod
    cfg = LlamaConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=640, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.15,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(str(path))
    vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
    tok = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}) + "\n")
    return path


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(3, 1024) for _ in range(n)] for n in _PROMPT_LENS]


# The CPU reference of the f32 comparisons: f32 compute with an f32 KV cache ("auto" on the CPU is an f16
# cache, which the CUDA f32 engine does not have: its tokens would part from it at near ties).
CPU_F32 = {"dtype": "float32", "kv_cache_dtype": "float32"}


def _run_engine(core, path, device: str, extra: dict, prompts, max_tokens=None):
    """Greedy runs of `prompts`, all added at once; `max_tokens`: per-prompt index -> length (default
    _NEW_TOKENS), so that the batch shrinks as requests finish."""
    max_tokens = max_tokens or {}
    config = {"verbose": False, "max_total_sequence_length": 8192, "max_num_sequence": 16, **extra}
    eng = core.Engine(str(path), device, json.dumps(config))
    out = {f"r{i}": {"ids": [], "logprobs": []} for i in range(len(prompts))}
    t0 = time.perf_counter()
    try:
        for i, p in enumerate(prompts):
            eng.add_request(f"r{i}", p, json.dumps({**_PARAMS, "max_tokens": max_tokens.get(i, _NEW_TOKENS)}))
        done = set()
        deadline = time.time() + 300
        while len(done) < len(prompts):
            assert time.time() < deadline, f"engine on {device} did not finish: {sorted(done)}"
            for d in eng.poll(1000):
                r = out[d["request_id"]]
                assert d.get("error") is None, d
                r["ids"] += d["token_ids"]
                r["logprobs"] += [x["logprob"] for x in (d["logprobs"] or [])]
                if d["finish_reason"] is not None:
                    assert d["finish_reason"] == "length", d
                    done.add(d["request_id"])
        info = json.loads(eng.info())
        metrics = json.loads(eng.metrics())
    finally:
        eng.terminate()
    secs = time.perf_counter() - t0
    runs = [out[f"r{i}"] for i in range(len(prompts))]
    for i, r in enumerate(runs):
        assert len(r["ids"]) == len(r["logprobs"]) == max_tokens.get(i, _NEW_TOKENS), r
    return runs, {
        "device": info.get("device"),
        "seconds": round(secs, 3),
        "cuda_graph": info.get("cuda_graph"),
        "graph_replays": metrics.get("cuda_graph_replays", 0),
        "graphs_captured": metrics.get("cuda_graphs_captured", 0),
    }


def _hf_generate(torch, hf, prompt):
    ids = torch.tensor([prompt], device="cuda")
    gc = hf.generation_config
    gc.eos_token_id = None  # like ignore_eos: always 64 new tokens
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.max_new_tokens = _NEW_TOKENS
    gc.min_new_tokens = 0
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    return out[0, len(prompt):].tolist()


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def test_engine_bf16_cuda_matches_hf_transformers(core, torch_mod, tiny_llama, prompts):
    from transformers import LlamaForCausalLM

    torch = torch_mod
    ours, meta = _run_engine(core, tiny_llama, "cuda:0", {}, prompts)
    hf = LlamaForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.bfloat16).to("cuda").eval()
    # The same checkpoint in f32 calibrates bf16 noise: how far HF's own bf16 run is from it.
    hf32 = LlamaForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).to("cuda").eval()
    n = {"agree_hf": 0, "agree_f32": 0, "hf_agree_f32": 0, "total": 0, "identical": 0}
    prefix, lp_hf, lp_f32, lp_hf_f32 = [], [], [], []
    for prompt, r in zip(prompts, ours):
        hf_ids = _hf_generate(torch, hf, prompt)
        n["identical"] += hf_ids == r["ids"]
        prefix.append(_common_prefix(hf_ids, r["ids"]))
        # Teacher-forced on our tokens: each model's choice and log-probability at every step we took.
        full = torch.tensor([prompt + r["ids"]], device="cuda")
        steps = slice(len(prompt) - 1, len(prompt) - 1 + _NEW_TOKENS)
        with torch.no_grad():
            logits = hf(full).logits[0, steps].float()
            logits32 = hf32(full).logits[0, steps].float()
        chosen = torch.tensor(r["ids"], device="cuda")
        n["agree_hf"] += int((logits.argmax(-1) == chosen).sum())
        n["agree_f32"] += int((logits32.argmax(-1) == chosen).sum())
        n["hf_agree_f32"] += int((logits.argmax(-1) == logits32.argmax(-1)).sum())
        n["total"] += len(r["ids"])
        ours_lp = torch.tensor(r["logprobs"], device="cuda")
        hf_lp = torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None])[:, 0]
        f32_lp = torch.log_softmax(logits32, dim=-1).gather(1, chosen[:, None])[:, 0]
        lp_hf += (ours_lp - hf_lp).abs().tolist()
        lp_f32 += (ours_lp - f32_lp).abs().tolist()
        lp_hf_f32 += (hf_lp - f32_lp).abs().tolist()
    mean = lambda xs: round(sum(xs) / len(xs), 5)  # noqa: E731
    result = {
        **meta,
        "prompts": len(prompts),
        "prompt_lens": _PROMPT_LENS,
        "top1_agreement": round(n["agree_hf"] / n["total"], 4),
        "sequences_identical": n["identical"],
        "common_prefix_lens": prefix,
        "logprob_max_abs_diff": round(max(lp_hf), 4),
        "logprob_mean_abs_diff": mean(lp_hf),
        # Calibration against HF in f32 (teacher-forced on our tokens).
        "ours_bf16_top1_vs_hf_f32": round(n["agree_f32"] / n["total"], 4),
        "hf_bf16_top1_vs_hf_f32": round(n["hf_agree_f32"] / n["total"], 4),
        "ours_bf16_logprob_mean_abs_diff_vs_hf_f32": mean(lp_f32),
        "hf_bf16_logprob_mean_abs_diff_vs_hf_f32": mean(lp_hf_f32),
    }
    _record("engine_bf16_vs_hf_bf16", result)
    assert meta["device"].startswith("cuda"), meta
    assert result["top1_agreement"] >= 0.85, result
    assert result["logprob_mean_abs_diff"] < 0.1, result
    # Our bf16 path is no noisier than HF's own bf16 run (with a margin for a single sample).
    assert result["ours_bf16_top1_vs_hf_f32"] >= result["hf_bf16_top1_vs_hf_f32"] - 0.05, result
    assert result["ours_bf16_logprob_mean_abs_diff_vs_hf_f32"] <= 2 * result["hf_bf16_logprob_mean_abs_diff_vs_hf_f32"] + 0.02, result


def test_engine_f32_cuda_matches_cpu(core, tiny_llama, prompts):
    gpu, gmeta = _run_engine(core, tiny_llama, "cuda:0", {"dtype": "float32"}, prompts)
    cpu, cmeta = _run_engine(core, tiny_llama, "cpu", CPU_F32, prompts)
    same = [g["ids"] == c["ids"] for g, c in zip(gpu, cpu)]
    lp = [abs(a - b) for g, c in zip(gpu, cpu) for a, b in zip(g["logprobs"], c["logprobs"])]
    result = {
        "cuda": gmeta,
        "cpu": cmeta,
        "sequences_identical": sum(same),
        "prompts": len(prompts),
        "common_prefix_lens": [_common_prefix(g["ids"], c["ids"]) for g, c in zip(gpu, cpu)],
        "logprob_max_abs_diff": max(lp),
    }
    _record("engine_f32_cuda_vs_cpu", result)
    assert gmeta["device"].startswith("cuda") and cmeta["device"] == "cpu", result
    assert all(same), result
    assert result["logprob_max_abs_diff"] < 1e-3, result


def test_cuda_graph_decode_matches_eager_decode(core, tiny_llama):
    """Decode steps replayed through CUDA graphs give the tokens and log-probabilities of eager steps (f32,
    so that only summation order could differ), while the batch shrinks through several capture sizes
    (12 requests finishing one after another: buckets 16, 8, 4, 2, 1) and contexts cross split sizes."""
    rng = random.Random(7)
    prompts = [[rng.randrange(3, 1024) for _ in range(rng.choice([3, 20, 130, 300]))] for _ in range(12)]
    lengths = {i: 4 + 5 * i for i in range(12)}
    on, on_meta = _run_engine(core, tiny_llama, "cuda:0", {"dtype": "float32"}, prompts, lengths)
    off, off_meta = _run_engine(core, tiny_llama, "cuda:0", {"dtype": "float32", "cuda_graph": False}, prompts, lengths)
    same = [a["ids"] == b["ids"] for a, b in zip(on, off)]
    lp = [abs(x - y) for a, b in zip(on, off) for x, y in zip(a["logprobs"], b["logprobs"])]
    result = {"graphs": on_meta, "eager": off_meta, "sequences_identical": sum(same), "prompts": len(prompts),
              "logprob_max_abs_diff": max(lp)}
    _record("cuda_graph_vs_eager_f32", result)
    assert on_meta["cuda_graph"] is True and off_meta["cuda_graph"] is False, result
    # One replay per decode step (the longest request decodes 58 tokens after its prefill step).
    assert on_meta["graph_replays"] >= 50 and on_meta["graphs_captured"] >= 5, result
    assert off_meta["graph_replays"] == 0, result
    assert all(same), result
    assert result["logprob_max_abs_diff"] < 1e-4, result


def test_64_concurrent_requests_with_aborts_match_one_at_a_time(core, tiny_llama):
    """64 requests at once on cuda:0 (f32: only summation order may differ between batch shapes), 16 aborted
    while running: every other request's greedy tokens equal the same request run alone, and afterwards every
    KV block is free. Half the requests ask for logprobs, so both the device argmax and the device sampler run
    (a step with any logprobs request samples on the device)."""
    rng = random.Random(11)
    n = 64
    prompts = [[rng.randrange(3, 1024) for _ in range(rng.randrange(1, 300))] for _ in range(n)]
    lengths = [rng.randrange(8, 48) for _ in range(n)]
    params = [{"temperature": 0, "max_tokens": lengths[i], "ignore_eos": True, **({"logprobs": True} if i % 2 else {})}
              for i in range(n)]
    aborted = set(rng.sample(range(n), 16))
    config = {"verbose": False, "dtype": "float32", "max_total_sequence_length": 65536, "max_num_sequence": n}
    eng = core.Engine(str(tiny_llama), "cuda:0", json.dumps(config))
    out = {i: [] for i in range(n)}
    reasons = {}
    try:
        for i in range(n):
            eng.add_request(f"r{i}", prompts[i], json.dumps(params[i]))
        polls, deadline = 0, time.time() + 300
        while len(reasons) < n:
            assert time.time() < deadline, sorted(reasons)
            for d in eng.poll(1000):
                i = int(d["request_id"][1:])
                assert d.get("error") is None, d
                out[i] += d["token_ids"]
                if d["finish_reason"] is not None:
                    reasons[i] = d["finish_reason"]
            polls += 1
            if polls == 3:  # mid-run: most requests are decoding
                for i in aborted:
                    eng.abort(f"r{i}")
        metrics = json.loads(eng.metrics())
    finally:
        eng.terminate()
    single = {}
    eng = core.Engine(str(tiny_llama), "cuda:0", json.dumps({**config, "max_num_sequence": 1}))
    try:
        for i in range(n):
            if i in aborted and reasons[i] == "abort":
                continue
            eng.add_request(f"s{i}", prompts[i], json.dumps(params[i]))
            ids = []
            while True:
                ds = eng.poll(1000)
                for d in ds:
                    ids += d["token_ids"]
                if any(d["finish_reason"] is not None for d in ds):
                    break
            single[i] = ids
    finally:
        eng.terminate()
    same = [i for i in single if single[i] == out[i]]
    result = {"requests": n, "aborted": sum(r == "abort" for r in reasons.values()), "compared": len(single),
              "identical": len(same), "max_batch": metrics["max_batch_size_seen"],
              "free_blocks": metrics["num_free_blocks"], "total_blocks": metrics["num_total_blocks"],
              "graph_replays": metrics.get("cuda_graph_replays")}
    _record("concurrent_64_with_aborts_vs_single", result)
    assert result["aborted"] >= 1 and result["max_batch"] > 32, result
    assert all(reasons[i] == "length" for i in single), result
    assert len(same) == len(single), [i for i in single if i not in same]
    assert result["free_blocks"] == result["total_blocks"], result
