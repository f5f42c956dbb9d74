"""gpt-oss's MXFP4 experts kept in 4 bits on CUDA (the loaders hand them over as llama.cpp's blocks on CUDA in
bf16; rust/core/src/model/layers/moe_cuda.rs stacks them for moe_gemm.cu's `moe_gemm_mxfp4_bf16`) on the GPU
host (`pytest -m gpu tests/gpu/test_moe_mxfp4_gpu.py`), with
* random gpt-oss checkpoints made here, their experts quantized to MXFP4 as gen_mxfp4_fixtures.py does and
  saved as transformers' safetensors (`*_blocks` / `*_scales`): "small" (hidden 128, intermediate 96: rows
  of 4 / 3 blocks, 4 experts, top 2) and "mid" at gpt-oss's hidden size (2880: rows of 90 blocks, 1530
  bytes, only 2-byte aligned, and a short last K stage), intermediate 1440 (45 blocks: odd row lengths),
  32 experts, top 4;
* the MXFP4 fixture tests/fixtures/models/gpt_oss_mxfp4 (gen_mxfp4_fixtures.py: hidden 64, intermediate 64),
  as safetensors and as llama.cpp's GGUF, where it is in the tree (.ci/cuda/fixtures_aside.sh keeps only
  five other models for device runs: these two cases are then skipped).

Per model: our greedy logits rows on cuda:0 in bf16 (the MXFP4 kernel) against the CPU engine in f32 with the
experts dequantized at load (MLC_QUANTIZED_MATMUL=0: moe.rs's host-routed path on dense weights, the
reference) and against cuda:0 in bf16 with MLC_MOE_FUSED=0 (the experts dequantized to bf16 at load, the
host-routed path on the same device), each in a subprocess (both switches are read once per process). As in
test_moe_gpu.py, rows are compared while both runs chose the same tokens and the bounds apply to the median
row; greedy tokens must agree until a near-tie (where they part, the reference's margin between the two
tokens is within NEAR_TIE of its row's largest logit). Then the engine in bf16 with CUDA graphs on:
replays > 0 shows every MoE layer ran fused, which for experts that arrive as MXFP4 blocks is the MXFP4 kernel
(the only other path, dequantize and route on the host, cannot be captured).

Results go to MLC_GPU_RESULTS (JSON lines) when set; skips become failures with MLC_REQUIRE_GPU=1.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# The 4-bit MXFP4 path on CUDA is the default; MLC_CUDA_MXFP4=0 in the environment would turn it off
# (loader/mod.rs, keeps_mxfp4): make sure this process and its children test it.
os.environ.pop("MLC_CUDA_MXFP4", None)

from test_arch_parity import GPT_OSS_YARN, _init_weights, _run_engine_bf16, _write_tokenizer, core, torch_mod  # noqa: F401
from test_engine_gpu import _record
from test_moe_gpu import _rel  # per-row median / max relative difference over the rows both runs share

pytestmark = pytest.mark.gpu

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "gpt_oss_mxfp4"
VOCAB = 1024
PROMPT_LEN = 200
NEW_TOKENS = 8
# Median over rows of max |a - b| / max |b| (test_moe_gpu.py's bf16 bounds): fused vs host-routed on one
# device and dtype, and the floor added to 1.5 x the host-routed path's own distance from the f32 reference.
SAME_DEVICE_BOUND = 4e-2
F32_FLOOR = 2e-2
# Where greedy tokens part: the reference's logit of its token minus that of ours, over its row's max |logit|.
NEAR_TIE = 2e-2

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
QUANT_CONFIG = {"quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
MID = dict(vocab_size=VOCAB, hidden_size=2880, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
           max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=150000.0, tie_word_embeddings=False, bos_token_id=None,
           eos_token_id=None, pad_token_id=None, num_local_experts=32, num_experts_per_tok=4, intermediate_size=1440,
           swiglu_limit=7.0, sliding_window=128, rope_parameters=GPT_OSS_YARN)


def _quantize_rows(torch, w):
    """w [..., K] -> (blocks [..., K/32, 16] u8, scales [..., K/32] u8) as gen_mxfp4_fixtures.py makes them:
    per group of 32 the power of two that brings the largest magnitude within e2m1's range, each value rounded
    to the nearest e2m1 value."""
    *lead, k = w.shape
    g = w.reshape(*lead, k // 32, 32)
    exp = torch.floor(torch.log2(g.abs().amax(dim=-1).clamp(min=2.0 ** -100))) - 2
    fp4 = torch.tensor(FP4_VALUES)
    idx = ((g / torch.pow(2.0, exp)[..., None])[..., None] - fp4).abs().argmin(dim=-1)
    return (idx[..., 0::2] | (idx[..., 1::2] << 4)).to(torch.uint8), (exp + 127).to(torch.uint8)


SMALL = {**MID, "hidden_size": 128, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2}


def _make(torch, path: Path, shape: dict, seed: int) -> None:
    """A random gpt-oss of `shape`, its experts saved in MXFP4 as the published checkpoints are."""
    import transformers
    from safetensors.torch import save_file

    cfg = transformers.GptOssConfig(**shape)
    torch.manual_seed(seed)
    model = transformers.GptOssForCausalLM(cfg).eval()
    _init_weights(model, seed, False, 1.0, 24.0, torch)
    tensors = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                # parameters are [E, in, out]; MXFP4 groups run along `in` of rows [E, out, in]; expert by
                # expert (the nearest-value search holds 16 floats per weight)
                parts = [_quantize_rows(torch, p[e].float().t().contiguous()) for e in range(p.shape[0])]
                tensors[name + "_blocks"] = torch.stack([b for b, _ in parts])
                tensors[name + "_scales"] = torch.stack([s for _, s in parts])
            else:
                tensors[name] = p.detach().to(torch.bfloat16).contiguous()
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update({"architectures": ["GptOssForCausalLM"], "quantization_config": QUANT_CONFIG, "torch_dtype": "bfloat16"})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_tokenizer(path, VOCAB)


NAMES = ["small_hf", "mid_hf", "fixture_hf", "fixture_gguf"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, torch_mod):  # noqa: F811
    """name -> (model path: a directory or a .gguf file, its vocabulary size); the fixture's only where it is
    in the tree."""
    out = {}
    for name, shape, seed in (("small_hf", SMALL, 331), ("mid_hf", MID, 332)):
        path = tmp_path_factory.mktemp(f"gpt_oss_mxfp4_{name}")
        _make(torch_mod, path, shape, seed)
        out[name] = (path, VOCAB)
    if (FIXTURE / "model.safetensors").exists():
        vocab = json.loads((FIXTURE / "config.json").read_text())["vocab_size"]
        out["fixture_hf"] = (FIXTURE, vocab)
        out["fixture_gguf"] = (FIXTURE / "gpt_oss_mxfp4.gguf", vocab)
    return out


def _checkpoint(checkpoints, name):
    if name not in checkpoints:
        pytest.skip(f"{FIXTURE} is not in the tree (moved aside for the device run)")
    return checkpoints[name]


_LOGITS_CHILD = """
import json, sys
import mlc_llm._core as c
model, device, prompt, n, dtype = json.loads(sys.argv[1])
toks, rows = c._greedy_logits(model, device, prompt, n, dtype)
json.dump({"tokens": list(toks), "rows": [list(r) for r in rows]}, sys.stdout)
"""


def _child_logits(model: str, device: str, prompt, dtype: str, env: dict):
    """Greedy logits rows in a fresh process with `env` set (the switches are read once per process)."""
    done = subprocess.run([sys.executable, "-c", _LOGITS_CHILD, json.dumps([model, device, prompt, NEW_TOKENS, dtype])],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    return r["tokens"], r["rows"]


def _parting_margin(a_toks, b_toks, b_rows):
    """Where greedy tokens first differ, the reference's (b's) logit of its token minus that of a's, over its
    row's max |logit| (0 when they never differ): how near a tie the step that parted them was."""
    for j, (x, y) in enumerate(zip(a_toks, b_toks)):
        if x != y:
            row = b_rows[j]
            return (row[y] - row[x]) / max(abs(v) for v in row)
    return 0.0


@pytest.mark.parametrize("name", NAMES)
def test_mxfp4_experts_on_cuda_match_dequantized(core, torch_mod, checkpoints, name):  # noqa: F811
    torch = torch_mod
    path, vocab = _checkpoint(checkpoints, name)
    model = str(path)
    prompt = [random.Random(11).randrange(3, vocab) for _ in range(PROMPT_LEN)]
    fused_toks, fused_rows = core._greedy_logits(model, "cuda:0", prompt, NEW_TOKENS, "bfloat16")
    host_toks, host_rows = _child_logits(model, "cuda:0", prompt, "bfloat16", {"MLC_MOE_FUSED": "0"})
    ref_toks, ref_rows = _child_logits(model, "cpu", prompt, "float32", {"MLC_QUANTIZED_MATMUL": "0"})
    fused_vs_host, fused_vs_host_max, rows_fh = _rel(torch, fused_toks, fused_rows, host_toks, host_rows)
    fused_vs_ref, fused_vs_ref_max, rows_fr = _rel(torch, fused_toks, fused_rows, ref_toks, ref_rows)
    host_vs_ref, host_vs_ref_max, rows_hr = _rel(torch, host_toks, host_rows, ref_toks, ref_rows)
    parting = _parting_margin(fused_toks, ref_toks, ref_rows)
    result = {"model": name, "prompt": PROMPT_LEN, "new_tokens": NEW_TOKENS,
              "median_row_rel": {"fused_mxfp4_vs_host_routed": fused_vs_host, "fused_mxfp4_vs_cpu_f32": fused_vs_ref,
                                 "host_routed_vs_cpu_f32": host_vs_ref},
              "max_row_rel": {"fused_mxfp4_vs_host_routed": fused_vs_host_max, "fused_mxfp4_vs_cpu_f32": fused_vs_ref_max,
                              "host_routed_vs_cpu_f32": host_vs_ref_max},
              "rows_compared": [rows_fh, rows_fr, rows_hr], "same_tokens_as_cpu_f32": fused_toks == ref_toks,
              "parting_margin_vs_cpu_f32": parting}
    _record(f"moe_mxfp4_{name}", result)
    assert fused_vs_host <= SAME_DEVICE_BOUND, result
    assert fused_vs_ref <= 1.5 * host_vs_ref + F32_FLOOR, result
    assert parting <= NEAR_TIE, result


@pytest.mark.parametrize("name", NAMES)
def test_mxfp4_experts_run_fused_in_cuda_graphs(core, checkpoints, name):  # noqa: F811
    path, vocab = _checkpoint(checkpoints, name)
    rng = random.Random(2)
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (40, 97)]
    runs, info, metrics = _run_engine_bf16(core, path, prompts)
    result = {"model": name, "graph_replays": metrics.get("cuda_graph_replays"), "graphs_captured": metrics.get("cuda_graphs_captured"),
              "tokens": sum(len(r) for r in runs)}
    _record(f"moe_mxfp4_graphs_{name}", result)
    assert (metrics.get("cuda_graph_replays") or 0) > 0, result
