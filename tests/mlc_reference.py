"""An independent numpy reading of MLC model directories, for checking what our converter writes and our
engine computes: the tensor cache parsed from its documented layout, 4-bit groups unpacked and scaled as MLC
defines them (`w = (q - 7) * scale`, 8 values per uint32, low nibble first), fused q/k/v and gate/up split back
into HF names, and a float64 Llama forward pass over the result. Nothing here calls the Rust code."""

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

_DTYPES = {"float32": "<f4", "float16": "<f2", "uint32": "<u4", "int32": "<i4"}


def _array(raw: bytes, record: dict) -> np.ndarray:
    dtype = record["dtype"]
    if record["format"] == "f32-to-bf16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(record["shape"])
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(record["shape"])
    return np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(record["shape"])


def read_tensor_cache(model_dir: Path) -> Dict[str, np.ndarray]:
    """Every stored parameter by its MLC name."""
    index = json.loads((model_dir / "tensor-cache.json").read_text())
    out = {}
    for shard in index["records"]:
        data = (model_dir / shard["dataPath"]).read_bytes()
        for rec in shard["records"]:
            out[rec["name"]] = _array(data[rec["byteOffset"] : rec["byteOffset"] + rec["nbytes"]], rec)
    return out


def dequantize_q4(q_weight: np.ndarray, q_scale: np.ndarray) -> np.ndarray:
    """uint32 [rows, cols/8] + scales [rows, cols/32] -> float64 [rows, cols]."""
    rows, words = q_weight.shape
    shifts = np.arange(8, dtype=np.uint32) * 4
    q = (q_weight[:, :, None] >> shifts) & 0xF  # [rows, words, 8]: value i of a word at bits 4i
    q = q.reshape(rows, words * 8).astype(np.float64)
    scale = np.repeat(q_scale.astype(np.float64), 32, axis=1)
    return (q - 7.0) * scale


def hf_weights(model_dir: Path) -> Dict[str, np.ndarray]:
    """The MLC parameters as float64 HF-named tensors (4-bit ones dequantized, fused ones split)."""
    stored = read_tensor_cache(model_dir)
    chat = json.loads((model_dir / "mlc-chat-config.json").read_text())
    mc = chat["model_config"]
    heads, kv = mc["num_attention_heads"], mc["num_key_value_heads"]
    d = mc.get("head_dim") or mc["hidden_size"] // heads
    dense: Dict[str, np.ndarray] = {}
    for name, arr in stored.items():
        if name.endswith(".q_weight"):
            base = name[: -len(".q_weight")]
            dense[base + ".weight"] = dequantize_q4(arr, stored[base + ".q_scale"])
        elif not name.endswith(".q_scale"):
            dense[name] = arr.astype(np.float64)
    out = {}
    for name, arr in dense.items():
        if ".self_attn.qkv_proj." in name or ".self_attn.c_attn." in name:
            fused = ".self_attn.qkv_proj." if ".qkv_proj." in name else ".self_attn.c_attn."
            prefix, suffix = name.split(fused)
            sizes = [heads * d, kv * d, kv * d]
            for part, chunk in zip(["q_proj", "k_proj", "v_proj"], np.split(arr, np.cumsum(sizes)[:-1], axis=0)):
                out[f"{prefix}.self_attn.{part}.{suffix}"] = chunk
        elif ".mlp.gate_up_proj." in name:
            prefix, suffix = name.split(".mlp.gate_up_proj.")
            gate, up = np.split(arr, 2, axis=0)
            out[f"{prefix}.mlp.gate_proj.{suffix}"] = gate
            out[f"{prefix}.mlp.up_proj.{suffix}"] = up
        else:
            out[name] = arr
    return out


def llama_forward(cfg: dict, w: Dict[str, np.ndarray], ids: List[int]) -> np.ndarray:
    """Logits [len(ids), vocab] of a Llama-family model (plain rope) in float64."""
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // heads
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg.get("position_embedding_base") or 10000.0
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    n = len(ids)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(h, p + "self_attn.k_proj").reshape(n, kv_heads, d).transpose(1, 0, 2)
        v = lin(h, p + "self_attn.v_proj").reshape(n, kv_heads, d).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = heads // kv_heads
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + lin(a.transpose(1, 0, 2).reshape(n, heads * d), p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T
