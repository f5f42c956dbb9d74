"""`mlc_llm gen_config CONFIG --quantization QUANT --conv-template NAME -o OUTPUT`: writes
`mlc-chat-config.json` (MLC's schema: model type and config, quantization, window and chunk sizes, sampling
defaults from generation_config.json, tokenizer files and info, the conversation template as a full object)
and copies the tokenizer files beside it."""

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from mlc_llm.cli import mlc_arch
from mlc_llm.cli.convert_weight import MODEL_TYPES, QUANTIZATIONS, check_model_type, model_dir
from mlc_llm.cli.template_check import Vocabulary, template_mismatches

logger = logging.getLogger(__name__)

CHAT_CONFIG_VERSION = "0.1.0"
TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json"]
# MLC's values for sampling fields that neither generation_config.json nor config.json set.
SYSTEM_DEFAULTS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "temperature": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "top_p": 1.0,
}
DEFAULT_MAX_BATCH_SIZE = 128
EXIT_OK = 0
EXIT_ERROR = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gen_config",
        help="write mlc-chat-config.json and copy the tokenizer for an MLC model directory",
        description=__doc__,
    )
    parser.add_argument("config", help="the HF model directory or its config.json")
    parser.add_argument("--quantization", required=True, choices=QUANTIZATIONS)
    parser.add_argument("--model-type", default="auto", choices=MODEL_TYPES)
    parser.add_argument("--conv-template", required=True, help="conversation template name (e.g. llama-3_1, qwen2, chatml)")
    parser.add_argument("--context-window-size", type=int, default=None)
    parser.add_argument("--sliding-window-size", type=int, default=None)
    parser.add_argument("--prefill-chunk-size", type=int, default=None)
    parser.add_argument("--attention-sink-size", type=int, default=None)
    parser.add_argument("--tensor-parallel-shards", type=int, default=None)
    parser.add_argument("--pipeline-parallel-stages", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--output", "-o", required=True, help="output directory")


def _model_config(hf: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """The `model_config` object MLC's config class for this architecture dumps."""
    model_type = hf["model_type"]
    if model_type in mlc_arch.BUILDERS:
        return mlc_arch.BUILDERS[model_type](hf, args)
    llama_like, qwen_like = ("llama", "mistral", "mixtral"), ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    if model_type not in llama_like + qwen_like:
        known = ", ".join([*llama_like, *qwen_like, *mlc_arch.BUILDERS])
        raise ValueError(f"config.json model_type {model_type!r} is not supported; supported: {known}")
    heads = hf["num_attention_heads"]
    window = args.context_window_size or hf.get("max_position_embeddings") or hf.get("max_sequence_length") or 4096
    chunk = args.prefill_chunk_size or min(window, 8192)
    common = {
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_attention_heads": heads,
        "num_hidden_layers": hf["num_hidden_layers"],
        "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "vocab_size": hf["vocab_size"],
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }
    rope_theta = mlc_arch.rope_theta(hf) or 10000.0
    sizes = {
        "context_window_size": window,
        "prefill_chunk_size": chunk,
        "num_key_value_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "tensor_parallel_shards": args.tensor_parallel_shards or 1,
        "pipeline_parallel_stages": args.pipeline_parallel_stages or 1,
        "max_batch_size": args.max_batch_size,
    }
    if model_type in llama_like:
        out = {**common, "position_embedding_base": rope_theta, "rope_scaling": hf.get("rope_scaling"), **sizes}
        if model_type == "mistral":
            out["sliding_window_size"] = args.sliding_window_size or hf.get("sliding_window") or -1
            out["attention_sink_size"] = args.attention_sink_size or 4
        else:
            out["disaggregation"] = False
        if model_type == "mixtral":  # MixtralConfig(LlamaConfig)
            out["num_local_experts"] = hf["num_local_experts"]
            out["num_experts_per_tok"] = hf.get("num_experts_per_tok", 2)
        return out
    out = {"hidden_act": hf.get("hidden_act", "silu"), **common, "rope_theta": rope_theta, **sizes}
    out["sliding_window_size"] = args.sliding_window_size or -1
    out["dtype"] = "float32"
    if model_type in ("qwen3", "qwen3_moe"):
        out["attention_bias"] = bool(hf.get("attention_bias", False))
        out["rope_scaling"] = hf.get("rope_scaling")
    if model_type in ("qwen2_moe", "qwen3_moe"):  # Qwen2MoeConfig / Qwen3MoeConfig
        out["moe_intermediate_size"] = hf["moe_intermediate_size"]
        if model_type == "qwen2_moe":
            out["shared_expert_intermediate_size"] = hf["shared_expert_intermediate_size"]
        out["num_experts_per_tok"] = hf["num_experts_per_tok"]
        # transformers 5 saves Qwen3-MoE's count as num_local_experts; MLC's field is num_experts.
        out["num_experts"] = hf.get("num_experts", hf.get("num_local_experts"))
        out["decoder_sparse_step"] = hf.get("decoder_sparse_step", 1)
        out["norm_topk_prob"] = bool(hf.get("norm_topk_prob", False))
    return out


def _tokenizer_info(tokenizer_json: Path) -> Dict[str, Any]:
    """How token text maps to bytes, as MLC's tokenizer-info detection reports it."""
    info = {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": False, "strip_space_in_decode": False}
    if not tokenizer_json.exists():
        return info
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    decoder = tok.get("decoder") or {}
    steps: List[Dict[str, Any]] = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    if any(s.get("type") == "ByteLevel" for s in steps):
        info["token_postproc_method"] = "byte_level"
        return info
    normalizer = tok.get("normalizer") or {}
    norms = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    info["prepend_space_in_encode"] = any(n.get("type") == "Prepend" for n in norms)
    info["strip_space_in_decode"] = any(s.get("type") == "Strip" for s in steps)
    return info


def _active_vocab_size(tokenizer_json: Path, vocab_size: int) -> int:
    """Ids the tokenizer can produce (its vocabulary plus added tokens), as `len(hf_tokenizer)` counts."""
    if not tokenizer_json.exists():
        return vocab_size
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = (tok.get("model") or {}).get("vocab") or {}
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
    ids.update(t["id"] for t in tok.get("added_tokens", []))
    return len(ids) or vocab_size


def _conv_template(name: str) -> Any:
    from mlc_llm import _core

    found: Optional[str] = _core.conv_template_json(name)
    if found is None:
        # As MLC's gen_config (its --conv-template has fixed choices): a misspelled name would otherwise
        # give a directory whose chats render with no template at all.
        raise ValueError(f"--conv-template {name!r} is not a known conversation template; known: {', '.join(_core.conv_template_names())}")
    return json.loads(found)


def build_chat_config(source: Path, args: argparse.Namespace) -> Dict[str, Any]:
    hf = json.loads((source / "config.json").read_text())
    eagle = args.model_type == "eagle"
    model_config = _model_config({**hf, "model_type": "llama"} if eagle else hf, args)
    if eagle:  # MLC's EagleConfig: a Llama config and whether fc has a bias
        model_config["bias"] = bool(hf.get("bias", True))
    # MLC names the directory's model type after its model class (`--model-type`, else config.json's).
    model_type = hf["model_type"] if args.model_type == "auto" else args.model_type
    config: Dict[str, Any] = {
        "version": CHAT_CONFIG_VERSION,
        "model_type": model_type,
        "quantization": args.quantization,
        "model_config": model_config,
        "vocab_size": model_config.get("vocab_size", hf.get("vocab_size")),
        "context_window_size": model_config.get("context_window_size", -1),
        "sliding_window_size": model_config.get("sliding_window_size", -1),
        "prefill_chunk_size": model_config["prefill_chunk_size"],
        "attention_sink_size": model_config.get("attention_sink_size", -1),
        "tensor_parallel_shards": model_config["tensor_parallel_shards"],
        "pipeline_parallel_stages": model_config.get("pipeline_parallel_stages", 1),
        "active_vocab_size": _active_vocab_size(source / "tokenizer.json", hf["vocab_size"]),
        "temperature": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "repetition_penalty": None,
        "top_p": None,
        "tokenizer_files": [f for f in TOKENIZER_FILES if (source / f).exists()],
        "tokenizer_info": _tokenizer_info(source / "tokenizer.json"),
        "conv_template": _conv_template(args.conv_template),
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    # Unset sampling fields come from generation_config.json, then config.json, then MLC's defaults.
    for name in ["generation_config.json", "config.json"]:
        path = source / name
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if key in config and config[key] is None and value is not None:
                    config[key] = value
    for key, value in SYSTEM_DEFAULTS.items():
        if config[key] is None:
            config[key] = value
    return config


def main(args: argparse.Namespace) -> int:
    source = model_dir(args.config)
    output = Path(args.output)
    try:
        if not (source / "config.json").exists():
            raise ValueError(f"{source} has no config.json")
        check_model_type(source, args.model_type)
        config = build_chat_config(source, args)
        output.mkdir(parents=True, exist_ok=True)
        for name in config["tokenizer_files"]:
            shutil.copy(source / name, output / name)
        with (output / "mlc-chat-config.json").open("w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    except (ValueError, KeyError, OSError) as e:
        print(f"mlc_llm gen_config: {e}", file=sys.stderr)
        return EXIT_ERROR
    vocab = Vocabulary.load(source / "tokenizer.json")
    if vocab is not None:
        eos = config["eos_token_id"]
        for problem in template_mismatches(config["conv_template"], vocab, eos if isinstance(eos, list) else [eos]):
            print(f"mlc_llm gen_config: warning: --conv-template {args.conv_template}: {problem}", file=sys.stderr)
    print(f"wrote {output / 'mlc-chat-config.json'} ({', '.join(config['tokenizer_files']) or 'no tokenizer files'})")
    return EXIT_OK
