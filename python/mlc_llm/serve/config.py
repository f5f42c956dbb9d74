"""Engine arguments: MLC's `EngineConfig`, their validation, and the JSON handed to `_core.Engine`.

Arguments are checked here, before the model is loaded, so that a typo fails in milliseconds with a
`BadRequestError` naming the argument instead of after a model load. Options that MLC has and this
engine does not implement raise `UnsupportedError`; options that only tune MLC's compiler are accepted
and logged as having no effect.
"""

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..protocol.errors import BadRequestError, UnsupportedError

logger = logging.getLogger("mlc_llm.serve")

MODES = ("local", "interactive", "server")
# "ngram" (prompt lookup) goes beyond MLC's modes; "medusa" is an accepted name reported as not implemented.
SPECULATIVE_MODES = ("disable", "small_draft", "eagle", "medusa", "ngram")
PREFIX_CACHE_MODES = ("disable", "radix")
KV_CACHE_DTYPES = ("auto", "float16", "f16", "float32", "f32", "fp8", "fp8_e4m3")
# Drafts beyond this never pay off (each drafted token costs a draft step; acceptance decays with length).
MAX_SPEC_DRAFT_LENGTH = 64


@dataclass
class EngineConfig:
    """MLC LLM's engine configuration (same field names), accepted as `engine_config=`.

    `None` means "let the engine choose for the mode"; explicit keyword arguments of the engine
    constructor take precedence over the values here.
    """

    model: Optional[str] = None
    model_lib: Optional[str] = None
    additional_models: List[Union[str, Tuple[str, str]]] = field(default_factory=list)
    mode: Optional[str] = None
    tensor_parallel_shards: Optional[int] = None
    pipeline_parallel_stages: Optional[int] = None
    opt: Optional[str] = None
    gpu_memory_utilization: Optional[float] = None
    kv_cache_page_size: Optional[int] = None
    max_num_sequence: Optional[int] = None
    max_total_sequence_length: Optional[int] = None
    max_single_sequence_length: Optional[int] = None
    prefill_chunk_size: Optional[int] = None
    sliding_window_size: Optional[int] = None
    attention_sink_size: Optional[int] = None
    max_history_size: Optional[int] = None
    kv_state_kind: Optional[str] = None
    speculative_mode: str = "disable"
    spec_draft_length: int = 0
    spec_tree_width: int = 1
    prefix_cache_mode: str = "radix"
    prefix_cache_max_num_recycling_seqs: Optional[int] = None
    prefill_mode: str = "hybrid"
    verbose: bool = True
    # Not in MLC: keep GGUF weights quantized (our kernels) or widen them at load. None: the device's
    # default (quantized on the CPU, widened on GPUs; MLC_QUANTIZED_MATMUL=0/1 overrides), see the README.
    quantized_matmul: Optional[bool] = None
    # Not in MLC (its CUDA graphs are a compile option): replay decode steps through CUDA graphs on
    # CUDA devices. MLC_CUDA_GRAPH=0 also turns them off.
    cuda_graph: bool = True
    # Not in MLC (vLLM's kv_cache_dtype). "auto": float16 on the CPU, the compute dtype (bf16 / f16) on CUDA.
    # The CPU computes in f32 but keeps K and V in f16 (rounded to nearest even, widened exactly when read):
    # half the memory and half the bytes its attention reads per key, for about 0.001 nats per token on
    # SmolLM2 (max 0.01; the fidelity bound is 0.05 / 0.5, README "CPU"). "float32" ("f32") keeps the CPU's
    # exact f32 cache; "float16" ("f16") asks for f16 (on CUDA only where it is the compute dtype).
    # "fp8_e4m3" ("fp8"): K and V stored as e4m3 with a scale per row: a quarter of an f32 cache, half of a
    # bf16 / f16 one, at about 0.11 nats per token on SmolLM2.
    kv_cache_dtype: Optional[str] = None

    def asjson(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EngineArgs:
    """The constructor arguments of MLCEngine / AsyncMLCEngine after merging `engine_config`."""

    model: str
    device: str
    model_lib: Optional[str]
    mode: str
    additional_models: List[Union[str, Tuple[str, str]]]
    max_batch_size: Optional[int]
    max_total_sequence_length: Optional[int]
    prefill_chunk_size: Optional[int]
    max_history_size: Optional[int]
    gpu_memory_utilization: Optional[float]
    speculative_mode: str
    spec_draft_length: int
    enable_tracing: bool
    verbose: bool
    kv_cache_page_size: Optional[int] = None
    prefix_cache: bool = True
    quantized_matmul: Optional[bool] = None
    cuda_graph: bool = True
    kv_events: bool = False
    tensor_parallel_shards: Optional[int] = None
    kv_cache_dtype: Optional[str] = None

    def core_config(self) -> Dict[str, Any]:
        """The `config_json` object of `_core.Engine` (see _core.pyi)."""
        config: Dict[str, Any] = {
            "mode": self.mode,
            "max_num_sequence": self.max_batch_size,
            "max_total_sequence_length": self.max_total_sequence_length,
            "prefill_chunk_size": self.prefill_chunk_size,
            "max_history_size": self.max_history_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_page_size": self.kv_cache_page_size,
            "prefix_cache": self.prefix_cache,
            "enable_tracing": self.enable_tracing,
            "verbose": self.verbose,
        }
        if self.quantized_matmul is not None:  # an explicit choice, either way, wins over the device default
            config["quantized_matmul"] = self.quantized_matmul
        if self.speculative_mode != "disable":
            config["speculative_mode"] = self.speculative_mode
            config["spec_draft_length"] = self.spec_draft_length
            config["additional_models"] = [_model_path(m) for m in self.additional_models]
        if not self.cuda_graph:
            config["cuda_graph"] = False
        if self.kv_events:
            config["kv_events"] = True
        if self.tensor_parallel_shards is not None:
            config["tensor_parallel_shards"] = self.tensor_parallel_shards
        if self.kv_cache_dtype is not None:
            config["kv_cache_dtype"] = self.kv_cache_dtype
        return config


def merge_engine_config(args: EngineArgs, config: Optional[EngineConfig]) -> EngineArgs:
    """Fills the arguments left at their defaults from `config` (MLC's `engine_config=`)."""
    if config is None:
        return args
    if not isinstance(config, EngineConfig):
        raise BadRequestError("engine_config must be an mlc_llm.serve.EngineConfig", "engine_config")
    _reject_unsupported_config(config)
    merged = dataclasses.replace(args)
    if config.mode is not None and args.mode == "local":
        merged.mode = config.mode
    if args.model_lib is None:
        merged.model_lib = config.model_lib
    if not args.additional_models:
        merged.additional_models = model_list(config.additional_models)
    if args.speculative_mode == "disable":
        merged.speculative_mode = config.speculative_mode
    if config.spec_draft_length != 0:  # EngineConfig's default (0) leaves the engine's argument alone
        merged.spec_draft_length = config.spec_draft_length
    pairs = (
        ("max_batch_size", config.max_num_sequence),
        ("max_total_sequence_length", config.max_total_sequence_length),
        ("prefill_chunk_size", config.prefill_chunk_size),
        ("max_history_size", config.max_history_size),
        ("gpu_memory_utilization", config.gpu_memory_utilization),
    )
    for name, value in pairs:
        if getattr(args, name) is None:
            setattr(merged, name, value)
    merged.kv_cache_page_size = config.kv_cache_page_size
    if config.prefix_cache_mode not in PREFIX_CACHE_MODES:
        raise BadRequestError(f"prefix_cache_mode must be one of {PREFIX_CACHE_MODES}", "prefix_cache_mode")
    merged.prefix_cache = config.prefix_cache_mode == "radix"
    merged.verbose = args.verbose and config.verbose
    merged.quantized_matmul = None if config.quantized_matmul is None else bool(config.quantized_matmul)
    merged.cuda_graph = bool(config.cuda_graph)
    merged.tensor_parallel_shards = config.tensor_parallel_shards
    if config.kv_cache_dtype is not None and config.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise BadRequestError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {config.kv_cache_dtype!r}", "kv_cache_dtype")
    merged.kv_cache_dtype = config.kv_cache_dtype
    return merged


def _reject_unsupported_config(config: EngineConfig) -> None:
    if config.pipeline_parallel_stages is not None and config.pipeline_parallel_stages != 1:
        raise UnsupportedError("pipeline_parallel_stages > 1 (multi-GPU) is not supported yet", "pipeline_parallel_stages")
    for name in ("sliding_window_size", "attention_sink_size", "max_single_sequence_length"):
        value = getattr(config, name)
        if value is not None and value != -1:
            raise UnsupportedError(f"{name} cannot be overridden; it comes from the model", name)
    if config.kv_state_kind not in (None, "kv_cache"):
        raise UnsupportedError("only kv_state_kind='kv_cache' is supported", "kv_state_kind")
    if config.opt is not None or config.prefill_mode != "hybrid":
        logger.info("opt and prefill_mode tune MLC's compiler; kernels here are built in, so they have no effect")


def validate_engine_args(args: EngineArgs) -> None:
    """Raises BadRequestError / UnsupportedError naming the first invalid argument."""
    if not isinstance(args.model, str) or not args.model:
        raise BadRequestError("model must be a non-empty path or HF:// name", "model")
    if not isinstance(args.device, str) or not args.device:
        raise BadRequestError("device must be a string such as 'auto', 'cpu' or 'cuda:0'", "device")
    if args.mode not in MODES:
        raise BadRequestError(f"mode must be one of {MODES}, got {args.mode!r}", "mode")
    if args.speculative_mode not in SPECULATIVE_MODES:
        raise BadRequestError(
            f"speculative_mode must be one of {SPECULATIVE_MODES}, got {args.speculative_mode!r}", "speculative_mode"
        )
    if args.speculative_mode == "medusa":
        raise UnsupportedError(
            "speculative_mode 'medusa' is not implemented yet; use 'eagle', 'small_draft' or 'ngram'", "speculative_mode"
        )
    if args.speculative_mode in ("small_draft", "eagle") and not args.additional_models:
        raise BadRequestError(
            f"speculative_mode {args.speculative_mode!r} needs its draft model in additional_models", "additional_models"
        )
    if args.additional_models and args.speculative_mode not in ("small_draft", "eagle"):
        raise BadRequestError(
            "additional_models are draft models and need speculative_mode 'small_draft' or 'eagle'", "additional_models"
        )
    for name in ("max_batch_size", "max_total_sequence_length", "prefill_chunk_size", "max_history_size"):
        _check_positive_int(name, getattr(args, name))
    if not _is_int(args.spec_draft_length) or not 0 <= args.spec_draft_length <= MAX_SPEC_DRAFT_LENGTH:
        raise BadRequestError(
            f"spec_draft_length must be an integer in [0, {MAX_SPEC_DRAFT_LENGTH}] (0 = adaptive)", "spec_draft_length"
        )
    util = args.gpu_memory_utilization
    if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0.0 < util <= 1.0):
        raise BadRequestError(f"gpu_memory_utilization must be in (0, 1], got {util!r}", "gpu_memory_utilization")
    if args.kv_cache_page_size is not None:
        _check_positive_int("kv_cache_page_size", args.kv_cache_page_size)
    _check_tensor_parallel(args)
    _check_model_lib(args.model_lib, args.verbose)


def model_list(value: Any) -> List[Union[str, Tuple[str, str]]]:
    """`additional_models` as MLC takes it (paths, or (path, model_lib) pairs; `None`: none), checked:
    anything else is a BadRequestError naming the field, not a TypeError from deep inside."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (list, tuple)):
        raise BadRequestError("additional_models must be a list of model paths or (path, model_lib) pairs", "additional_models")
    out: List[Union[str, Tuple[str, str]]] = []
    for m in value:
        if isinstance(m, os.PathLike):
            m = os.fspath(m)
        pair = isinstance(m, (tuple, list)) and len(m) == 2 and all(isinstance(x, str) for x in m)
        if not (isinstance(m, str) and m) and not pair:
            raise BadRequestError(f"additional_models holds {m!r}, not a model path or a (path, model_lib) pair", "additional_models")
        out.append(tuple(m) if pair else m)  # type: ignore[arg-type]
    return out


def _model_path(model: Union[str, Tuple[str, str]]) -> str:
    """An additional model as MLC takes it ("path", "path:model_lib" or (path, model_lib)): its path."""
    return model[0] if isinstance(model, (tuple, list)) else str(model)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        raise BadRequestError(f"{name} must be a positive integer, got {value!r}", name)


def _check_tensor_parallel(args: EngineArgs) -> None:
    """More than one shard runs on the CPU as in-process ranks (the sharded model's math, no speed-up);
    GPUs would need NCCL ranks, one per GPU, which the engine does not run yet. Whether the model splits
    into that many shards (heads, KV heads, MLP widths) is checked by the core when it loads."""
    shards = args.tensor_parallel_shards
    _check_positive_int("tensor_parallel_shards", shards)
    if shards is not None and shards > 1 and args.device.split(":")[0] != "cpu":
        raise UnsupportedError(
            f"tensor_parallel_shards={shards} runs on device='cpu' only (in-process ranks); multi-GPU tensor "
            "parallelism (NCCL ranks, one per GPU) is not run by this engine yet",
            "tensor_parallel_shards",
        )


def _check_model_lib(model_lib: Optional[str], verbose: bool) -> None:
    """MLC needs a compiled model library; here kernels ship inside the package, so the argument is
    only checked (a wrong path is still a caller mistake worth reporting)."""
    if model_lib is None:
        return
    if not isinstance(model_lib, (str, os.PathLike)) or not os.path.exists(model_lib):
        raise BadRequestError(f"model_lib {model_lib!r} does not exist", "model_lib")
    if verbose:
        logger.info("model_lib %s is not needed: the kernels are built into mlc_llm; ignoring it", model_lib)
