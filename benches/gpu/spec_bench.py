"""Speculative decoding against plain decoding on the GPU, Llama-3-8B shape (the random bf16 checkpoint that
`bench_gpu.py`'s setup phase writes): batch 1 and 16, greedy, 128 new tokens after a 128-token prompt.

Configurations: plain; `small_draft` with the target as its own draft (every draft accepted: the
mechanism's upper bound); `eagle` with a random one-layer EAGLE head made here (drafts never accepted: the
worst case, whose overhead over plain decoding is the cost of drafting and verifying); `ngram` on a
copy-heavy prompt (a random segment repeated). Prints a table and writes JSON with the commit and device.

    python benches/gpu/spec_bench.py --model /tmp/mlc_bench_llama3-8b --out spec.json
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Dict, List


def make_eagle_head(model_dir: str, out_dir: str, seed: int = 0) -> str:
    """A random EAGLE-1 head in the checkpoint layout (fc, layers.0.*), sized after the target's config."""
    import torch
    from safetensors.torch import save_file

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=g, device="cuda") * 0.02).to(torch.bfloat16).cpu()

    w = {
        "fc.weight": rand(h, 2 * h),
        "layers.0.post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        "layers.0.self_attn.q_proj.weight": rand(heads * hd, h),
        "layers.0.self_attn.k_proj.weight": rand(kv * hd, h),
        "layers.0.self_attn.v_proj.weight": rand(kv * hd, h),
        "layers.0.self_attn.o_proj.weight": rand(h, heads * hd),
        "layers.0.mlp.gate_proj.weight": rand(inter, h),
        "layers.0.mlp.up_proj.weight": rand(inter, h),
        "layers.0.mlp.down_proj.weight": rand(h, inter),
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file(w, os.path.join(out_dir, "model.safetensors"))
    head_cfg = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                                    "vocab_size", "rms_norm_eps", "max_position_embeddings") if k in cfg}
    head_cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=1, head_dim=hd,
                    rope_theta=cfg.get("rope_theta", 500000.0), bias=False, torch_dtype="bfloat16")
    json.dump(head_cfg, open(os.path.join(out_dir, "config.json"), "w"))
    return out_dir


def run(engine, prompts: List[List[int]], new: int, tag: str) -> Dict[str, float]:
    params = json.dumps({"temperature": 0.0, "max_tokens": new, "ignore_eos": True})
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, p, params)
    first: Dict[str, float] = {}
    done = 0
    tokens = 0
    while done < len(ids):
        for d in engine.poll(20):
            t = time.perf_counter()
            if d["token_ids"]:
                first.setdefault(d["request_id"], t)
                tokens += len(d["token_ids"])
            if d["finish_reason"] is not None:
                done += 1
    end = time.perf_counter()
    start = max(first.values())  # every prefill done
    after = tokens - len(ids)  # tokens after each request's first
    return {"decode_tok_s": after / (end - min(first.values())), "wall_s": end - min(first.values()), "tokens": tokens,
            "all_started_s": start - min(first.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/mlc_bench_llama3-8b")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--configs", default="plain,small_draft,eagle,ngram")
    ap.add_argument("--out", default="spec_bench.json")
    ap.add_argument("--device", default="cuda:0", help="cpu for a dry run on a tiny model")
    args = ap.parse_args()
    from mlc_llm import _core

    head = make_eagle_head(args.model, args.model.rstrip("/") + "_eagle_head") if "eagle" in args.configs else None
    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
    rng = random.Random(0)
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for name in args.configs.split(","):
        cfg = {"verbose": False, "mode": "server", "max_num_sequence": max(batches), "max_total_sequence_length": 16384,
               "prefill_chunk_size": 2048}
        if name != "plain":
            cfg.update(speculative_mode=name, spec_draft_length=args.k)
        if name == "small_draft":
            cfg["additional_models"] = [args.model]
        if name == "eagle":
            cfg["additional_models"] = [head]
        t = time.perf_counter()
        engine = _core.Engine(args.model, args.device, json.dumps(cfg))
        load_s = time.perf_counter() - t
        for b in batches:
            if name == "ngram":
                seg = [rng.randrange(10, vocab - 1) for _ in range(32)]
                prompts = [seg * 4 for _ in range(b)]
            else:
                prompts = [[rng.randrange(10, vocab - 1) for _ in range(128)] for _ in range(b)]
            # Warm up (graph capture, allocations) on other prompts: reused ones would hit the prefix cache.
            run(engine, [[rng.randrange(10, vocab - 1) for _ in range(len(p))] for p in prompts], 16, f"warm-{name}-{b}")
            before = json.loads(engine.metrics())
            r = run(engine, prompts, args.new, f"{name}-{b}")
            m = json.loads(engine.metrics())
            drafted = m["spec_draft_tokens"] - before["spec_draft_tokens"]
            accepted = m["spec_accepted_tokens"] - before["spec_accepted_tokens"]
            steps = m["spec_verify_steps"] - before["spec_verify_steps"]
            r.update(config=name, batch=b, load_s=load_s, k=args.k if name != "plain" else 0,
                     drafted=drafted, verify_steps=steps, draft_failures=m["spec_draft_failures"],
                     acceptance=accepted / drafted if drafted else None,
                     mean_accepted_length=(accepted + steps) / steps if steps else None)
            results.append(r)
            print(json.dumps(r), flush=True)
        engine.terminate()
        del engine
    plain = {r["batch"]: r["decode_tok_s"] for r in results if r["config"] == "plain"}
    print(f"\n{'config':12} {'batch':>5} {'decode tok/s':>13} {'x plain':>8} {'acceptance':>10} {'tokens/step':>11}")
    for r in results:
        vs = r["decode_tok_s"] / plain[r["batch"]] if plain.get(r["batch"]) else None
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        mal = "-" if r["mean_accepted_length"] is None else f"{r['mean_accepted_length']:.2f}"
        print(f"{r['config']:12} {r['batch']:>5} {r['decode_tok_s']:13.1f} {vs if vs is None else round(vs, 3)!s:>8} {acc:>10} {mal:>11}")
    commit = os.environ.get("MLC_BENCH_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        smi = args.device
    json.dump({"what": "speculative decoding vs plain decoding, Llama-3-8B shape, random bf16 weights, greedy",
               "commit": commit, "device": smi, "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": results}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
