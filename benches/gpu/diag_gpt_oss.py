"""Where gpt-oss on CUDA departs from the CPU engine: tiny random gpt-oss checkpoints, each one config
change away from tests/gpu/test_arch_parity.py's (which fails on CUDA while passing on the CPU), run greedily
by our engine on cuda:0 and on the CPU in f32; prints each variant's max |cuda - cpu| / max |cpu| per row.

    PYTHONPATH=<site with mlc_llm> python benches/gpu/diag_gpt_oss.py

By default a model seeded 7, one 50-token prompt and 4 new tokens (positions 50..53: no split decode, within
the window). The parity test's own case differs in all three; the environment reproduces it:
DIAG_SEED (the test seeds gpt-oss's checkpoint with 100 + its index in ARCHS, printed as test_seed),
DIAG_TEST_PROMPT=i (the test's prompt i: 0..3 for 50 / 97 / 129 / 230 tokens), DIAG_NEW_TOKENS (the f32 test
takes 20, the bf16 one 48: past position 63 decode splits its keys, with the sinks entering at the merge) and
DIAG_VARIANTS (a comma-separated subset of the variants below).
"""

import copy
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "gpu"))
import torch  # noqa: E402
import transformers  # noqa: E402
from test_arch_parity import ARCHS, COMMON, FINAL_NORM_SCALE, VOCAB, _init_weights, _write_tokenizer  # noqa: E402

import mlc_llm._core as core  # noqa: E402

base = {**COMMON, **ARCHS["gpt_oss"][2]}
V = {
    "arch_parity": {},
    "layers_2": dict(num_hidden_layers=2, layer_types=base["layer_types"][:2]),
    "experts_8": dict(num_local_experts=8),
    "inter_256": dict(intermediate_size=256),
    "no_window": dict(sliding_window=4096),
    "all_full": dict(layer_types=["full_attention"] * 4),
    "all_sliding": dict(layer_types=["sliding_attention"] * 4),
    "no_yarn": dict(rope_parameters={"rope_type": "default", "rope_theta": 150000.0}),
    "zero_sinks": "sinks",
    "zero_bias": "bias",
    "moe_test_cfg": dict(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], num_local_experts=8, intermediate_size=256),
}
from test_arch_parity import PROMPT_LENS  # noqa: E402

SEED = int(os.environ.get("DIAG_SEED", "7"))
NEW_TOKENS = int(os.environ.get("DIAG_NEW_TOKENS", "4"))
print(json.dumps({"seed": SEED, "test_seed": 100 + list(ARCHS).index("gpt_oss"), "new_tokens": NEW_TOKENS}), flush=True)
if os.environ.get("DIAG_TEST_PROMPT"):
    _rng = random.Random(0)  # test_arch_parity.prompts
    _all = [[_rng.randrange(3, VOCAB) for _ in range(n)] for n in PROMPT_LENS]
    prompt = _all[int(os.environ["DIAG_TEST_PROMPT"])]
else:
    prompt = [random.Random(3).randrange(3, VOCAB) for _ in range(50)]
if os.environ.get("DIAG_VARIANTS"):
    V = {k: V[k] for k in os.environ["DIAG_VARIANTS"].split(",")}
rows = []
for name, change in V.items():
    cfg_kw = copy.deepcopy(base)
    if isinstance(change, dict):
        cfg_kw.update(change)
    cfg = transformers.GptOssConfig(**cfg_kw)
    torch.manual_seed(SEED)
    model = transformers.GptOssForCausalLM(cfg).eval()
    _init_weights(model, SEED, False, 1.0, FINAL_NORM_SCALE, torch)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if (change == "sinks" and n.endswith(".sinks")) or (change == "bias" and n.endswith(("bias",))):
                p.zero_()
    d = tempfile.mkdtemp(prefix=f"gptoss_{name}_")
    model.to(torch.bfloat16).save_pretrained(d)
    if os.path.exists(os.path.join(d, "generation_config.json")):
        os.unlink(os.path.join(d, "generation_config.json"))
    _write_tokenizer(__import__("pathlib").Path(d), VOCAB)
    out = {"variant": name}
    try:
        gt, gr = core._greedy_logits(d, "cuda:0", prompt, NEW_TOKENS, "float32")
        ct, cr = core._greedy_logits(d, "cpu", prompt, NEW_TOKENS, "float32")
        rel = []
        for a, b in zip(gr, cr):
            ta, tb = torch.tensor(a), torch.tensor(b)
            rel.append(float((ta - tb).abs().max() / tb.abs().max()))
        out.update(rel_per_row=[round(r, 6) for r in rel], same_tokens=gt == ct)
    except Exception as e:  # noqa: BLE001
        out["error"] = str(e)[:300]
    rows.append(out)
    print(json.dumps(out), flush=True)
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "diag_gpt_oss.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
