"""Where transformers' gpt-oss on CUDA departs from itself on the CPU (tests/gpu/test_arch_parity.py's gpt-oss
model, f32, eager attention and experts): every module's output on both devices for one prompt,
printed in call order with max |cuda - cpu| / max |cpu|; the first large one names the culprit.
DIAG_PROMPT_LEN sets the prompt's length (default 250).

    python benches/gpu/diag_hf_gpt_oss.py
"""

import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "gpu"))
import torch  # noqa: E402
import transformers  # noqa: E402
from test_arch_parity import ARCHS, COMMON, FINAL_NORM_SCALE, VOCAB, _init_weights  # noqa: E402

cfg = transformers.GptOssConfig(**{**COMMON, **ARCHS["gpt_oss"][2]})
torch.manual_seed(7)
model = transformers.GptOssForCausalLM(cfg).eval()
_init_weights(model, 7, False, 1.0, FINAL_NORM_SCALE, torch)
d = tempfile.mkdtemp()
model.to(torch.bfloat16).save_pretrained(d)
# 250 tokens: past the model's 128-token sliding window (a 50-token prompt, inside it, agreed everywhere to
# 1.1e-6 on an H100: benches/results/gpu_gpt_oss_hf_cuda_vs_cpu_modules_h100_2026-12-06.log).
PROMPT_LEN = int(os.environ.get("DIAG_PROMPT_LEN", "250"))
prompt = torch.tensor([[random.Random(3).randrange(3, VOCAB) for _ in range(PROMPT_LEN)]])


def run(device):
    m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager").to(device).eval()
    outs = []

    def hook(name):
        def f(_mod, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            if isinstance(t, torch.Tensor):
                outs.append((name, t.detach().float().cpu()))
        return f

    for name, mod in m.named_modules():
        mod.register_forward_hook(hook(name))
    with torch.no_grad():
        m(prompt.to(device))
    return outs


cpu, gpu = run("cpu"), run(os.environ.get("DIAG_DEVICE", "cuda"))
print("modules", len(cpu), len(gpu))
shown = 0
for (n1, a), (n2, b) in zip(cpu, gpu):
    if a.shape != b.shape:
        print(f"{n1:55s} shape {tuple(a.shape)} vs {tuple(b.shape)}")
        continue
    rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if rel > 1e-4 or shown < 12:
        print(f"{n1:55s} {rel:.3e}")
        shown += 1
    if shown > 40:
        break
