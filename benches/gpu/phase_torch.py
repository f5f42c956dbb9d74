"""Phases that use torch: the random model (HF directory + optional Q4_0 GGUF), the device's copy
bandwidth and matmul rate, and the HF transformers peer on the same weights."""

import json
import os
import platform
import statistics
import time


def _versions() -> dict:
    import torch
    import transformers

    v = dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
             torch_cuda=torch.version.cuda)
    try:
        import tokenizers

        v["tokenizers"] = tokenizers.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        v["torch_device"] = torch.cuda.get_device_name(0)
    return v


def _sync(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------- setup

def _spec(a: dict) -> dict:
    return {"shape": a["shape"], "seed": a["seed"], "init_std": a["init_std"], "format": 2}


def _write_tokenizer(d: str, vocab_size: int) -> None:
    """Word-level tokenizer (token i is the word "t<i>"), as tests/fixtures/gen_wordlevel_tokenizers.py."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 8192}, f)


def _add_classic_keys(d: str, shape: dict) -> None:
    """transformers 5 writes rope_parameters/dtype; our loader (and most checkpoints) use the classic keys."""
    p = os.path.join(d, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg["rope_theta"] = shape["rope_theta"]
    cfg.setdefault("rope_scaling", None)
    cfg["torch_dtype"] = "bfloat16"
    with open(p, "w") as f:
        json.dump(cfg, f, indent=1)


def _hf_config(a: dict):
    """The transformers config and model class of the shape (benches/gpu/shapes.py: `arch`)."""
    shape = a["shape"]
    common = dict(
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        vocab_size=shape["vocab_size"],
        max_position_embeddings=shape["max_position_embeddings"],
        rms_norm_eps=shape["rms_norm_eps"],
        rope_theta=shape["rope_theta"],
        tie_word_embeddings=shape["tie_word_embeddings"],
        initializer_range=a["init_std"],
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    arch = shape.get("arch", "llama")
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaConfig(**common), LlamaForCausalLM
    if arch == "gemma2":
        from transformers import Gemma2Config, Gemma2ForCausalLM

        cfg = Gemma2Config(
            **common,
            head_dim=shape["head_dim"],
            query_pre_attn_scalar=shape["query_pre_attn_scalar"],
            sliding_window=shape["sliding_window"],
            layer_types=list(shape["layer_types"]),
            attn_logit_softcapping=shape["attn_logit_softcapping"],
            final_logit_softcapping=shape["final_logit_softcapping"],
            hidden_activation=shape["hidden_activation"],
        )
        return cfg, Gemma2ForCausalLM
    if arch == "qwen3_moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        cfg = Qwen3MoeConfig(
            **common,
            head_dim=shape["head_dim"],
            moe_intermediate_size=shape["moe_intermediate_size"],
            num_experts=shape["num_experts"],
            num_experts_per_tok=shape["num_experts_per_tok"],
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
        return cfg, Qwen3MoeForCausalLM
    raise ValueError(f"no random-model recipe for arch {arch!r}")


def _make_model(a: dict, rec):
    import torch

    shape = a["shape"]
    cfg, model_cls = _hf_config(a)
    torch.manual_seed(a["seed"])
    t = time.perf_counter()
    with torch.device(a["torch_device"]):
        try:
            model = model_cls._from_config(cfg, dtype=torch.bfloat16)
        except TypeError:
            model = model_cls._from_config(cfg, torch_dtype=torch.bfloat16)
    model.eval()
    _sync(a["torch_device"])
    init_s = time.perf_counter() - t
    # Values must be random (not zeros) and finite through the whole network.
    with torch.no_grad():
        ids = torch.randint(10, shape["vocab_size"] - 1, (1, 16), device=a["torch_device"])
        out = model(ids, output_hidden_states=True)
        logits = out.logits.float()
        last_h = out.hidden_states[-1].float()
        check = dict(
            logits_finite=bool(torch.isfinite(logits).all()),
            logits_std=float(logits.std()),
            final_hidden_rms=float(last_h.pow(2).mean().sqrt()),
            q_proj0_std=float(model.model.layers[0].self_attn.q_proj.weight.float().std()),
            embed_std=float(model.model.embed_tokens.weight.float().std()),
        )
    if not check["logits_finite"] or check["q_proj0_std"] == 0:
        raise RuntimeError(f"random model is degenerate: {check}")
    rec.put("model_init", init_s=init_s, model_class=type(model).__name__,
            params=sum(p.numel() for p in model.parameters()), **check)
    return model


def phase_setup(a: dict, rec) -> None:
    import torch

    rec.put("versions", **_versions())
    d, shape = a["model_dir"], a["shape"]
    marker = os.path.join(d, "bench_spec.json")
    spec = _spec(a)
    have_hf = False
    try:
        with open(marker) as f:
            have_hf = json.load(f) == spec and os.path.exists(os.path.join(d, "tokenizer.json"))
    except (OSError, ValueError):
        pass
    gguf_path = a.get("gguf_path")
    have_gguf = bool(gguf_path) and os.path.exists(gguf_path) and os.path.exists(gguf_path + ".spec.json") \
        and json.load(open(gguf_path + ".spec.json")) == spec
    need_gguf = bool(gguf_path) and not have_gguf
    rec.put("plan", reuse_hf=have_hf, reuse_gguf=have_gguf, gguf_wanted=bool(gguf_path))
    model = None
    if not have_hf:
        if os.path.exists(marker):
            os.remove(marker)
        model = _make_model(a, rec)
        t = time.perf_counter()
        os.makedirs(d, exist_ok=True)
        try:
            model.save_pretrained(d, safe_serialization=True)
        except TypeError:
            model.save_pretrained(d)
        _add_classic_keys(d, shape)
        _write_tokenizer(d, shape["vocab_size"])
        with open(marker, "w") as f:
            json.dump(spec, f)
        files = {n: os.path.getsize(os.path.join(d, n)) for n in sorted(os.listdir(d))}
        rec.put("saved", save_s=time.perf_counter() - t, dir=d, files=files)
    if need_gguf:
        from .gguf_q4 import write_llama_gguf

        if model is None:
            from transformers import AutoModelForCausalLM

            t = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).to(a["torch_device"])
            rec.put("reloaded_for_gguf", s=time.perf_counter() - t)
        t = time.perf_counter()
        state = {k: v.detach() for k, v in model.state_dict().items()}
        with torch.inference_mode():
            summary = write_llama_gguf(gguf_path, state, shape, a.get("gguf_type", "q4_0"))
        with open(gguf_path + ".spec.json", "w") as f:
            json.dump(spec, f)
        rec.put("gguf", write_s=time.perf_counter() - t, **summary)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ bandwidth

def phase_bandwidth(a: dict, rec) -> None:
    import torch

    rec.put("versions", **_versions())
    dev = a["torch_device"]
    if dev.startswith("cuda"):
        n_bytes = a.get("copy_bytes", 2 << 30)
        x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=dev).uniform_(-1, 1)
        y = torch.empty_like(x)
        for _ in range(3):
            y.copy_(x)
        ms = []
        for _ in range(20):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            y.copy_(x)
            e1.record()
            e1.synchronize()
            ms.append(e0.elapsed_time(e1))
        med = statistics.median(ms)
        del x, y
        n = 8192
        p = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
        q = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
        for _ in range(3):
            p @ q
        mm = []
        for _ in range(10):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            p @ q
            e1.record()
            e1.synchronize()
            mm.append(e0.elapsed_time(e1))
        mm_med = statistics.median(mm)
        rec.put("bandwidth", copy_bytes=n_bytes, copy_ms_median=med, copy_ms_runs=ms,
                bandwidth_Bps=2 * n_bytes / (med / 1e3), matmul_n=n, matmul_dtype="bf16", matmul_ms_median=mm_med,
                matmul_flops=2 * n**3 / (mm_med / 1e3),
                note="bandwidth counts bytes read + written (2 x tensor size per copy); CUDA events, median")
    else:
        n_bytes = a.get("copy_bytes", 256 << 20)
        x = torch.rand(n_bytes // 4)
        y = torch.empty_like(x)
        y.copy_(x)
        ms = []
        for _ in range(7):
            t = time.perf_counter()
            y.copy_(x)
            ms.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(ms)
        n = 1024
        p, q = torch.randn(n, n), torch.randn(n, n)
        p @ q
        mm = []
        for _ in range(5):
            t = time.perf_counter()
            p @ q
            mm.append((time.perf_counter() - t) * 1e3)
        mm_med = statistics.median(mm)
        rec.put("bandwidth", copy_bytes=n_bytes, copy_ms_median=med, copy_ms_runs=ms,
                bandwidth_Bps=2 * n_bytes / (med / 1e3), matmul_n=n, matmul_dtype="f32", matmul_ms_median=mm_med,
                matmul_flops=2 * n**3 / (mm_med / 1e3), note="CPU: memcpy and f32 matmul, perf_counter, median")


# ------------------------------------------------------------------------------------------------------- HF

def phase_hf(a: dict, rec) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    rec.put("versions", **_versions())
    dev = a["torch_device"]
    cuda = dev.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    deadline = a["deadline"]
    t = time.perf_counter()
    # None: transformers' default for the model (sdpa for Llama and Gemma 2 in transformers 5)
    kw = {"attn_implementation": a["hf_attn"]} if a.get("hf_attn") else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(a["model_dir"], dtype=dtype, device_map=dev, **kw)
    except (TypeError, ImportError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(a["model_dir"], dtype=dtype, **kw).to(dev)
    model.eval()
    _sync(dev)
    attn = getattr(model.config, "_attn_implementation", None)
    rec.put("load", load_s=time.perf_counter() - t, dtype=str(dtype).replace("torch.", ""), model_class=type(model).__name__,
            attn_implementation=attn)
    vocab = model.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(4321)

    def rand_ids(b: int, n: int):
        return torch.randint(10, vocab - 1, (b, n), generator=g).to(dev)

    # 1. prefill of one 2048-token prompt: a plain eager forward with a cache, last-token logits only
    if a["ttft"]:
        try:
            P = a["ttft_prompt"]
            ms = []
            with torch.inference_mode():
                for i in range(a["ttft_reps"] + 1):
                    ids = rand_ids(1, P)
                    _sync(dev)
                    t = time.perf_counter()
                    try:
                        out = model(ids, use_cache=True, logits_to_keep=1)
                    except TypeError:
                        out = model(ids, use_cache=True)
                    out.logits.float().sum().item()
                    _sync(dev)
                    if i:
                        ms.append((time.perf_counter() - t) * 1e3)
                    del out
            rec.put("ttft", engine="hf", precision="bf16" if cuda else "f32", mode="eager forward",
                    attn_implementation=attn, prompt_tokens=P, reps=len(ms), ttft_ms=statistics.median(ms), ttft_ms_runs=ms)
        except Exception as e:
            rec.error("hf ttft", e)

    # 2. generate, static cache (compiled by transformers) with eager fallback
    P, N = a["prompt_tokens"], a["new_tokens"]
    mode = a["hf_mode"]
    static_error = None
    for b in a["batches"]:
        left = deadline - time.time()
        need = a["hf_min_s_per_batch"]
        if left < need:
            rec.put("skip", engine="hf", batch=b, reason=f"{left:.0f} s left of the phase budget, need about {need:.0f}")
            continue
        ids = rand_ids(b, P)
        mask = torch.ones_like(ids)

        def gen(n_new: int, m: str):
            kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                      pad_token_id=0)
            if m == "static":
                kw["cache_implementation"] = "static"
            _sync(dev)
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, **kw)
            _sync(dev)
            s = time.perf_counter() - t
            if out.shape != (b, P + n_new):
                raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(b, P + n_new)}")
            return s, out

        try:
            m = mode
            t_phase = time.perf_counter()
            try:
                warm_s, _ = gen(N, m)
            except Exception as e:
                if m != "static":
                    raise
                static_error = f"{type(e).__name__}: {e}"[:1500]
                rec.error(f"hf static batch={b} (falling back to eager)", e)
                mode = m = "eager"
                warm_s, _ = gen(N, m)
            times = []
            for _ in range(a["hf_reps"]):
                s, out = gen(N, m)
                times.append(s)
            t_gen = statistics.median(times)
            # prefill + first token alone; after the timed runs (a different cache length may recompile)
            pre = [gen(1, m)[0] for _ in range(2)]
            t_pre = min(pre)
            graphs = None
            try:
                from torch._dynamo.utils import counters

                graphs = dict(counters["stats"])
            except Exception:
                pass
            rec.put("decode", engine="hf", precision="bf16" if cuda else "f32",
                    mode=m + (" (static cache failed, eager fallback)" if static_error and m == "eager" and a["hf_mode"] == "static" else ""),
                    attn_implementation=attn, batch=b, prompt_tokens=P, new_tokens=N, warmup_s=warm_s, generate_s=t_gen,
                    generate_s_runs=times, prefill_s=t_pre, prefill_s_runs=pre,
                    decode_tok_s=b * (N - 1) / (t_gen - t_pre) if t_gen > t_pre else None,
                    e2e_tok_s=b * N / t_gen, first_ids_req0=out[0, P:P + 16].tolist(),
                    dynamo_stats=graphs, static_error=static_error, phase_s=time.perf_counter() - t_phase)
        except Exception as e:
            rec.error(f"hf generate batch={b}", e)
        if cuda:
            torch.cuda.empty_cache()
