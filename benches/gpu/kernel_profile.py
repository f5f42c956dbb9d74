"""Where one decode step's GPU time goes, kernel by kernel: Nsight Compute times every kernel of two
batch-1 greedy runs (benches/gpu/profile_decode.py) that differ only in how many tokens they decode, and
the difference divided by the difference in steps is one decode step's kernels, with the prefill, the
warm-up and the graph capture cancelled out. Beside them, the same decode without the profiler gives the
step's wall time, so `wall - sum of kernels` is what the step spends between kernels (launch latency
inside the CUDA graph, host work).

    python benches/gpu/kernel_profile.py /tmp/mlc_bench_llama3-8b --out $OUT/profile_bf16.json

Kernels run one at a time under the profiler (no overlap) with caches left as they are
(`--cache-control none`) and clocks left alone (`--clock-control none`), so a kernel's figure is its time
alone on the GPU. Writes the per-kernel table (name, launches per step, us per step, share of the
step) to --out as JSON and prints it.
"""

import argparse
import collections
import csv
import io
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_decode(python: str, model: str, new: int, config: str, ncu: str = "", log: str = "") -> dict:
    """One profile_decode.py run; under ncu when `ncu` is given (its CSV goes to `log`)."""
    out = log + ".decode.json" if log else os.path.join("/tmp", f"kp_{os.getpid()}_{new}.json")
    cmd = [python, os.path.join(HERE, "profile_decode.py"), model, "--new", str(new), "--config", config, "--out", out,
           "--warmup", "4" if ncu else "32"]
    if ncu:
        cmd = [ncu, "--csv", "--print-units", "base", "--metrics", "gpu__time_duration.sum", "--cache-control", "none",
               "--clock-control", "none", "--target-processes", "all", "--print-kernel-base", "function",
               "--log-file", log] + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        r = json.load(f)
    os.remove(out)
    r["wall_s"] = time.perf_counter() - t0
    return r


def kernel_totals(log: str) -> dict:
    """ncu's CSV log -> {"kernel grid block": [launches, total ns]} (the grid tells a GEMM's shapes apart)."""
    with open(log) as f:
        text = f.read()
    start = text.find('"ID"')
    if start < 0:
        raise RuntimeError(f"no CSV in {log}: {text[-2000:]}")
    totals = collections.defaultdict(lambda: [0, 0.0])
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        t = totals[f'{row["Kernel Name"]} {row["Grid Size"].replace(" ", "")} {row["Block Size"].replace(" ", "")}']
        t[0] += 1
        t[1] += float(row["Metric Value"].replace(",", ""))
    return totals


def step_rows(short: dict, long: dict, steps: int) -> list:
    """One step's kernels from the totals of two runs `steps` decode steps apart, slowest first: launches
    and us per step (what both runs share, prefill and warm-up, cancels out)."""
    rows = []
    for name in set(short) | set(long):
        a = short.get(name, [0, 0.0])
        b = long.get(name, [0, 0.0])
        launches = (b[0] - a[0]) / steps
        us = (b[1] - a[1]) / steps / 1e3
        if launches > 0 or abs(us) > 0.05:
            rows.append({"kernel": name, "launches_per_step": launches, "us_per_step": us})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--config", default="{}", help="extra engine config JSON (profile_decode.py --config)")
    ap.add_argument("--steps-a", type=int, default=4, help="decode tokens of the shorter profiled run")
    ap.add_argument("--steps-b", type=int, default=12, help="decode tokens of the longer profiled run")
    ap.add_argument("--wall-tokens", type=int, default=256, help="decode tokens of the unprofiled timing run")
    ap.add_argument("--ncu", default="ncu")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    wall = run_decode(args.python, args.model, args.wall_tokens, args.config)
    step_us = 1e6 / wall["decode_tok_s"]
    logs, totals = {}, {}
    for n in (args.steps_a, args.steps_b):
        logs[n] = f"{args.out}.ncu_{n}.csv"
        run_decode(args.python, args.model, n, args.config, ncu=args.ncu, log=logs[n])
        totals[n] = kernel_totals(logs[n])
    rows = step_rows(totals[args.steps_a], totals[args.steps_b], args.steps_b - args.steps_a)
    kernels_us = sum(r["us_per_step"] for r in rows)
    for r in rows:
        r["pct_of_step"] = 100.0 * r["us_per_step"] / step_us
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    result = {
        "device": gpu,
        "what": "one batch-1 decode step's kernels (ncu, difference of two runs) and its wall time",
        "label": args.label, "model": args.model, "config": args.config, "command": " ".join(sys.argv),
        "decode_tok_s": wall["decode_tok_s"], "step_us": step_us, "kernels_us": kernels_us,
        "between_kernels_us": step_us - kernels_us, "launches_per_step": sum(r["launches_per_step"] for r in rows),
        "steps_profiled": [args.steps_a, args.steps_b], "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for n, log in logs.items():
        os.remove(log)
    print(f"{args.label or args.model}: {wall['decode_tok_s']:.1f} tok/s, step {step_us:.1f} us, kernels "
          f"{kernels_us:.1f} us ({result['launches_per_step']:.0f} launches), between kernels {step_us - kernels_us:.1f} us")
    print(f"{'kernel grid block':<80} {'launches':>8} {'us/step':>9} {'% step':>7}")
    for r in rows[:50]:
        print(f"{r['kernel'][:80]:<80} {r['launches_per_step']:>8.1f} {r['us_per_step']:>9.1f} {r['pct_of_step']:>7.1f}")


if __name__ == "__main__":
    main()
