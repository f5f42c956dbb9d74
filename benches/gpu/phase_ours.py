"""Our engine (mlc_llm._core) on the benchmark model: decode tokens/s per batch (short prompts, and long ones
with `long`: batch x prompt length), 2048-token TTFT, engine-ready time, and an open workload of many
requests with ShareGPT-like lengths submitted at once (`open`).

Decode tokens/s counts every token that arrives after the last request of the batch got its first token
(all prefills done) over the time from then to the last token: it excludes the prefill phase and the
first token of each request. `steady_tok_s` is the same over the window in which all requests are still
running (until the first one finishes). Times are the arrival times of the deltas in this process (poll
returns as soon as outputs exist). `usage_decode_tok_s` is bench_cpu.py's measure for comparison:
batch * (new - 1) / (wall - max ttft).
"""

import json
import random
import statistics
import time
from typing import Dict, List


def _prompts(rng: random.Random, batch: int, length: int, vocab: int) -> List[List[int]]:
    lo, hi = min(10, vocab // 4), vocab - 1
    return [[rng.randrange(lo, hi) for _ in range(length)] for _ in range(batch)]


def run_batch(engine, batch: int, prompt_len: int, new: int, vocab: int, rng: random.Random, tag: str,
              timeout_s: float) -> Dict[str, object]:
    params = json.dumps({"temperature": 0.0, "max_tokens": new, "ignore_eos": True})
    prompts = _prompts(rng, batch, prompt_len, vocab)
    ids = [f"{tag}-{i}" for i in range(batch)]
    t_start = time.perf_counter()
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, p, params)
    t_added = time.perf_counter()
    first: Dict[str, float] = {}
    done: Dict[str, float] = {}
    usage: Dict[str, dict] = {}
    counts: Dict[str, int] = {rid: 0 for rid in ids}
    events: List[tuple] = []  # (arrival time, tokens)
    first_ids: List[int] = []
    errors: List[str] = []
    deadline = t_start + timeout_s
    while len(done) < batch:
        if time.perf_counter() > deadline:
            for rid in ids:
                if rid not in done:
                    engine.abort(rid)
            raise TimeoutError(f"batch {batch}: {len(done)}/{batch} requests finished after {timeout_s:.0f} s")
        deltas = engine.poll(20)
        t = time.perf_counter()
        for d in deltas:
            rid = d["request_id"]
            n = len(d["token_ids"])
            if n:
                first.setdefault(rid, t)
                counts[rid] += n
                events.append((t, n))
                if rid == ids[0] and len(first_ids) < 16:
                    first_ids.extend(d["token_ids"][: 16 - len(first_ids)])
            if d["finish_reason"] is not None:
                done[rid] = t
                usage[rid] = d["usage"] or {}
                if d["finish_reason"] not in ("length", "stop"):
                    errors.append(f"{rid}: {d['finish_reason']} {d.get('error')}")
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[:3]}")
    t_end = max(done.values())
    t0 = max(first.values())  # all prefills done, every request has its first token
    t_first_done = min(done.values())
    after = sum(n for t, n in events if t > t0)
    steady = sum(n for t, n in events if t0 < t <= t_first_done)
    wall = t_end - t_start
    max_ttft = max(u.get("ttft_s") or 0.0 for u in usage.values())
    total = sum(counts.values())
    r = dict(
        batch=batch,
        prompt_tokens=prompt_len,
        new_tokens=new,
        generated_tokens=total,
        expected_tokens=batch * new,
        wall_s=wall,
        add_requests_s=t_added - t_start,
        prefill_phase_s=t0 - t_start,
        decode_phase_s=t_end - t0,
        decode_tokens_counted=after,
        decode_tok_s=after / (t_end - t0) if t_end > t0 and after else None,
        steady_window_s=t_first_done - t0,
        steady_tokens=steady,
        steady_tok_s=steady / (t_first_done - t0) if t_first_done > t0 and steady >= batch else None,
        usage_max_ttft_s=max_ttft,
        usage_decode_tok_s=batch * (new - 1) / (wall - max_ttft) if wall > max_ttft else None,
        mean_step_ms=1e3 * (t_end - t0) * batch / after if after else None,
        first_ids_req0=first_ids,
    )
    return r


def open_workload(engine, n: int, vocab: int, rng: random.Random, timeout_s: float) -> Dict[str, object]:
    """`n` requests with ShareGPT-like lengths (lognormal, median about 160 prompt / 150 output tokens, clipped
    to 4..2048 / 4..1024), all submitted at once: the engine admits as many as its batch and KV cache allow.
    Output tok/s = every generated token over the wall time from the first submission to the last token."""
    sizes = [(min(2048, max(4, int(rng.lognormvariate(5.08, 0.9)))), min(1024, max(4, int(rng.lognormvariate(5.0, 0.8)))))
             for _ in range(n)]
    before = json.loads(engine.metrics())
    t_start = time.perf_counter()
    for i, (p, o) in enumerate(sizes):
        prompt = _prompts(rng, 1, p, vocab)[0]
        engine.add_request(f"open-{i}", prompt, json.dumps({"temperature": 0.0, "max_tokens": o, "ignore_eos": True}))
    first: Dict[str, float] = {}
    done: Dict[str, float] = {}
    generated = 0
    errors: List[str] = []
    while len(done) < n:
        if time.perf_counter() - t_start > timeout_s:
            for i in range(n):
                if f"open-{i}" not in done:
                    engine.abort(f"open-{i}")
            raise TimeoutError(f"open workload: {len(done)}/{n} requests finished after {timeout_s:.0f} s")
        t = time.perf_counter()
        for d in engine.poll(20):
            rid = d["request_id"]
            if d["token_ids"]:
                first.setdefault(rid, t - t_start)
                generated += len(d["token_ids"])
            if d["finish_reason"] is not None:
                done[rid] = t - t_start
                if d["finish_reason"] not in ("length", "stop"):
                    errors.append(f"{rid}: {d['finish_reason']} {d.get('error')}")
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[:3]}")
    wall = max(done.values())
    ttft = sorted(first.values())
    q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
    # How many requests were running at each 10 % of the wall time (the tail's batch sizes).
    running_at = [sum(1 for i in range(n) if first.get(f"open-{i}", wall) <= f * wall < done[f"open-{i}"])
                  for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
    return dict(
        breakdown=step_breakdown(before, json.loads(engine.metrics()), wall),
        running_at_tenths=running_at,
        requests=n,
        prompt_tokens_total=sum(p for p, _ in sizes),
        expected_output_tokens=sum(o for _, o in sizes),
        output_tokens=generated,
        prompt_median=statistics.median(p for p, _ in sizes),
        output_median=statistics.median(o for _, o in sizes),
        wall_s=wall,
        output_tok_s=generated / wall,
        requests_per_s=n / wall,
        ttft_p50_s=q(ttft, 0.5),
        ttft_p99_s=q(ttft, 0.99),
        last_first_token_s=ttft[-1],
    )


def step_breakdown(before: dict, after: dict, wall: float) -> dict:
    """The engine's step counters over one run (after - before): decode-only steps (count, seconds, mean
    batch, ms per step), steps with prefill (count, seconds, prefill and decode tokens), and the wall time
    outside any step (host intake, stream-back, idle)."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in (
        "decode_steps", "decode_step_time_s", "decode_step_seqs", "prefill_steps", "prefill_step_time_s",
        "prefill_step_tokens", "prefill_step_decodes", "cuda_graph_replays", "num_preemptions")}
    d["decode_mean_batch"] = d["decode_step_seqs"] / d["decode_steps"] if d["decode_steps"] else None
    d["decode_ms_per_step"] = 1e3 * d["decode_step_time_s"] / d["decode_steps"] if d["decode_steps"] else None
    d["prefill_ms_per_step"] = 1e3 * d["prefill_step_time_s"] / d["prefill_steps"] if d["prefill_steps"] else None
    d["outside_steps_s"] = wall - d["decode_step_time_s"] - d["prefill_step_time_s"]
    return d


def ttft_runs(engine, prompt_len: int, reps: int, vocab: int, rng: random.Random, timeout_s: float) -> dict:
    params = json.dumps({"temperature": 0.0, "max_tokens": 1, "ignore_eos": True})
    walls, usage_ttft = [], []
    for i in range(reps + 1):  # the first run is the warmup
        rid = f"ttft-{i}"
        prompt = _prompts(rng, 1, prompt_len, vocab)[0]
        t_start = time.perf_counter()
        engine.add_request(rid, prompt, params)
        t_first, fin = None, None
        while fin is None:
            if time.perf_counter() - t_start > timeout_s:
                engine.abort(rid)
                raise TimeoutError(f"ttft run {i} did not finish in {timeout_s:.0f} s")
            for d in engine.poll(5):
                if d["request_id"] != rid:
                    continue
                if d["token_ids"] and t_first is None:
                    t_first = time.perf_counter()
                if d["finish_reason"] is not None:
                    fin = d
        if fin["finish_reason"] not in ("length", "stop"):
            raise RuntimeError(f"ttft run {i}: {fin['finish_reason']} {fin.get('error')}")
        if i == 0:
            warm = (t_first - t_start) * 1e3
            continue
        walls.append((t_first - t_start) * 1e3)
        usage_ttft.append(((fin["usage"] or {}).get("ttft_s") or 0.0) * 1e3)
    return dict(
        prompt_tokens=prompt_len,
        reps=reps,
        ttft_ms=statistics.median(walls),
        ttft_ms_runs=walls,
        usage_ttft_ms=statistics.median(usage_ttft),
        usage_ttft_ms_runs=usage_ttft,
        warmup_ttft_ms=warm,
    )


def phase_ours(a: dict, rec) -> None:
    t = time.perf_counter()
    from mlc_llm import _core

    rec.put("versions", mlc_llm_core=getattr(_core, "__version__", "?"), core_file=_core.__file__,
            import_s=time.perf_counter() - t)
    precision = a["precision"]
    batches = a["batches"]
    max_batch = max(batches)
    prompt_len, new = a["prompt_tokens"], a["new_tokens"]
    long_rows = [tuple(x) for x in a.get("long") or []]  # (batch, prompt tokens)
    long_new = a.get("long_new", 64)
    open_n, open_running = a.get("open_requests", 0), a.get("open_max_running", 256)
    total = max([max_batch * (prompt_len + new + 32), a["ttft_prompt"] + 64]
                + [b * (p + long_new + 32) for b, p in long_rows])
    max_seq = max([max_batch] + [b for b, _ in long_rows] + ([open_running] if open_n else []))
    cfg = {"verbose": False, "mode": "server", "max_num_sequence": max_seq, "prefill_chunk_size": 2048}
    if not open_n:
        cfg["max_total_sequence_length"] = total
    # With an open workload the KV cache is sized from memory (server mode), as a deployment would run.
    if precision == "q4_0":
        cfg["quantized_matmul"] = True
    if a.get("kv_cache_dtype"):
        cfg["kv_cache_dtype"] = a["kv_cache_dtype"]
    t = time.perf_counter()
    engine = _core.Engine(a["model"], a["engine_device"], json.dumps(cfg))
    info = json.loads(engine.info())
    load_s = time.perf_counter() - t
    # Engine ready: constructed and one request answered (what a server needs before it takes traffic).
    probe = json.dumps({"temperature": 0.0, "max_tokens": 1, "ignore_eos": True})
    engine.add_request("ready", [11, 12, 13, 14], probe)
    while not any(d["request_id"] == "ready" and d["finish_reason"] is not None for d in engine.poll(5)):
        if time.perf_counter() - t > a["request_timeout_s"]:
            break
    rec.put("load", load_s=load_s, ready_s=time.perf_counter() - t, engine_config=cfg, engine_info=info)
    vocab = info["vocab_size"]
    rng = random.Random(1234)
    timeout = a["request_timeout_s"]
    try:
        t = time.perf_counter()
        run_batch(engine, 1, 16, 8, vocab, rng, "warmup", timeout)
        rec.put("warmup", s=time.perf_counter() - t)
        order = list(batches)
        # The TTFT runs go right after batch 1: they matter more than the largest batch if time runs out.
        plan = []
        for b in order:
            plan.append(("decode", b))
            if b == order[0] and a["ttft"]:
                plan.append(("ttft", None))
        if a["ttft"] and not order:
            plan.append(("ttft", None))
        plan += [("long", bp) for bp in long_rows]
        if open_n:
            plan.append(("open", open_n))
        for kind, b in plan:
            try:
                if kind == "ttft":
                    t = time.perf_counter()
                    r = ttft_runs(engine, a["ttft_prompt"], a["ttft_reps"], vocab, rng, timeout)
                    rec.put("ttft", engine="ours", precision=precision, phase_s=time.perf_counter() - t, **r)
                    continue
                if kind == "long":
                    lb, lp = b
                    t = time.perf_counter()
                    run_batch(engine, lb, lp, 8, vocab, rng, f"wl{lb}x{lp}", timeout)
                    r = run_batch(engine, lb, lp, long_new, vocab, rng, f"l{lb}x{lp}", timeout)
                    rec.put("decode", engine="ours", precision=precision, context="long",
                            phase_s=time.perf_counter() - t, **r)
                    continue
                if kind == "open":
                    t = time.perf_counter()
                    r = open_workload(engine, b, vocab, rng, timeout)
                    rec.put("open", engine="ours", precision=precision, max_num_sequence=max_seq,
                            phase_s=time.perf_counter() - t, **r)
                    continue
                t = time.perf_counter()
                # Warm this batch size (buffers, kernel selection) with a short run first.
                run_batch(engine, b, prompt_len, min(16, new), vocab, rng, f"w{b}", timeout)
                t_warm = time.perf_counter() - t
                r = run_batch(engine, b, prompt_len, new, vocab, rng, f"b{b}", timeout)
                rec.put("decode", engine="ours", precision=precision, warmup_s=t_warm,
                        phase_s=time.perf_counter() - t, **r)
            except Exception as e:  # record and go on with the next size
                rec.error(f"{kind} batch={b}", e)
                if "EngineDead" in type(e).__name__:
                    break
        try:
            rec.put("metrics", metrics=json.loads(engine.metrics()))
        except Exception as e:
            rec.error("metrics", e)
    finally:
        engine.terminate()
