"""Typed stubs of the native module `mlc_llm._core` (the Rust engine).

This is the whole contract between the Python facade and the engine. Strings marked JSON carry
plain data (so the binding stays small and the schema lives in one place per side). Every method
releases the GIL while it waits. Errors are raised as the classes in `mlc_llm.protocol.errors`.
"""

from typing import Any, Callable, Dict, List, Optional

__version__: str

def cuda_device_count() -> int:
    """Number of CUDA devices this build can see (0 on a CPU-only build)."""

def convert_weight(
    source: str, quantization: str, output: str, progress: Optional[Callable[[int, int, str], None]] = None
) -> str:
    """Converts the HF checkpoint `source` into an MLC tensor cache in `output` (`progress(done, total, name)`
    after each parameter). Returns the report as JSON: output, quantization, num_tensors, param_bytes,
    source_params, bits_per_param, num_shards."""

def conv_template_json(name: str) -> Optional[str]:
    """The built-in MLC conversation template `name` as a JSON object, None if unknown."""

def conv_template_names() -> List[str]: ...

def device_smoke_test(device: str) -> str:
    """Runs a small matmul on `device` and compares it with the CPU; returns a one-line report."""

class EmbeddingEngine:
    """Sentence embeddings of a decoder model or a BERT encoder (rust/core/src/embedding/): hidden states, pooled."""

    def __init__(self, model: str, device: str, max_batch_tokens: int = 2048) -> None: ...
    def info(self) -> str:
        """JSON: {"model", "hidden_size", "model_type": "encoder" | "decoder", "max_batch_tokens" (per step),
        "max_input_tokens", "device", "eos_token_ids": [int], "default_pooling": "last" | "mean" | "cls",
        "frame": [cls_id, sep_id] | None (an encoder's framing tokens), "steps": forward passes so far}."""
    def tokenize(self, text: str, add_special_tokens: bool) -> List[int]: ...
    def embed(self, inputs: List[List[int]], pooling: str, normalize: bool) -> List[List[float]]:
        """One vector per input (token ids, 1 to max_input_tokens each); pooling: "last", "mean" or "cls"."""

class Engine:
    def __init__(self, model: str, device: str, config_json: str) -> None:
        """Loads the model and starts the engine thread.

        model: a GGUF file, an HF directory (config.json + safetensors), or a path to a config file.
        device: "cpu", "cuda", "cuda:N" or "auto".
        config_json: {"mode": "local"|"interactive"|"server", "max_num_sequence": int|null,
          "max_total_sequence_length": int|null, "prefill_chunk_size": int|null,
          "max_history_size": int|null, "gpu_memory_utilization": float|null,
          "kv_cache_page_size": int|null, "prefix_cache": bool, "enable_tracing": bool, "verbose": bool,
          "kv_events": bool, "tensor_parallel_shards": int (default 1; more than 1: CPU only),
          "kv_cache_dtype": "auto"|"float16"|"f16"|"float32"|"f32"|"fp8_e4m3"|"fp8"|null
          (auto: float16 on the CPU, the compute dtype on CUDA)}
        Raises ModelLoadError (missing / corrupt model), BadRequestError (bad configuration).
        """
    def info(self) -> str:
        """JSON: {"model", "model_path", "architecture", "device", "dtype", "kv_cache_dtype", "vocab_size", "context_window_size",
        "max_num_sequence", "max_total_sequence_length", "prefill_chunk_size", "kv_block_size",
        "num_kv_blocks", "bos_token", "eos_token", "eos_token_ids": [int], "has_chat_template": bool,
        "mode", "quantized_matmul": bool, "cuda_graph": bool, "generation_defaults": {field: value},
        "template_stop": [str]}"""
    def apply_chat_template(
        self,
        messages_json: str,
        add_generation_prompt: bool,
        tools_json: Optional[str] = None,
        template_kwargs_json: Optional[str] = None,
    ) -> str:
        """Renders the model's chat prompt: its MLC conversation template (mlc-chat-config.json) if it has one,
        else its Jinja chat template. messages_json: a JSON list of OpenAI-style message dicts;
        template_kwargs_json: a JSON object of extra Jinja variables (a request's chat_template_kwargs)."""
    def tokenize(self, text: str, add_special_tokens: bool) -> List[int]: ...
    def detokenize(self, token_ids: List[int]) -> str: ...
    def add_request(self, request_id: str, prompt_token_ids: List[int], params_json: str) -> None:
        """Queues one sequence. params_json: the SamplingParams fields (temperature, top_p, top_k, min_p,
        frequency_penalty, presence_penalty, repetition_penalty, logit_bias {id: bias}, seed, max_tokens,
        stop, stop_token_ids, ignore_eos, logprobs, top_logprobs, grammar); fields left out (or null) take the
        model's generation defaults (info()["generation_defaults"]). grammar constrains the output:
        {"type": "json_object"}, {"type": "json_schema", "schema": {...}} or
        {"type": "tagged_json", "begin": str, "schema": {...}, "end": str}. Raises BadRequestError naming
        the field (including a duplicate request id, a prompt longer than the context window and an
        invalid schema)."""
    def abort(self, request_id: str) -> None:
        """Stops a request; its stream ends with finish_reason "abort". Unknown ids are ignored."""
    def poll(self, timeout_ms: int) -> List[Dict[str, Any]]:
        """Waits up to timeout_ms for outputs; returns the deltas produced since the last call, in order:
        {"request_id": str, "token_ids": [int], "text": str,
         "logprobs": [{"token": str, "logprob": float, "bytes": [int],
                       "top_logprobs": [{"token": str, "logprob": float, "bytes": [int]}]}] | None,
         "finish_reason": None | "stop" | "length" | "abort" | "error",
         "error": str | None,
         "usage": None | {"prompt_tokens", "completion_tokens", "prefill_tokens", "ttft_s",
                          "end_to_end_latency_s", "decode_tokens_per_s"}   # set on the final delta
        }
        Raises EngineDeadError once the engine has stopped and every output has been returned."""
    def metrics(self) -> str:
        """JSON: {"num_requests_finished", "num_requests_aborted", "num_running", "num_waiting",
        "prefill_tokens", "decode_tokens", "prefill_tokens_per_s", "decode_tokens_per_s",
        "mean_ttft_s", "max_batch_size_seen", "num_free_blocks" (= "num_empty_blocks" +
        "num_cached_blocks": free blocks still holding a cached prefix), "num_used_blocks",
        "num_total_blocks", "num_preemptions", "prefix_cache_hit_tokens", "engine_steps",
        "decode_steps" / "decode_step_time_s" / "decode_step_seqs" (steps that only decoded: count, wall
        seconds, summed batch), "prefill_steps" / "prefill_step_time_s" / "prefill_step_tokens" /
        "prefill_step_decodes" (steps with prefill tokens), ...}
        As of the last step boundary: never waits for a running step. Raises EngineDeadError once the
        engine thread has stopped."""
    def kv_events(self) -> str:
        """JSON list of the prefix-cache events since the last call (config "kv_events": true; else
        always "[]"): {"type": "BlockStored", "block_hashes": [u64], "parent_block_hash": u64 | null,
        "token_ids": [u32], "block_size"}, {"type": "BlockRemoved", "block_hashes"}, {"type":
        "AllBlocksCleared"}. Never waits for a step."""
    def cached_block_hashes(self) -> List[int]:
        """The hashes (u64, as kv_events name them) of the blocks the prefix cache can find now, in use
        or free, unordered: the set a router rebuilds from kv_events. Waits for the running step."""
    def trace(self) -> str:
        """Chrome trace JSON of the recorded per-request events ("[]" if tracing is off)."""
    def terminate(self) -> None:
        """Stops the engine thread; idempotent. Pending requests finish with "abort"."""
