"""Engine-ready probe: how long our engine takes to construct and to answer its first request.

    python benches/gpu/ready_probe.py --model /tmp/mlc_bench_llama3-8b --tag fresh --out $OUT/ready_fresh.json

Constructs `mlc_llm._core.Engine(model, "cuda:0", config)` with benches/gpu/phase_ours.py's configuration of
the bf16 run (server mode, max_num_sequence 256, prefill_chunk_size 2048, max_total_sequence_length 73728),
then answers one 1-token greedy request (prompt [11, 12, 13, 14], as phase_ours.py's readiness probe) and a
second one. Prints and writes one JSON object:
  import_s           import of mlc_llm._core
  construct_s        Engine(...) returned
  first_answer_s     from then to the first request's finish (what a fresh machine used to pay in JIT)
  ready_s            construct_s + first_answer_s (phase_ours.py's `ready_s`)
  second_answer_s    the same request again: the steady cost of a 1-token request
  startup_s          the engine's own phases of construction (EngineInfo.startup_s)
  env                CUDA_CACHE_PATH, CUDA_CACHE_DISABLE, MLC_KERNEL_IMAGES, MLC_PRELOAD_KERNELS
  jit_cache_bytes    bytes under CUDA_CACHE_PATH after the run (what the driver's JIT cache holds)
The engine's log (RUST_LOG=mlc_core=info: per-module load times, phases) goes to stderr.
"""

import argparse
import json
import os
import sys
import time

CONFIG = {"verbose": False, "mode": "server", "max_num_sequence": 256, "prefill_chunk_size": 2048,
          "max_total_sequence_length": 73728}


def _answer(engine, rid: str, timeout_s: float) -> float:
    params = json.dumps({"temperature": 0.0, "max_tokens": 1, "ignore_eos": True})
    t = time.perf_counter()
    engine.add_request(rid, [11, 12, 13, 14], params)
    while True:
        for d in engine.poll(5):
            if d["request_id"] == rid and d["finish_reason"] is not None:
                if d["finish_reason"] not in ("length", "stop"):
                    raise RuntimeError(f"{rid}: {d['finish_reason']} {d.get('error')}")
                return time.perf_counter() - t
        if time.perf_counter() - t > timeout_s:
            engine.abort(rid)
            raise TimeoutError(f"{rid} did not finish in {timeout_s:.0f} s")


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/mlc_bench_llama3-8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tag", default="probe")
    ap.add_argument("--config", default=None, help="engine config JSON (default: phase_ours.py's bf16 run)")
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cfg = json.loads(a.config) if a.config else CONFIG
    env = {k: os.environ.get(k) for k in ("CUDA_CACHE_PATH", "CUDA_CACHE_DISABLE", "CUDA_MODULE_LOADING",
                                          "MLC_KERNEL_IMAGES", "MLC_PRELOAD_KERNELS")}
    r = dict(tag=a.tag, model=a.model, device=a.device, engine_config=cfg, env=env)
    t = time.perf_counter()
    from mlc_llm import _core

    r["import_s"] = time.perf_counter() - t
    r["core_file"] = _core.__file__
    t = time.perf_counter()
    engine = _core.Engine(a.model, a.device, json.dumps(cfg))
    r["construct_s"] = time.perf_counter() - t
    try:
        info = json.loads(engine.info())
        r["startup_s"] = info.get("startup_s")
        r["engine_info"] = {k: info.get(k) for k in ("model", "dtype", "cuda_graph", "num_kv_blocks", "kv_block_size")}
        r["first_answer_s"] = _answer(engine, "ready", a.timeout_s)
        r["ready_s"] = r["construct_s"] + r["first_answer_s"]
        r["second_answer_s"] = _answer(engine, "again", a.timeout_s)
    except Exception as e:  # keep what was measured
        r["error"] = f"{type(e).__name__}: {e}"
    finally:
        engine.terminate()
    cache = env["CUDA_CACHE_PATH"]
    if cache and os.path.isdir(cache):
        r["jit_cache_bytes"] = _dir_bytes(cache)
    line = json.dumps(r)
    print(line, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    sys.exit(1 if "error" in r else 0)


if __name__ == "__main__":
    main()
