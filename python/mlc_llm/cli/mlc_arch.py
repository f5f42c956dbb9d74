"""`model_config` as MLC LLM's config classes write it for Gemma 2, Gemma 3 (text), Phi-3 and OLMo 2.

MLC builds each model's config class from config.json (`from_file`, whose `__post_init__` fills defaults),
applies gen_config's overrides (`asdict`, override, `from_dict`: `__post_init__` runs again) and writes
`asdict()`: the dataclass fields in declaration order, without the `kwargs` the unknown keys went to. The
builders below follow those classes (python/mlc_llm/model/<arch>/<arch>_model.py in mlc-ai/mlc-llm):
`Gemma2Config(GemmaConfig)`, `Gemma3Config` (with a nested `Gemma3TextConfig` whose `kwargs` are kept),
`Phi3Config`; MLC has no OLMo 2 model, so `olmo2` follows its OLMo config's field names.

Where MLC's class drops a key of config.json that changes the checkpoint's math or length, the key is kept
beside MLC's fields (MLC's own loader puts unknown keys in `kwargs` and ignores them), so that this engine
computes what the checkpoint computes: see `HF_KEPT`.
"""

import argparse
from typing import Any, Callable, Dict, Optional

MAX_CHUNK = 8192

# HF keys kept beside MLC's fields, per model type, and why.
HF_KEPT = {
    # Gemma2Config sets context_window_size to sliding_window ("sliding window attention every other layer is
    # yet to be supported"); this engine runs both layer kinds, up to the checkpoint's own length.
    "gemma2": ["max_position_embeddings", "layer_types", "rope_scaling"],
    # Phi3Config has no sliding window: MLC attends fully where Phi-3-mini-4k's layers slide.
    "phi3": ["sliding_window"],
}


def rope_theta(hf: Dict[str, Any], layer_type: str = "full_attention") -> Optional[float]:
    """The rope base of config.json: `rope_theta`, else transformers 5's `rope_parameters` (flat or keyed by
    layer type)."""
    if hf.get("rope_theta") is not None:
        return hf["rope_theta"]
    params = hf.get("rope_parameters") or {}
    if isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return params.get("rope_theta")


def _chunk_and_window(max_length: int, window_after: Optional[int], args: argparse.Namespace) -> Dict[str, int]:
    """`context_window_size` / `prefill_chunk_size` after MLC's two `__post_init__` passes: the first derives
    them from the checkpoint's length, gen_config's overrides replace them, the second clamps the chunk to
    the window; `window_after`: what the class sets the window to at the end of each pass (Gemma 2)."""
    context = max_length
    chunk = min(context, MAX_CHUNK)
    if window_after is not None:
        context = window_after
    context = args.context_window_size or context
    chunk = args.prefill_chunk_size or chunk
    if chunk > context:
        chunk = min(context, MAX_CHUNK)
    if window_after is not None:
        context = window_after
    return {"context_window_size": context, "prefill_chunk_size": chunk}


def _max_length(hf: Dict[str, Any]) -> int:
    for key in ("max_position_embeddings", "max_sequence_length"):
        if hf.get(key):
            return int(hf[key])
    raise ValueError("config.json has neither max_position_embeddings nor max_sequence_length")


def _kept(hf: Dict[str, Any], model_type: str, defaults: Dict[str, Any]) -> Dict[str, Any]:
    """The `HF_KEPT` keys config.json sets to something other than what MLC's model assumes."""
    return {k: hf[k] for k in HF_KEPT.get(model_type, []) if hf.get(k) is not None and hf[k] != defaults.get(k)}


def gemma2(hf: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """`Gemma2Config(GemmaConfig)`."""
    window = hf.get("sliding_window")
    if window is None:
        raise ValueError("MLC's Gemma2Config needs sliding_window (it becomes context_window_size)")
    sizes = _chunk_and_window(_max_length(hf), window, args)
    n = hf["num_hidden_layers"]
    alternating = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    out = {
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "attention_bias": hf.get("attention_bias", False),
        "num_attention_heads": hf["num_attention_heads"],
        "num_key_value_heads": hf["num_key_value_heads"],
        "head_dim": hf["head_dim"],
        "num_hidden_layers": n,
        "rms_norm_eps": hf["rms_norm_eps"],
        "vocab_size": hf["vocab_size"],
        "hidden_activation": hf.get("hidden_activation") or hf.get("hidden_act"),
        "position_embedding_base": rope_theta(hf) or 10000,
        **sizes,
        "tensor_parallel_shards": args.tensor_parallel_shards or 1,
        "max_batch_size": args.max_batch_size,
        "attn_logit_softcapping": hf.get("attn_logit_softcapping"),
        "final_logit_softcapping": hf.get("final_logit_softcapping"),
        "query_pre_attn_scalar": hf.get("query_pre_attn_scalar"),
        "sliding_window": window,
    }
    scaling = hf.get("rope_scaling")
    plain_rope = None if scaling is None or (scaling.get("rope_type") or scaling.get("type")) == "default" else scaling
    return {**out, **_kept({**hf, "rope_scaling": plain_rope}, "gemma2", {"layer_types": alternating})}


# Gemma3TextConfig's fields and their defaults, in declaration order (`None`: required).
GEMMA3_TEXT_FIELDS: Dict[str, Any] = {
    "hidden_size": None,
    "intermediate_size": None,
    "num_hidden_layers": None,
    "attention_bias": False,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "position_embedding_base": 0,
    "context_window_size": 131_072,
    "prefill_chunk_size": 0,
    "query_pre_attn_scalar": 256,
    "sliding_window": None,
}


def gemma3(hf: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """`Gemma3Config` for a text-only checkpoint (`gemma3_text`): the text model's fields and the other keys
    of config.json (its `kwargs`) under `text_config`; the vocabulary and the engine sizes at the top."""
    if "text_config" in hf:
        raise ValueError("multimodal Gemma 3 checkpoints (Gemma3ForConditionalGeneration) are not supported; convert a gemma3_text one")
    source = {k: v for k, v in hf.items() if k != "vocab_size"}
    text = {k: source.get(k, default) for k, default in GEMMA3_TEXT_FIELDS.items()}
    kwargs = {k: v for k, v in source.items() if k not in GEMMA3_TEXT_FIELDS}
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "sliding_window") if text[k] is None]
    if missing:
        raise ValueError(f"MLC's Gemma3TextConfig needs {', '.join(missing)}")
    if text["hidden_activation"] is None:
        text["hidden_activation"] = kwargs.get("hidden_act")
    if not text["position_embedding_base"]:
        theta = kwargs.pop("rope_theta", None)
        text["position_embedding_base"] = theta if theta is not None else rope_theta(hf) or 10000
    if not text["prefill_chunk_size"]:
        text["prefill_chunk_size"] = min(text["context_window_size"], MAX_CHUNK)
    text["context_window_size"] = max(text["sliding_window"], MAX_CHUNK)
    text["kwargs"] = kwargs
    context = args.context_window_size or text["context_window_size"]
    return {
        "text_config": text,
        "vocab_size": hf.get("vocab_size", 262_208),
        "tensor_parallel_shards": args.tensor_parallel_shards or 1,
        "max_batch_size": args.max_batch_size,
        "context_window_size": context,
        "sliding_window_size": args.sliding_window_size or -1,
        "prefill_chunk_size": args.prefill_chunk_size or text["prefill_chunk_size"],
        "is_text_model": True,
    }


def _phi3_rope_scaling(hf: Dict[str, Any], original: int) -> Optional[Dict[str, Any]]:
    """Phi3Config keeps `rope_scaling` only with a `type` (longrope; transformers 4's "su" renamed) and
    copies the type and both lengths into it."""
    scaling = hf.get("rope_scaling")
    if scaling is None or "type" not in scaling:
        return None
    scaling = dict(scaling)
    if scaling["type"] == "su":
        scaling["type"] = "longrope"
    if scaling["type"] != "longrope":
        raise ValueError(f"MLC's Phi3Config supports only longrope scaling, not {scaling['type']!r}")
    scaling["rope_type"] = scaling["type"]
    scaling["max_position_embeddings"], scaling["original_max_position_embeddings"] = hf["max_position_embeddings"], original
    return scaling


def phi3(hf: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """`Phi3Config`."""
    heads = hf["num_attention_heads"]
    original = hf.get("original_max_position_embeddings") or 0
    partial = hf.get("partial_rotary_factor") or (hf.get("rope_parameters") or {}).get("partial_rotary_factor") or 1.0
    out = {
        "model_type": hf["model_type"],
        "hidden_size": hf["hidden_size"],
        "vocab_size": hf["vocab_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "intermediate_size": hf["intermediate_size"],
        "rms_norm_eps": hf["rms_norm_eps"],
        "num_key_value_heads": hf.get("num_key_value_heads") or heads,
        "max_position_embeddings": hf["max_position_embeddings"],
        "position_embedding_base": rope_theta(hf) or 10000,
        "rope_scaling": _phi3_rope_scaling(hf, original),
        "original_max_position_embeddings": original,
        **_chunk_and_window(hf["max_position_embeddings"], None, args),
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "tensor_parallel_shards": args.tensor_parallel_shards or 1,
        "max_batch_size": args.max_batch_size,
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
        "partial_rotary_factor": partial,
    }
    return {**out, **_kept(hf, "phi3", {})}


def olmo2(hf: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """MLC has no OLMo 2 model: its OLMo config's field names, plus what OLMo 2 adds (RMSNorm eps, biases)."""
    heads = hf["num_attention_heads"]
    scaling = hf.get("rope_scaling")
    if scaling is None:
        params = {k: v for k, v in (hf.get("rope_parameters") or {}).items() if k != "rope_theta"}
        scaling = params if params.get("rope_type", "default") != "default" else None
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "num_attention_heads": heads,
        "num_key_value_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "position_embedding_base": rope_theta(hf) or 10000,
        "rope_scaling": scaling,
        "intermediate_size": hf["intermediate_size"],
        "hidden_act": hf.get("hidden_act", "silu"),
        "num_hidden_layers": hf["num_hidden_layers"],
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
        **_chunk_and_window(_max_length(hf), None, args),
        "tensor_parallel_shards": args.tensor_parallel_shards or 1,
        "pipeline_parallel_stages": args.pipeline_parallel_stages or 1,
        "max_batch_size": args.max_batch_size,
        "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "attention_bias": hf.get("attention_bias", False),
    }


BUILDERS: Dict[str, Callable[[Dict[str, Any], argparse.Namespace], Dict[str, Any]]] = {
    "gemma2": gemma2,
    "gemma3_text": gemma3,
    "gemma3": gemma3,
    "phi3": phi3,
    "olmo2": olmo2,
}
