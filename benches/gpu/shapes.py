"""Model shapes of the GPU benchmark and the physical floor of each measured row.

Pure Python (no torch): the orchestrator computes floors from the shape, the measured device-to-device
bandwidth and the measured bf16 matmul rate.

Floor of one decode step at batch B (every sequence at context c):
    bytes = weights read per step (all linear layers incl. lm_head, norms, B embedding rows)
            + B * c * KV bytes per token (each sequence reads its whole KV cache)
    flops = B * (2 * linear parameters + 4 * c * layers * heads * head_dim)
    step  = max(bytes / bandwidth, flops / matmul peak);  floor tok/s = B / step
with c the mean context over the generated tokens (prompt + new / 2). The embedding table is not read as
a whole in a decode step (only B rows), so it is left out of the weight bytes.
Floor of a prefill of P tokens: max((weights + P * KV bytes) / bandwidth, flops / peak) with
flops = 2 * P * linear parameters (lm_head for the last token only) + 2 * layers * heads * head_dim * P^2
(causal attention: QK^T and PV, half of the square each).
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
}

Q4_0_BYTES_PER_WEIGHT = 18 / 32  # ggml block_q4_0: one f16 scale + 32 4-bit values


def counts(shape: dict) -> dict:
    """Parameter counts of a Llama shape."""
    h = shape["hidden_size"]
    nh = shape["num_attention_heads"]
    kvh = shape["num_key_value_heads"]
    hd = h // nh
    ffn = shape["intermediate_size"]
    layers = shape["num_hidden_layers"]
    vocab = shape["vocab_size"]
    per_layer_linear = h * nh * hd + 2 * h * kvh * hd + nh * hd * h + 3 * h * ffn
    norms = layers * 2 * h + h
    embed = vocab * h
    lm_head = 0 if shape["tie_word_embeddings"] else vocab * h
    return dict(
        head_dim=hd,
        linear_params=layers * per_layer_linear + vocab * h,  # the lm_head matmul runs even when tied
        layer_linear_params=layers * per_layer_linear,
        norm_params=norms,
        embed_params=embed,
        total_params=layers * per_layer_linear + norms + embed + lm_head,
        kv_bytes_per_token_bf16=2 * layers * kvh * hd * 2,
    )


def weight_bytes_per_step(shape: dict, precision: str, batch: int) -> float:
    """Weight bytes one forward step must read: linear layers (incl. lm_head), norms, `batch` embedding rows."""
    c = counts(shape)
    # q4f16_1 runs as the same Q4_0 blocks (18 bytes per 32 weights) after a lossless repack at load.
    per_weight = {"bf16": 2.0, "f16": 2.0, "f32": 4.0, "q4_0": Q4_0_BYTES_PER_WEIGHT,
                  "q4f16_1": Q4_0_BYTES_PER_WEIGHT}[precision]
    act = 4.0 if precision == "f32" else 2.0  # norms and activations: the compute dtype (bf16 on GPUs)
    return c["linear_params"] * per_weight + c["norm_params"] * act + batch * shape["hidden_size"] * act


def decode_floor(shape: dict, precision: str, batch: int, prompt: int, new: int, bandwidth: float, peak_flops: float) -> dict:
    """Floor of the decode phase (tokens 2..new of every sequence) at `batch` sequences."""
    c = counts(shape)
    ctx = prompt + new / 2.0
    w = weight_bytes_per_step(shape, precision, batch)
    kv = batch * ctx * c["kv_bytes_per_token_bf16"] * (2 if precision == "f32" else 1)
    attn_flops = 4.0 * ctx * shape["num_hidden_layers"] * shape["num_attention_heads"] * c["head_dim"]
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
    )


def prefill_floor(shape: dict, precision: str, prompt: int, bandwidth: float, peak_flops: float) -> dict:
    c = counts(shape)
    h, vocab = shape["hidden_size"], shape["vocab_size"]
    w = weight_bytes_per_step(shape, precision, prompt)
    kv = prompt * c["kv_bytes_per_token_bf16"] * (2 if precision == "f32" else 1)
    flops = 2.0 * prompt * c["layer_linear_params"] + 2.0 * h * vocab
    flops += 2.0 * shape["num_hidden_layers"] * shape["num_attention_heads"] * c["head_dim"] * prompt * prompt
    t_bytes = (w + kv) / bandwidth
    t_flops = flops / peak_flops
    return dict(
        floor_ms=max(t_bytes, t_flops) * 1e3,
        floor_bound="memory" if t_bytes >= t_flops else "compute",
        flops=flops,
        bytes=w + kv,
    )
