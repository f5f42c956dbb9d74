"""End-to-end GPU benchmark: our engine against HF transformers on a random model of a real model's shape
(Llama-3-8B by default, Gemma-2-9B with --shape gemma2-9b), with the physical floor beside every row.

    python benches/bench_gpu.py --out $OUT/bench_gpu.json                 # H100: bf16, batches 1..256, HF peer
    python benches/bench_gpu.py --out $OUT/bench_gpu_q4.json --gguf-q4 --skip-hf   # + Q4_0 GGUF, batch 1
    python benches/bench_gpu.py --shape gemma2-9b --batches 1,16,64,256 --hf-batches 1,64 --out $OUT/g.json
    python benches/bench_gpu.py --shape tiny --device cpu --torch-python /opt/refvenv/bin/python --out /tmp/b.json
    python benches/bench_gpu.py --shape gemma2-tiny --device cpu --torch-python /opt/refvenv/bin/python --out /tmp/g.json

On the GPU host run it through benches/gpu/run_on_host.sh, which installs the carried wheels first
(about 7 minutes for the default run on one H100; the device call allows 10):

    run(command="bash benches/gpu/run_on_host.sh", carry=["dist/cuda", "dist/pywheels"],
        kind="nvidia-h100-x1", timeout_s=600)

Phases, each in its own process (a crash, a CUDA error or a hang in one cannot take the others down, and
the GPU is free again when it exits); each phase writes what it measured as it goes, the orchestrator
records the error of a failed phase and goes on:
  bandwidth  torch: device-to-device copy of a 2 GiB tensor (CUDA events, median of 20) and an
             8192^3 bf16 matmul: the bandwidth and compute rate the floors are computed from
  setup      torch + transformers: random bf16 weights made on the device (LlamaForCausalLM, or
             Gemma2ForCausalLM for an `arch: gemma2` shape, ._from_config, normal init with std --init-std
             (Gemma's norms stay at their 1 + 0)), save_pretrained to
             --model-dir with a word-level tokenizer.json; with --gguf-q4 also a Q4_0 GGUF of the same
             weights (benches/gpu/gguf_q4.py). Reused when the directory already holds the same spec.
  ours       mlc_llm._core.Engine(dir, "cuda:0", server mode, max_num_sequence = largest batch,
             prefill_chunk_size 2048): a warmup, then per batch size a short warmup run and a 128 + 128
             run (greedy, ignore_eos, distinct random prompts); the 2048-token TTFT (median of --ttft-reps
             after one warmup) right after batch 1
  ours_q4    the same on the Q4_0 GGUF with quantized matmul (--gguf-q4; batch 1 by default), TTFT included
             With --long BATCHxPROMPT,... also long-context decode rows (prompt lengths 1k-8k: the KV cache read
             every step), with --open-requests N an open workload (N ShareGPT-like requests submitted at once,
             the KV cache sized from memory as a server runs: output tok/s, request rate, TTFT p50 / p99), and
             always the engine-ready time (constructed, and one request answered).
  hf         transformers on the same directory: 2048-token prefill (eager forward, median), then
             generate(cache_implementation="static") per batch size: one warmup (compiles), --hf-reps timed
             runs, prefill-only runs; decode tok/s = batch * (new - 1) / (generate time - prefill time).
             If static cache fails, eager generate, marked in the mode column. Attention: transformers'
             default for the model (sdpa), or --hf-attn; Gemma 2 with sdpa runs without its attention
             soft-capping (transformers' sdpa path ignores softcap), which the notes say.
--only PHASES runs only those (e.g. `--only setup` writes the model while something else uses the GPU).

Floors (benches/gpu/shapes.py): per decode step max(bytes / measured bandwidth, flops / measured matmul
rate), bytes = linear weights incl. lm_head (a tied one too: Gemma reads its embedding table as the lm_head)
+ norms + KV of every sequence at the mean context (sliding layers: at most their window); floor tok/s =
batch / step. % of floor = measured / floor (TTFT: floor time / measured time).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from gpu import shapes  # noqa: E402
from gpu.record import Recorder, read_records  # noqa: E402

# Per-phase wall limits on the GPU (s): cap, and the least worth starting with. The defaults fit the
# 8B shape on one H100 inside --budget-s 500 (a device call may run 600 s).
PHASE_LIMITS = {
    "bandwidth": (60, 15),
    "setup": (200, 40),
    "ours": (300, 40),
    "ours_q4": (120, 30),
    "ours_kv8": (200, 30),
    "mlc_convert": (240, 40),
    "ours_mlc": (180, 30),
    "hf": (300, 60),
}


def _run_child(phase: str, python: str, args: dict, rec_path: str, timeout_s: float) -> dict:
    cmd = [python, os.path.abspath(__file__), "--child", phase, "--child-args", json.dumps(args),
           "--child-out", rec_path]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    extra = os.environ.get("BENCH_ENGINE_PYTHONPATH")
    if extra and phase in ("ours", "ours_kv8", "ours_q4", "mlc_convert", "ours_mlc"):
        # the installed mlc_llm goes on the path of our engine's phases only (run_on_host.sh)
        env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t = time.perf_counter()
    rc: Optional[int]
    try:
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, timed_out = None, True
    except OSError as e:
        return dict(rc=None, timed_out=False, wall_s=0.0, spawn_error=str(e))
    return dict(rc=rc, timed_out=timed_out, wall_s=time.perf_counter() - t)


def _child_main(phase: str, args_json: str, out: str) -> None:
    a = json.loads(args_json)
    rec = Recorder(out, phase)
    try:
        if phase in ("ours", "ours_kv8", "ours_q4", "ours_mlc"):
            from gpu.phase_ours import phase_ours

            phase_ours(a, rec)
        elif phase == "mlc_convert":
            from gpu.mlc_convert import phase_mlc_convert

            phase_mlc_convert(a, rec)
        elif phase == "setup":
            from gpu.phase_torch import phase_setup

            phase_setup(a, rec)
        elif phase == "bandwidth":
            from gpu.phase_torch import phase_bandwidth

            phase_bandwidth(a, rec)
        elif phase == "hf":
            from gpu.phase_torch import phase_hf

            phase_hf(a, rec)
        else:
            raise ValueError(f"unknown phase {phase}")
        rec.put("done")
    except BaseException as e:
        rec.error(phase, e)
        sys.exit(1)


def _git_commit() -> dict:
    out: Dict[str, object] = {}
    root = os.path.dirname(HERE)
    if os.environ.get("MLC_BENCH_COMMIT"):
        # The copy of the tree on a GPU host may carry a stale .git: the caller names the commit.
        out["commit"] = os.environ["MLC_BENCH_COMMIT"]
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=10)
        if r.returncode == 0:
            out.setdefault("commit", r.stdout.strip())
            d = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=root, timeout=10)
            out["dirty"] = bool(d.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open(os.path.join(root, "dist", "cuda", "build_info.json")) as f:
            out["wheel_build_info"] = json.load(f)
        out.setdefault("commit", out["wheel_build_info"].get("commit"))
    except (OSError, ValueError):
        pass
    out.setdefault("commit", os.environ.get("MLC_BENCH_COMMIT", "unknown"))
    return out


def _device_name(device: str) -> str:
    if device == "cpu":
        return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "unknown GPU"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown GPU"


def _fmt(v, spec: str) -> str:
    if v is None:
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(v, spec)


def build_rows(result: dict) -> List[dict]:
    """Measured rows with their floors; also attaches floors to result["rows"]."""
    shape = result["shape"]
    bw = result.get("bandwidth", {})
    bandwidth = bw.get("bandwidth_Bps") or result["fallback_bandwidth_Bps"]
    peak = bw.get("matmul_flops") or result["fallback_matmul_flops"]
    rows = []
    for r in result["decode_rows"]:
        f = shapes.decode_floor(shape, r["precision"], r["batch"],
                                r["prompt_tokens"], r["new_tokens"], bandwidth, peak)
        row = dict(r, **f)
        row["pct_of_floor"] = 100.0 * r["decode_tok_s"] / f["floor_tok_s"] if r.get("decode_tok_s") else None
        rows.append(row)
    ttft = []
    for r in result["ttft_rows"]:
        f = shapes.prefill_floor(shape, r["precision"], r["prompt_tokens"],
                                 bandwidth, peak)
        row = dict(r, **f)
        row["pct_of_floor"] = 100.0 * f["floor_ms"] / r["ttft_ms"] if r.get("ttft_ms") else None
        ttft.append(row)
    result["rows"] = rows
    result["ttft"] = ttft
    result["floor_inputs"] = dict(bandwidth_Bps=bandwidth, matmul_flops=peak,
                                  measured=bool(bw.get("bandwidth_Bps")))
    return rows


def print_table(result: dict) -> None:
    build_rows(result)
    print()
    print(f"device: {result['device']}   commit: {result['commit'].get('commit')}   shape: {result['shape_name']}")
    fi = result["floor_inputs"]
    print(f"floor inputs: bandwidth {fi['bandwidth_Bps'] / 1e12:.3f} TB/s, matmul {fi['matmul_flops'] / 1e12:.1f} TFLOP/s"
          f" ({'measured in this run' if fi['measured'] else 'NOT measured: fallback anchors'})")
    hdr = (f"{'engine':22} {'precision':9} {'batch':>5} {'prompt':>6} {'decode tok/s':>13} {'floor tok/s':>12} {'% floor':>8}"
           f"  {'steady tok/s':>12} {'x HF':>6}  notes")
    print(hdr)
    print("-" * len(hdr))
    key = lambda r: (r["batch"], r["precision"], r["prompt_tokens"])  # noqa: E731
    hf = {key(r): r.get("decode_tok_s") for r in result["rows"] if r["engine"] == "hf"}
    order = sorted(result["rows"], key=lambda r: (r["precision"] in ("q4_0", "q4f16_1"), r["prompt_tokens"], r["batch"], r["engine"] != "ours"))
    for r in order:
        name = "ours (mlc_llm)" if r["engine"] == "ours" else "HF transformers"
        note = r.get("mode", "")
        vs = r["decode_tok_s"] / hf[key(r)] if r["engine"] == "ours" and r.get("decode_tok_s") and hf.get(key(r)) else None
        print(f"{name:22} {r['precision']:9} {r['batch']:>5} {r['prompt_tokens']:>6} {_fmt(r.get('decode_tok_s'), '13.1f')} "
              f"{r['floor_tok_s']:12.1f} {_fmt(r.get('pct_of_floor'), '7.1f')}% "
              f" {_fmt(r.get('steady_tok_s'), '12.1f')} {_fmt(vs, '6.2f')}  {note}")
    for s in result["skipped"]:
        print(f"{s.get('engine', ''):22} {s.get('precision', ''):9} {str(s.get('batch', '')):>5} SKIPPED: {s['reason']}")
    print()
    hdr = f"{'engine':22} {'precision':9} {'prompt':>6} {'TTFT ms':>9} {'floor ms':>9} {'% floor':>8} {'x HF':>6}  notes"
    print(hdr)
    print("-" * len(hdr))
    hf_ttft = {r["precision"]: r["ttft_ms"] for r in result["ttft"] if r["engine"] == "hf"}
    for r in result["ttft"]:
        name = "ours (mlc_llm)" if r["engine"] == "ours" else "HF transformers"
        h = hf_ttft.get(r["precision"])
        vs = h / r["ttft_ms"] if r["engine"] == "ours" and h and r.get("ttft_ms") else None
        print(f"{name:22} {r['precision']:9} {r['prompt_tokens']:>6} {r['ttft_ms']:9.2f} {r['floor_ms']:9.2f} "
              f"{_fmt(r.get('pct_of_floor'), '7.1f')}% {_fmt(vs, '6.2f')}  {r.get('mode', '')}")
    print("x HF: our speed relative to HF transformers at the same batch and precision (decode: tok/s ratio;"
          " TTFT: HF ms / our ms)")
    if result.get("open_rows"):
        print()
        hdr = f"{'open workload':22} {'precision':9} {'requests':>8} {'output tok/s':>12} {'req/s':>7} {'TTFT p50 s':>10} {'TTFT p99 s':>10} {'wall s':>7}"
        print(hdr)
        print("-" * len(hdr))
        for r in result["open_rows"]:
            print(f"{'ours (mlc_llm)':22} {r['precision']:9} {r['requests']:>8} {r['output_tok_s']:12.1f} {r['requests_per_s']:7.2f} "
                  f"{r['ttft_p50_s']:10.3f} {r['ttft_p99_s']:10.3f} {r['wall_s']:7.1f}")
            b = r.get("breakdown")
            if b and b.get("decode_steps") is not None:
                print(f"    decode-only steps {b['decode_steps']} ({b['decode_step_time_s']:.1f} s, mean batch "
                      f"{_fmt(b['decode_mean_batch'], '.0f')}, {_fmt(b['decode_ms_per_step'], '.2f')} ms); steps with prefill "
                      f"{b['prefill_steps']} ({b['prefill_step_time_s']:.1f} s, {b['prefill_step_tokens']} prefill + "
                      f"{b['prefill_step_decodes']} decode tokens); outside steps {b['outside_steps_s']:.1f} s; "
                      f"running at each tenth of the wall: {r.get('running_at_tenths')}")
    if result.get("engine_ready"):
        print()
        for phase, r in result["engine_ready"].items():
            print(f"engine ready ({phase}): constructed in {_fmt(r.get('load_s'), '.2f')} s, first request answered at "
                  f"{_fmt(r.get('ready_s'), '.2f')} s")
    print()
    print("phases:")
    for name, p in result["phases"].items():
        err = f"  ERROR: {p['errors'][0][:200]}" if p.get("errors") else ""
        print(f"  {name:10} {p.get('status', '?'):10} {p.get('wall_s', 0):7.1f} s{err}")
    if result.get("notes"):
        print("notes:")
        for n in result["notes"]:
            print("  -", n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benches/results/gpu_bench.json")
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model-dir", help="where the random HF model is written (default /tmp/mlc_bench_<shape>)")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="interpreter with torch + transformers + tokenizers (default: this one)")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--hf-batches", default="1,16,64")
    ap.add_argument("--q4-batches", default="1")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ttft-prompt", type=int, default=2048)
    ap.add_argument("--ttft-reps", type=int, default=5)
    ap.add_argument("--hf-reps", type=int, default=3, help="timed generate runs per batch after the warmup")
    ap.add_argument("--hf-mode", default="static", choices=["static", "eager"])
    ap.add_argument("--hf-attn", default=None, choices=["eager", "sdpa"],
                    help="HF attention implementation (default: transformers' default for the model)")
    ap.add_argument("--only", default=None, help="comma-separated phases to run (of bandwidth, setup, ours, hf, ...)")
    ap.add_argument("--kv-fp8", action="store_true",
                    help="also run the bf16 model with an FP8 e4m3 KV cache (kv_cache_dtype fp8_e4m3): batches and long rows")
    ap.add_argument("--gguf-q4", action="store_true", help="also write a Q4_0 GGUF and run our engine on it")
    ap.add_argument("--mlc-q4", action="store_true",
                    help="also convert the model to MLC q4f16_1 with `mlc_llm convert_weight` and run our engine on it")
    ap.add_argument("--gguf-type", default="q4_0", choices=["q4_0", "f16", "f32"], help=argparse.SUPPRESS)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--long", default="", help="long-context decode rows of our engine, BATCHxPROMPT comma-separated "
                    "(e.g. 64x1000,16x4000,4x8000,1x8000)")
    ap.add_argument("--long-new", type=int, default=64, help="tokens generated per sequence in the --long rows")
    ap.add_argument("--open-requests", type=int, default=0,
                    help="open workload: this many ShareGPT-like requests (lognormal lengths, median ~160 in / 150 out) "
                         "submitted at once to our engine (0: skip)")
    ap.add_argument("--open-max-running", type=int, default=256, help="max_num_sequence of the open workload")
    ap.add_argument("--budget-s", type=float, default=500.0, help="wall budget for all phases")
    ap.add_argument("--request-timeout-s", type=float, default=150.0)
    args = ap.parse_args()
    if args.child:
        _child_main(args.child, args.child_args, args.child_out)
        return

    t_begin = time.time()
    deadline = t_begin + args.budget_s
    shape = shapes.SHAPES[args.shape]
    if shapes.arch(shape) != "llama" and args.gguf_q4:
        ap.error(f"--gguf-q4 writes Llama files only; shape {args.shape} is {shapes.arch(shape)}")
    if shapes.arch(shape) not in ("llama", "qwen3_moe") and args.mlc_q4:
        ap.error(f"--mlc-q4: no q4f16_1 conversion tried for arch {shapes.arch(shape)} (llama, qwen3_moe)")
    model_dir = args.model_dir or f"/tmp/mlc_bench_{args.shape}"
    gguf_path = model_dir.rstrip("/") + f"_{args.gguf_type}.gguf" if args.gguf_q4 else None
    mlc_dir = model_dir.rstrip("/") + "_q4f16_1-MLC" if args.mlc_q4 else None
    cuda = args.device == "cuda"
    torch_device = "cuda:0" if cuda else "cpu"
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S")
    rec_dir = os.path.join("/tmp", f"bench_gpu_{run_id}_{os.getpid()}")
    os.makedirs(rec_dir, exist_ok=True)

    result = dict(
        what=f"end-to-end decode tok/s and TTFT of our engine vs HF transformers on random {args.shape}-shaped "
             f"{shapes.arch(shape)} weights, with floors",
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=" ".join([sys.executable] + sys.argv),
        commit=_git_commit(),
        device=_device_name(args.device),
        host=dict(hostname=platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
                  interpreter=sys.executable, torch_python=args.torch_python),
        shape_name=args.shape,
        shape=shape,
        counts=shapes.counts(shape),
        settings=dict(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batches=ints(args.batches),
                      long=args.long, long_new=args.long_new, open_requests=args.open_requests,
                      open_max_running=args.open_max_running,
                      hf_batches=ints(args.hf_batches), q4_batches=ints(args.q4_batches),
                      ttft_prompt=args.ttft_prompt, ttft_reps=args.ttft_reps, hf_reps=args.hf_reps,
                      hf_mode=args.hf_mode, hf_attn=args.hf_attn, only=args.only, init_std=args.init_std, seed=args.seed, budget_s=args.budget_s,
                      model_dir=model_dir, gguf=gguf_path, mlc_dir=mlc_dir),
        # GPU.md anchors (H100): used only when the bandwidth phase fails, and flagged in the output
        fallback_bandwidth_Bps=3.03e12 if cuda else 20e9,
        fallback_matmul_flops=7.98e14 if cuda else 1e11,
        versions={},
        phases={},
        decode_rows=[],
        ttft_rows=[],
        open_rows=[],
        engine_ready={},
        skipped=[],
        notes=[],
    )

    def save() -> None:
        try:
            build_rows(result)
        except Exception as e:  # never lose the raw numbers over a report bug
            note = f"floor computation failed: {type(e).__name__}: {e}"
            if note not in result["notes"]:
                result["notes"].append(note)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:  # rows/ttft hold the raw measured rows plus their floors
            json.dump({k: v for k, v in result.items() if k not in ("decode_rows", "ttft_rows")}, f, indent=1,
                      default=str)
        os.replace(tmp, args.out)

    common = dict(shape=shape, model_dir=model_dir, torch_device=torch_device, seed=args.seed, init_std=args.init_std,
                  prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, ttft_prompt=args.ttft_prompt,
                  ttft_reps=args.ttft_reps, request_timeout_s=args.request_timeout_s)
    plan = ["bandwidth", "setup"]
    if not args.skip_ours:
        plan.append("ours")
    if args.kv_fp8:
        plan.append("ours_kv8")
    if args.gguf_q4:
        plan.append("ours_q4")
    if args.mlc_q4:
        plan += ["mlc_convert", "ours_mlc"]
    if not args.skip_hf:
        plan.append("hf")
    if args.only:
        only = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in only if p not in PHASE_LIMITS]
        if unknown:
            ap.error(f"--only: unknown phases {unknown}")
        plan = [p for p in plan if p in only]
        result["notes"].append(f"only these phases were run (--only): {plan}")
    if args.skip_hf:
        result["notes"].append("HF transformers peer skipped (--skip-hf)")
    if not args.gguf_q4:
        result["notes"].append("Q4_0 GGUF run not requested (--gguf-q4)")
    setup_ok = True

    for i, phase in enumerate(plan):
        cap, least = PHASE_LIMITS[phase]
        if not cuda:  # CPU runs (tests): no per-phase caps, only the overall budget
            cap, least = max(cap, 1800), 1
        later_least = sum(PHASE_LIMITS[p][1] for p in plan[i + 1:])
        left = deadline - time.time()
        timeout = min(cap, left - later_least) if cuda else min(cap, left)
        info: Dict[str, object] = dict(status="skipped", wall_s=0.0, errors=[])
        result["phases"][phase] = info
        if phase in ("ours", "ours_kv8", "ours_q4", "mlc_convert", "ours_mlc", "hf") and not setup_ok:
            info["reason"] = "setup failed: no model"
            result["skipped"].append(dict(engine=phase, reason="setup failed: no model"))
            save()
            continue
        if timeout < least:
            info["reason"] = f"budget: {left:.0f} s left, {later_least} s kept for later phases, phase needs {least} s"
            result["skipped"].append(dict(engine=phase, reason=info["reason"]))
            print(f"[bench_gpu] skip {phase}: {info['reason']}", flush=True)
            save()
            continue
        a = dict(common)
        python = args.torch_python
        if phase == "setup":
            a.update(gguf_path=gguf_path, gguf_type=args.gguf_type)
        elif phase in ("ours", "ours_kv8", "ours_q4", "ours_mlc"):
            python = sys.executable
            q4 = phase in ("ours_q4", "ours_mlc")
            model = {"ours": model_dir, "ours_kv8": model_dir, "ours_q4": gguf_path, "ours_mlc": mlc_dir}[phase]
            base = "bf16" if cuda else "f32"
            precision = {"ours": base, "ours_kv8": base + "+kv8", "ours_q4": args.gguf_type, "ours_mlc": "q4f16_1"}[phase]
            if phase == "ours_kv8":
                a.update(kv_cache_dtype="fp8_e4m3")
            a.update(model=model, engine_device="cuda:0" if cuda else "cpu", precision=precision,
                     batches=ints(args.q4_batches) if q4 else ints(args.batches), ttft=args.ttft_reps > 0,
                     long=[[int(v) for v in x.split("x")] for x in args.long.split(",") if x.strip()],
                     long_new=args.long_new, open_requests=args.open_requests, open_max_running=args.open_max_running)
        elif phase == "mlc_convert":
            python = sys.executable
            a.update(mlc_dir=mlc_dir)
        elif phase == "hf":
            a.update(batches=ints(args.hf_batches), hf_reps=args.hf_reps, hf_mode=args.hf_mode, hf_attn=args.hf_attn,
                     ttft=args.ttft_reps > 0,
                     deadline=time.time() + timeout - 5,
                     hf_min_s_per_batch=(75 if args.hf_mode == "static" else 20) if cuda else 1)
        rec_path = os.path.join(rec_dir, f"{phase}.jsonl")
        print(f"[bench_gpu] phase {phase}: limit {timeout:.0f} s ({time.time() - t_begin:.0f} s into the run)", flush=True)
        st = _run_child(phase, python, a, rec_path, timeout)
        recs = read_records(rec_path)
        info.update(wall_s=st["wall_s"], rc=st["rc"], timed_out=st["timed_out"])
        info["errors"] = [r["where"] + ": " + r["error"] for r in recs if r["kind"] == "error"]
        done = any(r["kind"] == "done" for r in recs)
        info["status"] = "ok" if done and st["rc"] == 0 and not info["errors"] else (
            "timeout" if st["timed_out"] else ("partial" if done else "failed"))
        if st.get("spawn_error"):
            info["errors"].append("spawn: " + st["spawn_error"])
        if st["timed_out"]:
            info["errors"].append(f"killed at its {timeout:.0f} s limit")
        info["records"] = [r for r in recs if r["kind"] not in ("decode", "ttft", "open")]
        for r in recs:
            if r["kind"] == "versions":
                result["versions"].update({k: v for k, v in r.items() if k not in ("kind", "t_s")})
            elif r["kind"] == "bandwidth":
                result["bandwidth"] = {k: v for k, v in r.items() if k not in ("kind", "t_s")}
            elif r["kind"] == "decode":
                result["decode_rows"].append({k: v for k, v in r.items() if k != "kind"})
            elif r["kind"] == "ttft":
                result["ttft_rows"].append({k: v for k, v in r.items() if k != "kind"})
            elif r["kind"] == "open":
                result["open_rows"].append({k: v for k, v in r.items() if k != "kind"})
            elif r["kind"] == "load" and phase.startswith("ours"):
                result["engine_ready"][phase] = {k: r.get(k) for k in ("load_s", "ready_s")}
            elif r["kind"] == "skip":
                result["skipped"].append({k: v for k, v in r.items() if k != "kind"})
            elif r["kind"] == "gguf":
                result["gguf"] = {k: v for k, v in r.items() if k != "kind"}
            elif r["kind"] == "mlc_convert":
                result["mlc_convert"] = {k: v for k, v in r.items() if k != "kind"}
        if phase == "setup" and not done:
            setup_ok = False
        if phase == "hf":
            attn = next((r.get("attn_implementation") for r in recs if r["kind"] == "load"), None)
            if shape.get("attn_logit_softcapping") and attn not in (None, "eager"):
                result["notes"].append(
                    f"HF ran with attn_implementation={attn}: transformers' {attn} attention ignores the attention "
                    f"soft-capping of this model (attn_logit_softcapping={shape['attn_logit_softcapping']}), so the "
                    "peer skips a tanh per score that our kernels apply; --hf-attn eager runs the exact math")
        if phase == "bandwidth" and "bandwidth" not in result:
            result["notes"].append("bandwidth phase failed: floors use the GPU.md anchors (3.03 TB/s, 798 TFLOP/s)")
        if phase == "ours_q4" and not done and not any(r["kind"] == "decode" for r in recs):
            result["notes"].append(f"Q4_0 GGUF run produced no rows: {info['errors'][:1]}")
        print(f"[bench_gpu] phase {phase}: {info['status']} in {st['wall_s']:.1f} s", flush=True)
        save()

    result["total_wall_s"] = time.time() - t_begin
    save()
    print_table(result)
    print(f"\nsaved {args.out} (total {result['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
