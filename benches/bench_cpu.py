"""CPU throughput of our engine against llama.cpp, in the same run, on the same GGUF and thread count.

For each model: prefill of one 256-token prompt and decode after it at batch 1, and decode at batch 8
(8 sequences of `--b8-prompt-tokens` prompt tokens each, distinct, so the prefill of the batch stays short on
2 cores); greedy, EOS ignored, each measured `--repeats` times, batch-1 and batch-8 runs taking turns; the
table shows the medians and ours / llama.cpp. llama.cpp runs through
llama-cpp-python in its own virtual environment (built natively), driven by this same file with
`--llama-worker` so both sides use one definition of the workload:

    python -m venv /tmp/llamavenv
    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llamavenv/bin/pip install llama-cpp-python
    python benches/bench_cpu.py --qwen-gguf /path/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

Our side uses the engine's defaults on the CPU (GGUF weights kept quantized, our kernels; see the
README's CPU section) unless `--ours-dequantized` is given. Both sides use `--threads` threads (our
kernels through `MLC_CPU_THREADS`). Results go to benches/results/cpu_<date>.json with the commit, the
CPU model and the command.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

PROMPT_TEXT = "The history of the city is long and full of stories. " * 60


# ----------------------------------------------------------------------------------------------- llama.cpp


def interleaved(run, repeats: int) -> Dict[str, list]:
    """`run(bsz, r)` for r in 0..repeats, batch 1 and batch 8 taking turns: a neighbour that slows the machine
    for a minute then weighs on both sides of the batch-8 / batch-1 ratio, not on one block of runs."""
    runs: Dict[str, list] = {"1": [], "8": []}
    for r in range(repeats):
        for bsz in (1, 8):
            runs[str(bsz)].append(run(bsz, r))
    return runs



def llama_worker(args: argparse.Namespace) -> None:
    """Runs inside the llama-cpp-python venv; prints one JSON line of measurements."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    L.llama_backend_init()
    model = L.llama_model_load_from_file(args.model.encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    buf = (L.llama_token * 4096)()
    text = PROMPT_TEXT.encode()
    n = L.llama_tokenize(vocab, text, len(text), buf, 4096, False, False)
    prompt = list(buf[: min(n, args.prompt_tokens)])
    batch_max = 8
    cp = L.llama_context_default_params()
    cp.n_ctx = batch_max * (len(prompt) + args.new_tokens + 16)
    cp.n_batch = cp.n_ubatch = 512
    cp.n_seq_max = batch_max
    cp.n_threads = cp.n_threads_batch = args.threads
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(512, 0, batch_max)

    def submit(entries):  # entries: (token, pos, seq, want_logits)
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, want
            batch.seq_id[i][0] = seq
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))

    def run(bsz: int) -> Dict[str, float]:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        plen = len(prompt) if bsz == 1 else min(len(prompt), args.b8_prompt_tokens)
        start = time.perf_counter()
        nxt = []
        for s in range(bsz):
            # Distinct first token per sequence, as on our side (no shared prefix).
            toks = [prompt[0] + s] + prompt[1:plen]
            submit([(t, p, s, p == len(toks) - 1) for p, t in enumerate(toks)])
            nxt.append(argmax(len(toks) - 1))
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for step in range(args.new_tokens - 1):
            submit([(nxt[s], plen + step, s, True) for s in range(bsz)])
            nxt = [argmax(s) for s in range(bsz)]
        decode = time.perf_counter() - start
        return {"prefill_tokens_per_s": bsz * plen / prefill, "decode_tokens_per_s": bsz * (args.new_tokens - 1) / decode}

    run(1)  # warm-up
    out = {"prompt_tokens": len(prompt), "version": L.__version__, "runs": interleaved(lambda bsz, r: run(bsz), args.repeats)}
    print(json.dumps(out))


# ----------------------------------------------------------------------------------------------------- ours


def ours(args: argparse.Namespace, model: str) -> Dict:
    from mlc_llm import _core

    cfg = {"verbose": False, "max_total_sequence_length": 8 * (args.prompt_tokens + args.new_tokens + 16),
           "max_num_sequence": 8, "prefill_chunk_size": 512, "prefix_cache": False,
           "quantized_matmul": not args.ours_dequantized}
    engine = _core.Engine(model, "cpu", json.dumps(cfg))
    prompt = engine.tokenize(PROMPT_TEXT, False)[: args.prompt_tokens]
    params = json.dumps({"temperature": 0.0, "max_tokens": args.new_tokens, "ignore_eos": True})

    def run(bsz: int, tag: str) -> Dict[str, float]:
        ids = [f"{tag}-{i}" for i in range(bsz)]
        plen = len(prompt) if bsz == 1 else min(len(prompt), args.b8_prompt_tokens)
        start = time.perf_counter()
        for i, rid in enumerate(ids):
            engine.add_request(rid, [prompt[0] + i] + prompt[1:plen], params)
        usage: Dict[str, dict] = {}
        while len(usage) < bsz:
            for d in engine.poll(100):
                if d["finish_reason"] is not None:
                    usage[d["request_id"]] = d["usage"]
        wall = time.perf_counter() - start
        ttft = max(u["ttft_s"] for u in usage.values())
        return {"prefill_tokens_per_s": bsz * plen / ttft, "decode_tokens_per_s": bsz * (args.new_tokens - 1) / (wall - ttft)}

    run(1, "warmup")
    out = {"prompt_tokens": len(prompt), "runs": interleaved(lambda bsz, r: run(bsz, f"b{bsz}r{r}"), args.repeats)}
    engine.terminate()
    return out


# ------------------------------------------------------------------------------------------------- driver


def median(runs: List[Dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(side: Dict) -> Dict[str, float]:
    return {
        "prefill_256": median(side["runs"]["1"], "prefill_tokens_per_s"),
        "decode_b1": median(side["runs"]["1"], "decode_tokens_per_s"),
        "decode_b8": median(side["runs"]["8"], "decode_tokens_per_s"),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwen-gguf", default=os.environ.get("MLC_QWEN15_GGUF"), help="a 1.5B-class Q4_K_M GGUF")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--b8-prompt-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llama-python", default="/tmp/llamavenv/bin/python")
    ap.add_argument("--ours-dequantized", action="store_true", help="our f32 reference path instead of the default")
    ap.add_argument("--out", default=f"benches/results/cpu_{time.strftime('%Y-%m-%d', time.gmtime())}.json")
    ap.add_argument("--llama-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_worker:
        llama_worker(args)
        return
    os.environ["MLC_CPU_THREADS"] = str(args.threads)
    from mlc_llm.examples.default_model import smollm2_path

    models = {"SmolLM2-135M Q4_1": smollm2_path()}
    if args.qwen_gguf:
        models["Qwen2.5-1.5B Q4_K_M"] = args.qwen_gguf
    results = {}
    load_start = os.getloadavg()
    for name, path in models.items():
        cmd = [args.llama_python, os.path.abspath(__file__), "--llama-worker", "--model", path, "--threads", str(args.threads),
               "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
               "--b8-prompt-tokens", str(args.b8_prompt_tokens), "--repeats", str(args.repeats)]
        llama = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        mine = ours(args, path)
        results[name] = {"path": os.path.basename(path), "llama_cpp": llama, "ours": mine,
                         "median": {"llama_cpp": summarize(llama), "ours": summarize(mine)}}
    print(f"\n{'model':22} {'metric (tok/s)':15} {'llama.cpp':>10} {'ours':>10} {'ratio':>7}")
    for name, r in results.items():
        for metric in ("decode_b1", "decode_b8", "prefill_256"):
            a, b = r["median"]["llama_cpp"][metric], r["median"]["ours"][metric]
            print(f"{name:22} {metric:15} {a:10.1f} {b:10.1f} {b / a:7.2f}")
        m = r["median"]["ours"]
        print(f"{name:22} {'ours b8 / b1':15} {'':10} {'':10} {m['decode_b8'] / m['decode_b1']:7.2f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    result = {
        "commit": commit + ("-dirty" if dirty else ""),
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "threads": args.threads,
        # Other processes on the machine skew both sides; the load average says how busy it was.
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "command": " ".join(["python"] + sys.argv),
        # Kernel switches our side ran under (e.g. MLC_CPU_KQUANT_ACT, MLC_CPU_ISA), set or not.
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MLC_CPU_")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "new_tokens": args.new_tokens,
        "b8_prompt_tokens": args.b8_prompt_tokens,
        "repeats": args.repeats,
        "ours_weights": "dequantized f32" if args.ours_dequantized else "default (quantized, our CPU kernels)",
        "models": results,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("saved", args.out)


if __name__ == "__main__":
    main()
