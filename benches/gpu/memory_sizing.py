"""Checks server-mode memory sizing on a GPU: the engine sizes its KV cache from device memory x
gpu_memory_utilization minus weights and workspaces (MLC's formula), so that after loading and serving a
batch the device's used memory stays under that fraction; too small a fraction is an error that says
what to change. Prints one JSON object (and writes it to --out).

    python benches/gpu/memory_sizing.py --model /tmp/mlc_bench_llama3-8b --out $OUT/memory_sizing.json

Run on the GPU host after benches/bench_gpu.py's setup phase wrote the model (PYTHONPATH: the installed
wheel). Used memory comes from nvidia-smi, so it includes the CUDA context and cuBLAS workspaces.
"""

import argparse
import json
import subprocess
import time


def used_and_total_mib() -> tuple:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    used, total = (int(x) for x in out.split(","))
    return used, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    ap.add_argument("--utilization", type=float, default=0.85)
    a = ap.parse_args()
    from mlc_llm import _core

    before, total = used_and_total_mib()
    r = {"total_mib": total, "used_before_mib": before, "gpu_memory_utilization": a.utilization}
    t = time.perf_counter()
    cfg = {"verbose": True, "mode": "server", "gpu_memory_utilization": a.utilization}
    eng = _core.Engine(a.model, "cuda:0", json.dumps(cfg))
    try:
        info = json.loads(eng.info())
        r["load_s"] = round(time.perf_counter() - t, 2)
        r["sizes"] = {k: info.get(k) for k in ("max_num_sequence", "max_total_sequence_length", "prefill_chunk_size",
                                               "kv_block_size", "num_kv_blocks", "context_window_size")}
        r["used_after_load_mib"] = used_and_total_mib()[0]
        # Serve a batch so that activations, graphs and sampling buffers exist too.
        params = json.dumps({"temperature": 0.7, "max_tokens": 32, "ignore_eos": True, "seed": 1})
        for i in range(64):
            eng.add_request(f"m{i}", [100 + i] * 512, params)
        done, deadline = 0, time.time() + 120
        while done < 64 and time.time() < deadline:
            for d in eng.poll(1000):
                done += d["finish_reason"] is not None
        r["requests_finished"] = done
        r["used_after_serving_mib"] = used_and_total_mib()[0]
        r["metrics"] = {k: v for k, v in json.loads(eng.metrics()).items() if k.startswith(("num_", "cuda_"))}
    finally:
        eng.terminate()
    r["budget_mib"] = round(total * a.utilization)
    r["within_budget"] = r["used_after_serving_mib"] <= r["budget_mib"]
    # Not enough memory: weights alone exceed 15 % of an 80 GB card.
    try:
        e = _core.Engine(a.model, "cuda:0", json.dumps({"verbose": False, "mode": "server", "gpu_memory_utilization": 0.15}))
        e.terminate()
        r["small_budget_error"] = None
    except Exception as ex:  # the typed error the binding raises
        r["small_budget_error"] = {"type": type(ex).__name__, "message": str(ex)}
    print(json.dumps(r, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
