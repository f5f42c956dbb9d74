"""`mlc_llm convert_weight CONFIG --quantization QUANT -o OUTPUT`: an HF safetensors checkpoint written as
MLC's tensor cache (`tensor-cache.json` + `params_shard_*.bin`, 32 MB shards with md5 sums), with MLC's
parameter names and fused layouts; `q4f16_1` and friends are MLC's 4-bit group quantization.

The conversion runs in the Rust core on all CPU cores; `--device` is accepted for compatibility with MLC's
command line, which quantizes on a GPU."""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUANTIZATIONS = ["q0f16", "q0bf16", "q0f32", "q4f16_1", "q4bf16_1", "q4f32_1"]
# MLC's model types we convert (olmo2: ours; MLC LLM has no OLMo 2 model).
MODEL_TYPES = ["auto", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo2", "mixtral",
               "qwen2_moe", "qwen3_moe", "eagle"]
# MLC model types that read a checkpoint of another config.json model_type.
MODEL_TYPE_ALIASES = {"gemma3": ["gemma3_text"]}
EXIT_OK = 0
EXIT_ERROR = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert_weight",
        help="convert HF weights to an MLC tensor cache, optionally 4-bit quantized",
        description=__doc__,
    )
    parser.add_argument("config", help="the HF model directory or its config.json")
    parser.add_argument("--quantization", required=True, choices=QUANTIZATIONS, help="weight format to write")
    parser.add_argument("--model-type", default="auto", choices=MODEL_TYPES, help="checked against config.json")
    parser.add_argument("--device", default="auto", help="accepted for compatibility; conversion runs on the CPU")
    parser.add_argument("--source", default=None, help="weights directory (default: the config's directory)")
    parser.add_argument(
        "--source-format",
        default="auto",
        choices=["auto", "huggingface-safetensor"],
        help="format of the source weights",
    )
    parser.add_argument("--output", "-o", required=True, help="output directory")


def model_dir(config: str) -> Path:
    path = Path(config)
    return path if path.is_dir() else path.parent


def check_model_type(source: Path, model_type: str) -> None:
    """`--model-type` other than auto must agree with config.json (an EAGLE head's config is a Llama one;
    its weights, `fc` beside `layers.*`, tell it apart)."""
    if model_type in ("auto", "eagle"):
        return
    found = json.loads((source / "config.json").read_text()).get("model_type")
    if found != model_type and found not in MODEL_TYPE_ALIASES.get(model_type, []):
        raise ValueError(f"--model-type {model_type} but {source / 'config.json'} says model_type {found!r}")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mlc_llm import _core
    from mlc_llm.protocol.errors import MLCError

    source = Path(args.source) if args.source else model_dir(args.config)
    try:
        if not (source / "config.json").exists():
            raise ValueError(f"{source} has no config.json")
        check_model_type(source, args.model_type)
        if args.device not in ("auto", "cpu"):
            logger.info("--device %s: weights are converted on the CPU", args.device)
        bar = tqdm(desc="converting", unit="param", file=sys.stderr)

        def progress(done: int, total: int, name: str) -> None:
            bar.total = total
            bar.set_postfix_str(name, refresh=False)
            bar.update(done - bar.n)

        try:
            report = json.loads(_core.convert_weight(str(source), args.quantization, args.output, progress))
        finally:
            bar.close()
    except (MLCError, ValueError, OSError) as e:
        print(f"mlc_llm convert_weight: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"{report['num_tensors']} tensors in {report['num_shards']} shards, "
        f"{report['param_bytes'] / 2**30:.3f} GiB, {report['bits_per_param']:.3f} bits per parameter "
        f"({report['source_params']:,} parameters) -> {args.output}"
    )
    return EXIT_OK
