"""Speculative decoding against plain decoding on the GPU, Llama-3-8B shape (the random bf16 checkpoint that
`bench_gpu.py`'s setup phase writes): batch 1 and 16, greedy, 128 new tokens after a 128-token prompt.

Configurations: plain; `small_draft` with the target as its own draft (every draft accepted: the
mechanism's upper bound); `eagle` with a random one-layer EAGLE head made here (drafts never accepted: the
worst case, whose overhead over plain decoding is the cost of drafting and verifying), at the fixed k and
adaptive (`eagle_adaptive`, spec_draft_length = 0: failing drafts back off); `ngram` (random prompts: it
finds little). With `--copy-model` (a real chat model, e.g. SmolLM2's GGUF), prompt lookup on a copy-heavy
workload: chat prompts asking for a passage back verbatim, plain vs `ngram` fixed and adaptive. Every row
records whether its greedy outputs equal plain decoding's. Prints tables and writes JSON with the commit
and device.

    python benches/gpu/spec_bench.py --model /tmp/mlc_bench_llama3-8b --copy-model SmolLM2.gguf --out spec.json
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


def run(engine, prompts: List[List[int]], new: int, tag: str, ignore_eos: bool = True) -> Dict:
    params = json.dumps({"temperature": 0.0, "max_tokens": new, "ignore_eos": ignore_eos})
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, p, params)
    first: Dict[str, float] = {}
    outputs: Dict[str, List[int]] = {rid: [] for rid in ids}
    done = 0
    tokens = 0
    while done < len(ids):
        for d in engine.poll(20):
            t = time.perf_counter()
            if d["token_ids"]:
                first.setdefault(d["request_id"], t)
                tokens += len(d["token_ids"])
                outputs[d["request_id"]].extend(d["token_ids"])
            if d["finish_reason"] is not None:
                done += 1
    end = time.perf_counter()
    start = max(first.values())  # every prefill done
    after = tokens - len(ids)  # tokens after each request's first
    return {"decode_tok_s": after / (end - min(first.values())), "wall_s": end - min(first.values()), "tokens": tokens,
            "all_started_s": start - min(first.values()), "outputs": [outputs[rid] for rid in ids]}


# Configurations: name -> (speculative_mode, spec_draft_length override or None for --k).
CONFIGS = {
    "plain": (None, None),
    "small_draft": ("small_draft", None),
    "eagle": ("eagle", None),
    "eagle_adaptive": ("eagle", 0),
    "ngram": ("ngram", None),
    "ngram_adaptive": ("ngram", 0),
}

# Copy-heavy chat prompts for the real model: each asks for a passage back verbatim.
PASSAGES = [
    "The engine keeps a paged key-value cache: every sequence owns a list of fixed-size blocks, so memory is handed "
    "out as sequences grow and returned the moment they finish, and many requests share one pool without fragmentation.",
    "Continuous batching lets new requests join the running batch at every step instead of waiting for the longest "
    "request to finish, which keeps the GPU busy and cuts the time to first token under load.",
    "Speculative decoding drafts several tokens cheaply and verifies them with one forward pass of the target model; "
    "accepted tokens cost a fraction of a normal step, and rejection sampling keeps the output distribution exact.",
    "Prompt lookup needs no second model: it finds the latest earlier occurrence of the last few tokens in the prompt "
    "or the output and proposes the tokens that followed it, which works well when the answer copies its input.",
    "Quantized weights store four bits per value with one scale for every block of thirty-two values, so a model of "
    "eight billion parameters fits in under five gigabytes and decoding reads far less memory per token.",
    "A chat template turns a list of messages into the exact prompt string a model was trained on, with its special "
    "tokens, role names and separators, and marks where the assistant's answer begins.",
    "The server speaks the OpenAI protocol: chat completions, streaming with server-sent events, tool calls, JSON "
    "schemas for structured output, and usage statistics that count prompt and completion tokens.",
    "When a request is aborted, its blocks go back to the pool at once and the scheduler moves on to the next step, so "
    "one client that disconnects never holds memory or slows the others down.",
]


def draft_length(name: str, args) -> int:
    """The configuration's spec_draft_length (0 for plain decoding and the adaptive ones)."""
    mode, k = CONFIGS[name]
    return 0 if mode is None else (args.k if k is None else k)


def engine_config(name: str, args, batch_max: int, draft_model: str = "", head: str = "") -> Dict:
    mode = CONFIGS[name][0]
    cfg = {"verbose": False, "mode": "server", "max_num_sequence": batch_max, "max_total_sequence_length": 16384,
           "prefill_chunk_size": 2048}
    if mode is not None:
        cfg.update(speculative_mode=mode, spec_draft_length=draft_length(name, args))
    if mode == "small_draft":
        cfg["additional_models"] = [draft_model]
    if mode == "eagle":
        cfg["additional_models"] = [head]
    return cfg


def measure(engine, name: str, b: int, prompts, warm, new: int, ignore_eos: bool, k: int) -> Dict:
    """Warm-up (graph capture, allocations) on other prompts (reused ones would hit the prefix cache), then one
    timed run with the speculative counters it moved."""
    run(engine, warm, 16, f"warm-{name}-{b}", ignore_eos)
    before = json.loads(engine.metrics())
    r = run(engine, prompts, new, f"{name}-{b}", ignore_eos)
    m = json.loads(engine.metrics())
    drafted = m["spec_draft_tokens"] - before["spec_draft_tokens"]
    accepted = m["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    steps = m["spec_verify_steps"] - before["spec_verify_steps"]
    r.update(config=name, batch=b, k=k, drafted=drafted, verify_steps=steps, draft_failures=m["spec_draft_failures"],
             acceptance=accepted / drafted if drafted else None,
             mean_accepted_length=(accepted + steps) / steps if steps else None)
    return r


def summarize(results: List[Dict], workload: str) -> None:
    """Adds the ratio to plain decoding and whether greedy outputs equal plain's; prints the table."""
    plain = {r["batch"]: r for r in results if r["config"] == "plain"}
    print(f"\n[{workload}]\n{'config':15} {'batch':>5} {'decode tok/s':>13} {'x plain':>8} {'acceptance':>10} "
          f"{'tokens/step':>11} {'same':>5}")
    for r in results:
        p = plain.get(r["batch"])
        r["vs_plain"] = round(r["decode_tok_s"] / p["decode_tok_s"], 4) if p else None
        r["same_output_as_plain"] = (r["outputs"] == p["outputs"]) if p else None
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        mal = "-" if r["mean_accepted_length"] is None else f"{r['mean_accepted_length']:.2f}"
        print(f"{r['config']:15} {r['batch']:>5} {r['decode_tok_s']:13.1f} {r['vs_plain']!s:>8} {acc:>10} {mal:>11} "
              f"{r['same_output_as_plain']!s:>5}")
    for r in results:
        r["workload"] = workload
        r["output_tokens"] = [len(o) for o in r.pop("outputs")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/mlc_bench_llama3-8b")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--configs", default="plain,small_draft,eagle,eagle_adaptive,ngram")
    ap.add_argument("--copy-model", default="", help="a real chat model for the copy-heavy prompt lookup workload")
    ap.add_argument("--copy-configs", default="plain,ngram,ngram_adaptive")
    ap.add_argument("--out", default="spec_bench.json")
    ap.add_argument("--device", default="cuda:0", help="cpu for a dry run on a tiny model")
    args = ap.parse_args()
    from mlc_llm import _core

    configs = [c for c in args.configs.split(",") if c]
    head = make_eagle_head(args.model, args.model.rstrip("/") + "_eagle_head") if any("eagle" in c for c in configs) else None
    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"] if configs else 0
    rng = random.Random(0)
    batches = [int(b) for b in args.batches.split(",")]
    results: List[Dict] = []
    # The same prompts for every configuration (new engines: no prefix cache carries over).
    prompts = {b: [[rng.randrange(10, vocab - 1) for _ in range(128)] for _ in range(b)] for b in batches} if configs else {}
    warm = {b: [[rng.randrange(10, vocab - 1) for _ in range(128)] for _ in range(b)] for b in batches} if configs else {}
    for name in configs:
        t = time.perf_counter()
        engine = _core.Engine(args.model, args.device, json.dumps(engine_config(name, args, max(batches), args.model, head)))
        load_s = time.perf_counter() - t
        for b in batches:
            r = measure(engine, name, b, prompts[b], warm[b], args.new, True, draft_length(name, args))
            r["load_s"] = load_s
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "outputs"}), flush=True)
        engine.terminate()
        del engine
    summarize(results, "llama3-8b-shape random bf16, random prompts")

    copy_results: List[Dict] = []
    if args.copy_model:
        for name in [c for c in args.copy_configs.split(",") if c]:
            engine = _core.Engine(args.copy_model, args.device, json.dumps(engine_config(name, args, max(batches))))

            def chat(text: str) -> List[int]:
                msgs = [{"role": "user", "content": "Repeat the following text exactly, word for word:\n\n" + text}]
                return engine.tokenize(engine.apply_chat_template(json.dumps(msgs), True, None), False)

            for b in batches:
                ps = [chat(PASSAGES[i % len(PASSAGES)]) for i in range(b)]
                ws = [chat(PASSAGES[(i + 3) % len(PASSAGES)][::-1]) for i in range(b)]
                r = measure(engine, name, b, ps, ws, 160, False, draft_length(name, args))
                r["first_answer"] = engine.detokenize(r["outputs"][0])
                copy_results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "outputs"}), flush=True)
            engine.terminate()
            del engine
        summarize(copy_results, f"copy-heavy chat on {os.path.basename(args.copy_model)}")

    commit = os.environ.get("MLC_BENCH_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        smi = args.device
    json.dump({"what": "speculative decoding vs plain decoding, greedy: Llama-3-8B shape with random bf16 weights, and "
                       "prompt lookup on a copy-heavy chat workload with a real model",
               "commit": commit, "device": smi, "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": results + copy_results}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
