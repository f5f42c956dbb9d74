"""The fused mixture of experts on CUDA (rust/core/src/model/layers/moe_cuda.rs; kernels moe.cu, moe_gemm.cu)
on the GPU host (`pytest -m gpu tests/gpu/test_moe_gpu.py`), with tiny random models made here by transformers:

* fused vs reference, per dtype / quantization (bf16, f16, q4f16_1 converted by `mlc_llm convert_weight`)
  and per expert load: a random router (prefill: 200 tokens spread over the experts in partial tiles; decode:
  one token, most experts empty) and a zero router (every token ties on every expert, so each takes experts
  0..k-1: all tokens on one expert for top-1, every other expert empty). Our greedy logits rows on cuda:0
  (fused) against the same model on the CPU in f32 (moe.rs's host-routed reference path, checked against
  transformers in rust/core/tests/hf_parity.rs) and against cuda:0 with MLC_MOE_FUSED=0 (the host-routed
  path on the same device and dtype, in a subprocess: the switch is read once per process). Rows are
  compared while both runs chose the same tokens (the prefill row always); the bounds apply to the median
  row (a near-tie in a router may send one token elsewhere in one run and move its row alone). The fused
  path must be no further from the f32 reference than the host-routed path is (x 1.5 + a dtype floor) and
  within the dtype's bound of the host-routed path.
* the per-slot decode GEMVs (MLC_MOE_GEMV_MAX_SLOTS, off by default) against the grouped GEMM on the same
  device and dtype, and both against the CPU's f32 reference (mixtral and the qwen3_moe models, every dtype).
* engine bf16 (CUDA graphs on: replays > 0 shows the fused path ran, as host-routed layers cannot be
  captured) vs HF transformers bf16 teacher-forced on our tokens: top-1 agreement >= 0.95 on a tiny
  Qwen3-MoE and Mixtral (gpt-oss's is in test_arch_parity.py). gpt-oss takes the first part in bf16 and f16
  (it has no q4f16_1 conversion).

Results go to MLC_GPU_RESULTS (JSON lines) when set; skips become failures with MLC_REQUIRE_GPU=1.
"""

import json
import os
import random
import subprocess
import sys

import pytest
from test_arch_parity import GPT_OSS_YARN, _hf, _init_weights, _top1_margin, _run_engine_bf16, _teacher_forced, _write_tokenizer, core, torch_mod  # noqa: F401
from test_engine_gpu import _record

pytestmark = pytest.mark.gpu

VOCAB = 1024
PROMPT_LEN = 200
NEW_TOKENS = 8
MIN_TOP1 = 0.95

# Median over rows of max |a - b| / max |b|: fused vs host-routed on one device and dtype (different sums and
# roundings only), and the floor added to 1.5 x the host-routed path's own distance from the f32 reference.
SAME_DEVICE_BOUND = {"bfloat16": 4e-2, "float16": 8e-3, "q4f16_1": 8e-3}
F32_FLOOR = {"bfloat16": 2e-2, "float16": 4e-3, "q4f16_1": 4e-3}

BASE = dict(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=64, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0,
            tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
# name -> (config class, model class, overrides); expert sizes are multiples of 256 so Q4_0 experts fuse too.
MODELS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=512)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256, norm_topk_prob=True)),
    "qwen3_moe_top1": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                       dict(num_experts=32, num_experts_per_tok=1, moe_intermediate_size=256, norm_topk_prob=False)),
    # Biases on the router and the experts, softmax over the top k, the clamped SwiGLU (a limit that bites);
    # attention with sinks, a sliding layer (window 128 < the prompt) and a full one.
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=256, swiglu_limit=1.5,
                     sliding_window=128, rope_theta=150000.0, rope_parameters=GPT_OSS_YARN)),
}
# Architectures `mlc_llm convert_weight` has no MLC layout for (no q4f16_1 conversion).
NO_MLC_LAYOUT = ("gpt_oss",)
LOADS = ("random", "zero_router")
DTYPES = ("bfloat16", "float16", "q4f16_1")


def _make(torch, name: str, load: str, path) -> None:
    import transformers

    cfg_name, cls_name, overrides = MODELS[name]
    cfg = getattr(transformers, cfg_name)(**{**BASE, **overrides})
    seed = 300 + list(MODELS).index(name)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(cfg).eval()
    _init_weights(model, seed, False, 1.0, 24.0, torch)
    if load == "zero_router":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight", "mlp.router.weight", "mlp.router.bias")):
                    p.zero_()
    model.to(torch.bfloat16).save_pretrained(str(path))
    gc = path / "generation_config.json"
    if gc.exists():
        gc.unlink()
    _write_tokenizer(path, VOCAB)


@pytest.fixture(scope="module")
def models(tmp_path_factory, torch_mod):
    """(name, load) -> checkpoint directory (bf16), and (name, load, "q4f16_1") -> its MLC q4f16_1 conversion."""
    out = {}
    for name in MODELS:
        for load in LOADS:
            path = tmp_path_factory.mktemp(f"moe_{name}_{load}")
            _make(torch_mod, name, load, path)
            out[(name, load)] = path
    return out


def _q4_dir(models, name, load):
    src = models[(name, load)]
    dst = src.parent / (src.name + "_q4f16_1")
    if not (dst / "tensor-cache.json").exists():
        for cmd in (["convert_weight", str(src), "--quantization", "q4f16_1", "-o", str(dst)],
                    ["gen_config", str(src), "--quantization", "q4f16_1", "--conv-template", "llama-3", "-o", str(dst)]):
            done = subprocess.run([sys.executable, "-m", "mlc_llm", *cmd], capture_output=True, text=True)
            assert done.returncode == 0, f"mlc_llm {cmd[0]} failed: {done.stderr[-3000:]}"
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if not (dst / f).exists():
                (dst / f).write_bytes((src / f).read_bytes())
    return dst


_LOGITS_CHILD = """
import json, sys
import mlc_llm._core as c
model, device, prompt, n, dtype = json.loads(sys.argv[1])
toks, rows = c._greedy_logits(model, device, prompt, n, dtype)
json.dump({"tokens": list(toks), "rows": [list(r) for r in rows]}, sys.stdout)
"""


def _host_routed(model: str, prompt, dtype):
    """Greedy logits rows on cuda:0 with MLC_MOE_FUSED=0 (a fresh process reads the switch)."""
    return _cuda_rows_with(model, prompt, dtype, ("MLC_MOE_FUSED", "0"))


def _cuda_rows_with(model: str, prompt, dtype, switch):
    """Greedy logits rows on cuda:0 in a fresh process with the environment switch (name, value) set."""
    env = {**os.environ, switch[0]: switch[1]}
    done = subprocess.run([sys.executable, "-c", _LOGITS_CHILD, json.dumps([model, "cuda:0", prompt, NEW_TOKENS, dtype])],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    return r["tokens"], r["rows"]


def _rel(torch, a_toks, a_rows, b_toks, b_rows):
    """Per row, max |a - b| / max |b|, over the rows both runs reached with the same tokens (the prefill row
    always): their median (what the bounds apply to: a near-tie in a router can send one token to another
    expert in one run, which moves that row alone) and their maximum (reported)."""
    same = 1
    while same < len(a_toks) and a_toks[same - 1] == b_toks[same - 1]:
        same += 1
    a = torch.tensor(a_rows[:same], dtype=torch.float32)
    b = torch.tensor(b_rows[:same], dtype=torch.float32)
    assert torch.isfinite(a).all(), "non-finite logits"
    per_row = (a - b).abs().max(-1).values / b.abs().max(-1).values
    return per_row.median().item(), per_row.max().item(), same


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("load", LOADS)
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_moe_matches_reference(core, torch_mod, models, name, load, dtype):  # noqa: F811
    torch = torch_mod
    if dtype == "q4f16_1" and name in NO_MLC_LAYOUT:
        pytest.skip(f"{name} has no MLC layout to convert to q4f16_1")
    prompt = [random.Random(7).randrange(3, VOCAB) for _ in range(PROMPT_LEN)]
    src = str(models[(name, load)])
    model = str(_q4_dir(models, name, load)) if dtype == "q4f16_1" else src
    engine_dtype = "float16" if dtype == "q4f16_1" else dtype
    fused_toks, fused_rows = core._greedy_logits(model, "cuda:0", prompt, NEW_TOKENS, engine_dtype)
    host_toks, host_rows = _host_routed(model, prompt, engine_dtype)
    # the f32 reference: the same weights on the CPU (the q4f16_1 model's own blocks for q4f16_1)
    ref_toks, ref_rows = core._greedy_logits(model, "cpu", prompt, NEW_TOKENS, "float32")
    fused_vs_host, fused_vs_host_max, rows_fh = _rel(torch, fused_toks, fused_rows, host_toks, host_rows)
    fused_vs_ref, fused_vs_ref_max, rows_fr = _rel(torch, fused_toks, fused_rows, ref_toks, ref_rows)
    host_vs_ref, host_vs_ref_max, rows_hr = _rel(torch, host_toks, host_rows, ref_toks, ref_rows)
    result = {"model": name, "load": load, "dtype": dtype, "prompt": PROMPT_LEN, "new_tokens": NEW_TOKENS,
              "median_row_rel": {"fused_vs_host_routed": fused_vs_host, "fused_vs_cpu_f32": fused_vs_ref,
                                 "host_routed_vs_cpu_f32": host_vs_ref},
              "max_row_rel": {"fused_vs_host_routed": fused_vs_host_max, "fused_vs_cpu_f32": fused_vs_ref_max,
                              "host_routed_vs_cpu_f32": host_vs_ref_max},
              "rows_compared": [rows_fh, rows_fr, rows_hr], "same_tokens_as_host_routed": fused_toks == host_toks}
    _record(f"moe_fused_{name}_{load}_{dtype}", result)
    assert fused_vs_host <= SAME_DEVICE_BOUND[dtype], result
    assert fused_vs_ref <= 1.5 * host_vs_ref + F32_FLOOR[dtype], result


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral"])
def test_engine_bf16_top1_agreement_with_hf(core, torch_mod, models, name):  # noqa: F811
    torch = torch_mod
    path = models[(name, "random")]
    rng = random.Random(1)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(n)] for n in (50, 97, 129, 230)]
    ours, info, metrics = _run_engine_bf16(core, path, prompts)
    hf = _hf(torch, path, torch.bfloat16)
    hf32 = _hf(torch, path, torch.float32)
    agree = hf_agree = f32_agree = total = 0
    for prompt, toks in zip(prompts, ours):
        logits = _teacher_forced(torch, hf, prompt, toks, "forward")
        logits32 = _teacher_forced(torch, hf32, prompt, toks, "forward")
        chosen = torch.tensor(toks, device=logits.device)
        top = logits.max(-1).values
        # a top-1 of HF's bf16 logits (ties: either token is one)
        agree += int((logits.gather(1, chosen[:, None])[:, 0] == top).sum())
        # HF's own f32 choice against its bf16 logits: how often bf16 rounding alone flips the top-1
        hf_agree += int((logits.gather(1, logits32.argmax(-1)[:, None].to(logits.device))[:, 0] == top).sum())
        f32_agree += int((logits32.gather(1, chosen[:, None].to(logits32.device))[:, 0] == logits32.max(-1).values).sum())
        total += len(toks)
    del hf, hf32
    result = {"model": name, "top1_agreement": round(agree / total, 4), "tokens": total,
              "hf_bf16_top1_vs_hf_f32": round(hf_agree / total, 4), "top1_vs_hf_f32": round(f32_agree / total, 4),
              "graph_replays": metrics.get("cuda_graph_replays"), "graphs_captured": metrics.get("cuda_graphs_captured")}
    _record(f"moe_engine_bf16_vs_hf_{name}", result)
    # Random tiny MoE routers have near-ties that bf16 rounding flips (HF's own bf16 run then picks other
    # experts than its f32 run): there, ours must track HF's f32 choices at least as well as HF's bf16 run.
    assert agree / total >= MIN_TOP1 or f32_agree / total >= hf_agree / total - _top1_margin(hf_agree, total), result
    # MoE layers on the host-routed path cannot be captured: replays show every layer ran fused
    assert (metrics.get("cuda_graph_replays") or 0) > 0, result


# The per-slot decode GEMVs (MLC_MOE_GEMV_MAX_SLOTS, off by default: moe_cuda.rs) against the grouped GEMM
# on the same device and dtype: the 200-token prefill (800 slots) takes the GEMM in both runs, the decode
# steps (top_k slots) the GEMVs in one; and both against the CPU's f32 reference, as above.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "qwen3_moe_top1"])
def test_moe_decode_gemv_matches_grouped_gemm(core, torch_mod, models, name, dtype):  # noqa: F811
    torch = torch_mod
    prompt = [random.Random(7).randrange(3, VOCAB) for _ in range(PROMPT_LEN)]
    load = LOADS[0]
    model = str(_q4_dir(models, name, load)) if dtype == "q4f16_1" else str(models[(name, load)])
    engine_dtype = "float16" if dtype == "q4f16_1" else dtype
    gemm_toks, gemm_rows = core._greedy_logits(model, "cuda:0", prompt, NEW_TOKENS, engine_dtype)
    gemv_toks, gemv_rows = _cuda_rows_with(model, prompt, engine_dtype, ("MLC_MOE_GEMV_MAX_SLOTS", "64"))
    ref_toks, ref_rows = core._greedy_logits(model, "cpu", prompt, NEW_TOKENS, "float32")
    gemv_vs_gemm, gemv_vs_gemm_max, rows_vg = _rel(torch, gemv_toks, gemv_rows, gemm_toks, gemm_rows)
    gemv_vs_ref, _, _ = _rel(torch, gemv_toks, gemv_rows, ref_toks, ref_rows)
    gemm_vs_ref, _, _ = _rel(torch, gemm_toks, gemm_rows, ref_toks, ref_rows)
    result = {"model": name, "load": load, "dtype": dtype, "median_row_rel": {"gemv_vs_gemm": gemv_vs_gemm, "gemv_vs_cpu_f32": gemv_vs_ref,
              "gemm_vs_cpu_f32": gemm_vs_ref}, "max_row_rel_gemv_vs_gemm": gemv_vs_gemm_max, "rows_compared": rows_vg,
              "same_tokens": gemv_toks == gemm_toks}
    _record(f"moe_decode_gemv_{name}_{dtype}", result)
    assert rows_vg > 1, result  # at least one decode row compared
    assert gemv_vs_gemm <= SAME_DEVICE_BOUND[dtype], result
    assert gemv_vs_ref <= 1.5 * gemm_vs_ref + F32_FLOOR[dtype], result
