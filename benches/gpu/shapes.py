"""Model shapes of the GPU benchmark and the physical floor of each measured row.

Pure Python (no torch): the orchestrator computes floors from the shape, the measured device-to-device
bandwidth and the measured bf16 matmul rate.

A shape is a config.json in miniature. `arch` names the model family ("llama" when absent: LlamaForCausalLM;
"gemma2": Gemma2ForCausalLM). `head_dim` may differ from hidden / heads (Gemma 2 9B: 256 x 16 = 4096 query
features on a 3584-wide residual); `norms_per_layer` counts the RMSNorm weights of a layer (Llama 2, Gemma 2 4:
input, post-attention, pre- and post-feed-forward); `layer_types` (sliding_attention / full_attention) with
`sliding_window` say which layers read only the last W keys.

Floor of one decode step at batch B (every sequence at context c):
    bytes = weights read per step (all linear layers incl. lm_head, norms, B embedding rows)
            + B * KV bytes of the keys each layer reads (c, or min(c, W) on a sliding layer)
    flops = B * (2 * linear parameters + 4 * heads * head_dim * sum over layers of the keys read)
    step  = max(bytes / bandwidth, flops / matmul peak);  floor tok/s = B / step
with c the mean context over the generated tokens (prompt + new / 2). The embedding table is not read as
a whole in a decode step (only B rows), so it is left out of the weight bytes, except that a tied lm_head
(Gemma) is the embedding table: its vocab x hidden matrix is read every step as the output projection, and
it is counted there, once. Soft-capping (tanh on scores and logits) is elementwise work, left out.
Floor of a prefill of P tokens: max((weights + P * KV bytes) / bandwidth, flops / peak) with
flops = 2 * P * linear parameters (lm_head for the last token only) + 4 * heads * head_dim * (query, key)
pairs summed over layers (causal: P^2 / 2 per layer; a sliding layer with P > W: W^2 / 2 + (P - W) * W).
"""

from typing import Dict

SHAPES: Dict[str, dict] = {
    # Meta-Llama-3-8B's config.json (no rope scaling in Llama 3.0).
    "llama3-8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
    # Quick runs and CPU tests: the same structure (GQA 2:1, untied lm_head), a few MB of weights.
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
    # google/gemma-2-9b's config.json: head_dim 256 (16 heads = 4096 query features on a 3584 residual),
    # tied embeddings (the 256000 x 3584 table is also the lm_head), 4 norms per layer, even layers slide
    # over 4096 keys, attention scores capped at 50 and logits at 30, gelu-tanh MLP.
    "gemma2-9b": dict(
        arch="gemma2",
        hidden_size=3584,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        intermediate_size=14336,
        vocab_size=256000,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(42)],
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        norms_per_layer=4,
    ),
    # Quick runs and CPU tests of the Gemma 2 path: the same structure (head_dim != hidden / heads, tied,
    # capped, alternating sliding layers), a window the 128 + 128 runs cross.
    "gemma2-tiny": dict(
        arch="gemma2",
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        intermediate_size=512,
        vocab_size=4096,
        query_pre_attn_scalar=128,
        sliding_window=160,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(4)],
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        norms_per_layer=4,
    ),
    # Qwen/Qwen3-30B-A3B's config.json: 48 layers of 128 experts (768 wide), 8 per token, no shared expert;
    # q/k RMSNorm per head. "-24l": its first 24 layers (the same per-layer work; half the 61 GB of bf16
    # weights, so the random model, its q4f16_1 conversion and both engines fit one device call).
    "qwen3-30b-a3b": dict(
        arch="qwen3_moe",
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        vocab_size=151936,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
}
SHAPES["qwen3-30b-a3b-24l"] = {**SHAPES["qwen3-30b-a3b"], "num_hidden_layers": 24}
# Quick runs and CPU tests of the mixture: the same structure, a few MB of weights.
SHAPES["qwen3-moe-tiny"] = {**SHAPES["qwen3-30b-a3b"], "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512, "moe_intermediate_size": 256,
                            "num_experts": 16, "num_experts_per_tok": 4, "vocab_size": 4096}

Q4_0_BYTES_PER_WEIGHT = 18 / 32  # ggml block_q4_0: one f16 scale + 32 4-bit values


def arch(shape: dict) -> str:
    return shape.get("arch", "llama")


def head_dim(shape: dict) -> int:
    return shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"]


def layer_windows(shape: dict) -> list:
    """Per layer: the sliding window (keys a query reads at most), or None for full attention."""
    n = shape["num_hidden_layers"]
    types = shape.get("layer_types")
    w = shape.get("sliding_window")
    if not w:
        return [None] * n
    if types is None:  # one window on every layer (Mistral-style)
        return [w] * n
    return [w if t == "sliding_attention" else None for t in types]


def keys_read(shape: dict, ctx: float) -> float:
    """Keys one query reads at context `ctx`, summed over layers."""
    return sum(ctx if w is None else min(ctx, w) for w in layer_windows(shape))


def prefill_pairs(shape: dict, prompt: int) -> float:
    """(query, key) pairs of a causal prefill of `prompt` tokens, summed over layers."""
    def pairs(w):
        if w is None or prompt <= w:
            return prompt * prompt / 2.0
        return w * w / 2.0 + (prompt - w) * w
    return sum(pairs(w) for w in layer_windows(shape))


def counts(shape: dict) -> dict:
    """Parameter counts of a dense decoder shape (Llama / Gemma 2)."""
    h = shape["hidden_size"]
    nh = shape["num_attention_heads"]
    kvh = shape["num_key_value_heads"]
    hd = head_dim(shape)
    ffn = shape["intermediate_size"]
    layers = shape["num_hidden_layers"]
    vocab = shape["vocab_size"]
    # q, k, v, o (q and o are nh * hd wide, not h) + gate, up, down
    attn = h * nh * hd + 2 * h * kvh * hd + nh * hd * h
    if is_moe(shape):
        # per token: attention, the router and its top-k experts (what the flops count); every expert
        # exists (total_params) and a step reads the experts its batch touches (weight_bytes_per_step).
        expert = 3 * h * shape["moe_intermediate_size"]
        per_layer_linear = attn + h * shape["num_experts"] + shape["num_experts_per_tok"] * expert
        all_experts = layers * (shape["num_experts"] - shape["num_experts_per_tok"]) * expert
    else:
        per_layer_linear = attn + 3 * h * ffn
        all_experts = 0
    norms = layers * shape.get("norms_per_layer", 2) * h + h
    embed = vocab * h
    lm_head = 0 if shape["tie_word_embeddings"] else vocab * h
    return dict(
        head_dim=hd,
        linear_params=layers * per_layer_linear + vocab * h,  # the lm_head matmul runs even when tied
        layer_linear_params=layers * per_layer_linear,
        norm_params=norms,
        embed_params=embed,
        total_params=layers * per_layer_linear + all_experts + norms + embed + lm_head,
        kv_bytes_per_token_bf16=2 * layers * kvh * hd * 2,
        kv_bytes_per_layer_token_bf16=2 * kvh * hd * 2,
    )


def is_moe(shape: dict) -> bool:
    return "num_experts" in shape


def experts_touched(shape: dict, tokens: int) -> float:
    """Experts of a layer that `tokens` tokens route to, expected under uniform independent routing:
    E (1 - (1 - k / E)^tokens)."""
    e, k = shape["num_experts"], shape["num_experts_per_tok"]
    return e * (1.0 - (1.0 - k / e) ** tokens)


def weight_bytes_per_step(shape: dict, precision: str, batch: int) -> float:
    """Weight bytes one forward step must read: linear layers (incl. lm_head; of a mixture, the experts
    the step's `batch` tokens touch), norms, `batch` embedding rows."""
    c = counts(shape)
    if is_moe(shape):
        expert = 3 * shape["hidden_size"] * shape["moe_intermediate_size"]
        extra = shape["num_hidden_layers"] * (experts_touched(shape, batch) - shape["num_experts_per_tok"]) * expert
        c = {**c, "linear_params": c["linear_params"] + extra}
    precision = precision.split("+")[0]  # "bf16+kv8": bf16 weights
    # q4f16_1 runs as the same Q4_0 blocks (18 bytes per 32 weights) after a lossless repack at load.
    per_weight = {"bf16": 2.0, "f16": 2.0, "f32": 4.0, "q4_0": Q4_0_BYTES_PER_WEIGHT,
                  "q4f16_1": Q4_0_BYTES_PER_WEIGHT}[precision]
    act = 4.0 if precision == "f32" else 2.0  # norms and activations: the compute dtype (bf16 on GPUs)
    return c["linear_params"] * per_weight + c["norm_params"] * act + batch * shape["hidden_size"] * act


def kv_bytes_scale(shape: dict, precision: str) -> float:
    """KV bytes per value relative to bf16: f32 caches 2, an FP8 cache ("+kv8") one byte per value and an
    f32 scale per row of head_dim values."""
    if precision.endswith("+kv8"):
        hd = counts(shape)["head_dim"]
        return (hd + 4) / (2.0 * hd)
    return 2.0 if precision == "f32" else 1.0


def decode_floor(shape: dict, precision: str, batch: int, prompt: int, new: int, bandwidth: float, peak_flops: float) -> dict:
    """Floor of the decode phase (tokens 2..new of every sequence) at `batch` sequences."""
    c = counts(shape)
    ctx = prompt + new / 2.0
    w = weight_bytes_per_step(shape, precision, batch)
    keys = keys_read(shape, ctx)  # = ctx * layers without sliding layers
    kv = batch * keys * c["kv_bytes_per_layer_token_bf16"] * kv_bytes_scale(shape, precision)
    attn_flops = 4.0 * keys * shape["num_attention_heads"] * c["head_dim"]
    flops = batch * (2.0 * c["linear_params"] + attn_flops)
    t_bytes = (w + kv) / bandwidth
    t_flops = flops / peak_flops
    step = max(t_bytes, t_flops)
    return dict(
        floor_step_ms=step * 1e3,
        floor_tok_s=batch / step,
        floor_bound="memory" if t_bytes >= t_flops else "compute",
        step_weight_bytes=w,
        step_kv_bytes=kv,
        step_flops=flops,
        mean_context=ctx,
        mean_keys_read=keys,
    )


def prefill_floor(shape: dict, precision: str, prompt: int, bandwidth: float, peak_flops: float) -> dict:
    c = counts(shape)
    h, vocab = shape["hidden_size"], shape["vocab_size"]
    w = weight_bytes_per_step(shape, precision, prompt)
    kv = prompt * c["kv_bytes_per_token_bf16"] * kv_bytes_scale(shape, precision)
    flops = 2.0 * prompt * c["layer_linear_params"] + 2.0 * h * vocab
    flops += 4.0 * shape["num_attention_heads"] * c["head_dim"] * prefill_pairs(shape, prompt)
    t_bytes = (w + kv) / bandwidth
    t_flops = flops / peak_flops
    return dict(
        floor_ms=max(t_bytes, t_flops) * 1e3,
        floor_bound="memory" if t_bytes >= t_flops else "compute",
        flops=flops,
        bytes=w + kv,
    )
