"""Batch-1 greedy decode of one model on cuda:0, for a profiler to look at (e.g. `nsys profile
--cuda-graph-trace=node python benches/gpu/profile_decode.py MODEL`): a warm-up request (captures the CUDA
graphs), then one timed request of --new tokens after a 128-token prompt. Prints the decode tok/s of the
timed request and writes it as JSON to --out.

    python benches/gpu/profile_decode.py /tmp/mlc_bench_llama3-8b_q4f16_1-MLC --new 256 --out prof.json
"""

import argparse
import json
import random
import time
import zlib


def decode(engine, prompt, new: int, rid: str) -> dict:
    params = json.dumps({"temperature": 0.0, "max_tokens": new, "ignore_eos": True})
    t0 = time.perf_counter()
    engine.add_request(rid, prompt, params)
    first = None
    ids = []
    while True:
        for d in engine.poll(20):
            if d["token_ids"]:
                if first is None:
                    first = time.perf_counter()
                ids += d["token_ids"]
            if d["finish_reason"] is not None:
                end = time.perf_counter()
                # The ids' checksum lets runs under different settings be compared token for token.
                return {"tokens": len(ids), "ttft_ms": (first - t0) * 1e3, "decode_tok_s": (len(ids) - 1) / (end - first),
                        "ids_head": ids[:8], "ids_crc32": zlib.crc32(json.dumps(ids).encode())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--config", default="{}", help="extra engine config JSON")
    ap.add_argument("--warmup", type=int, default=32, help="tokens of the warm-up request (captures the graphs)")
    ap.add_argument("--out")
    args = ap.parse_args()
    from mlc_llm import _core

    cfg = {"verbose": False, "mode": "local", "max_num_sequence": 1, "max_total_sequence_length": 4096, **json.loads(args.config)}
    engine = _core.Engine(args.model, "cuda:0", json.dumps(cfg))
    info = json.loads(engine.info())
    rng = random.Random(0)
    prompt = [rng.randrange(10, info["vocab_size"] - 1) for _ in range(128)]
    decode(engine, prompt, args.warmup, "warmup")
    r = decode(engine, prompt, args.new, "timed")
    r.update(model=args.model, dtype=info.get("dtype"), cuda_graph=info.get("cuda_graph"), config=cfg)
    print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f, indent=1)
    engine.terminate()


if __name__ == "__main__":
    main()
