"""CPU throughput of the engine on the embedded SmolLM2-135M-Instruct (Q4_1 GGUF).

Prefill tokens/s (one 256-token prompt) and decode tokens/s at batch 1 and batch 8 (128 new tokens each,
ignore_eos), for the default dequantized-f32 weights and for candle's quantized matmul. Prints a table and
saves JSON under benches/results/ with the commit, the machine and the command.

    python benches/bench_cpu.py [--out benches/results/cpu_smollm2.json] [--new-tokens 128]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

from mlc_llm import _core
from mlc_llm.examples.default_model import smollm2_path


def _drain(engine: "_core.Engine", ids: List[str]) -> Dict[str, dict]:
    done: Dict[str, dict] = {}
    while len(done) < len(ids):
        for d in engine.poll(100):
            if d["finish_reason"] is not None:
                done[d["request_id"]] = d["usage"]
    return done


def _run(engine: "_core.Engine", prompt: List[int], batch: int, new_tokens: int, tag: str) -> Dict[str, float]:
    ids = [f"{tag}-{i}" for i in range(batch)]
    params = json.dumps({"temperature": 0.0, "max_tokens": new_tokens, "ignore_eos": True})
    start = time.perf_counter()
    for i, rid in enumerate(ids):
        # Distinct first token per request so the prefix cache does not skip the prefill.
        engine.add_request(rid, [prompt[0] + i] + prompt[1:], params)
    usage = _drain(engine, ids)
    wall = time.perf_counter() - start
    ttft = max(u["ttft_s"] for u in usage.values())
    decode_time = wall - ttft
    return {
        "batch": batch,
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "wall_s": wall,
        "ttft_s": ttft,
        "prefill_tokens_per_s": batch * len(prompt) / ttft,
        "decode_tokens_per_s": batch * (new_tokens - 1) / decode_time,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benches/results/cpu_smollm2.json")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    args = ap.parse_args()
    model = smollm2_path()
    rows = []
    for quantized in (False, True):
        cfg = {"verbose": False, "max_total_sequence_length": 8192, "max_num_sequence": 8,
               "prefix_cache": False, "quantized_matmul": quantized}
        engine = _core.Engine(model, "cpu", json.dumps(cfg))
        text = "The history of the city is long and full of stories. " * 40
        prompt = engine.tokenize(text, False)[: args.prompt_tokens]
        _run(engine, prompt[:16], 1, 4, "warmup")
        for batch in (1, 8):
            r = _run(engine, prompt, batch, args.new_tokens, f"b{batch}q{int(quantized)}")
            r["weights"] = "q4_1 quantized matmul" if quantized else "dequantized f32 (default)"
            rows.append(r)
        engine.terminate()
    print(f"{'weights':28} {'batch':>5} {'prefill tok/s':>14} {'decode tok/s':>13} {'TTFT s':>8}")
    for r in rows:
        print(f"{r['weights']:28} {r['batch']:>5} {r['prefill_tokens_per_s']:>14.1f} {r['decode_tokens_per_s']:>13.1f} {r['ttft_s']:>8.2f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "commit": commit,
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": os.path.basename(model),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("saved", args.out)


if __name__ == "__main__":
    main()
