//! Engine sizing the way MLC's modes do it (local / interactive / server), from device or system memory.
//! Every explicit argument wins; the chosen sizes are reported so they can be logged.

use crate::error::{EngineError, Result};
use crate::model::ModelConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Local,
    Interactive,
    Server,
}

/// What the caller asked for; `None` means "derive it from the mode".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineArgs {
    pub mode: Mode,
    pub max_num_sequence: Option<usize>,
    pub max_total_sequence_length: Option<usize>,
    pub prefill_chunk_size: Option<usize>,
    pub max_history_size: Option<usize>,
    pub gpu_memory_utilization: Option<f64>,
    pub kv_cache_page_size: Option<usize>,
    pub prefix_cache: bool,
    pub enable_tracing: bool,
    pub verbose: bool,
    /// Keep GGUF weights quantized and multiply them with quantized kernels. `None` takes
    /// `MLC_QUANTIZED_MATMUL` (1 / 0) if set, else the device's default: quantized on the CPU (our
    /// kernels, within the fidelity bound: README "CPU"), dequantized on GPUs.
    pub quantized_matmul: Option<bool>,
    /// Compute dtype: "float32", "bfloat16" or "float16"; None = f32 on the CPU, bf16 on GPUs.
    pub dtype: Option<String>,
    /// Replay decode steps through captured CUDA graphs on CUDA devices (`MLC_CUDA_GRAPH=0` also
    /// turns them off).
    pub cuda_graph: bool,
    /// Speculative decoding: "disable", "small_draft", "eagle" or "ngram".
    pub speculative_mode: String,
    /// Draft tokens per step; 0 adapts the length to the acceptance rate.
    pub spec_draft_length: usize,
    /// Draft models ("path" or "path:model_lib"); the first is `small_draft`'s draft.
    pub additional_models: Vec<String>,
    /// Record prefix-cache events (blocks stored / removed) for a router to read
    /// ([`crate::engine::EngineHandle::kv_events`]); off, nothing is recorded.
    pub kv_events: bool,
    /// MLC's `tensor_parallel_shards`: ranks the model is split over. More than 1 runs on the CPU as
    /// in-process ranks (model/sharded_lm.rs: the same results, no speed-up); CUDA devices refuse it
    /// (no NCCL ranks yet).
    pub tensor_parallel_shards: usize,
    /// The KV cache's element type: None / "auto" = f16 on the CPU (f32 compute; half the memory and half
    /// the bytes attention reads, within the fidelity bound: README "CPU"), the compute dtype elsewhere;
    /// "float16" / "float32" (or "f16" / "f32") ask for one on the CPU, and on CUDA only where it is the
    /// compute dtype; "fp8_e4m3" (or "fp8", vLLM's name) stores K and V as e4m3 with one f32 scale per
    /// row: a quarter of an f32 cache (plus the scales), half of a bf16 / f16 one on CUDA (prefill
    /// then runs on the per-token attention kernel).
    pub kv_cache_dtype: Option<String>,
}

impl Default for EngineArgs {
    fn default() -> Self {
        EngineArgs {
            mode: Mode::Local,
            max_num_sequence: None,
            max_total_sequence_length: None,
            prefill_chunk_size: None,
            max_history_size: None,
            gpu_memory_utilization: None,
            kv_cache_page_size: None,
            prefix_cache: true,
            enable_tracing: false,
            verbose: true,
            quantized_matmul: None,
            dtype: None,
            cuda_graph: true,
            speculative_mode: "disable".to_string(),
            spec_draft_length: 0,
            additional_models: Vec::new(),
            kv_events: false,
            tensor_parallel_shards: 1,
            kv_cache_dtype: None,
        }
    }
}

/// The sizes the engine runs with.
#[derive(Debug, Clone, Serialize)]
pub struct EngineSizes {
    pub mode: Mode,
    pub max_num_sequence: usize,
    pub max_total_sequence_length: usize,
    pub max_single_sequence_length: usize,
    pub prefill_chunk_size: usize,
    pub kv_block_size: usize,
    pub num_kv_blocks: usize,
    /// Tokens the memory budget could hold, before the mode's caps.
    pub memory_max_total_sequence_length: usize,
}

/// MLC's compile-time defaults, which the modes start from (there is no compile step here).
const DEFAULT_MAX_BATCH_SIZE: usize = 128;
const DEFAULT_PREFILL_CHUNK: usize = 2048;
const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.85;

fn positive(name: &str, v: Option<usize>) -> Result<Option<usize>> {
    match v {
        Some(0) => Err(EngineError::bad_request(name, "must be a positive integer")),
        other => Ok(other),
    }
}

/// `memory`: what the engine may use (device memory on GPUs; on the CPU, system memory available
/// before the weights loaded, less a margin); `weight_bytes`: parameters already resident;
/// `runtime_bytes`: what the device runtime holds besides (on CUDA the context, cuBLAS workspaces,
/// kernel modules and CUDA-graph memory: measured at about 0.6 GiB on an H100); `kv_elem_bytes`:
/// bytes per cached K or V element.
///
/// Every size is checked against the budget here, before anything is allocated: an allocation that
/// fails does not raise, it aborts the process.
pub fn infer_sizes(
    args: &EngineArgs,
    model: &ModelConfig,
    memory: u64,
    weight_bytes: u64,
    runtime_bytes: u64,
    kv_elem_bytes: usize,
) -> Result<EngineSizes> {
    let max_num_seq_arg = positive("max_num_sequence", args.max_num_sequence)?;
    let max_total_arg = positive("max_total_sequence_length", args.max_total_sequence_length)?;
    let chunk_arg = positive("prefill_chunk_size", args.prefill_chunk_size)?;
    let block = positive("kv_cache_page_size", args.kv_cache_page_size)?.unwrap_or(16);
    let util = args.gpu_memory_utilization.unwrap_or(DEFAULT_GPU_MEMORY_UTILIZATION);
    if !(util > 0.0 && util <= 1.0) {
        return Err(EngineError::bad_request("gpu_memory_utilization", "must be in (0, 1]"));
    }
    let max_single = model.max_position_embeddings;
    let max_num_seq = max_num_seq_arg.unwrap_or(match args.mode {
        Mode::Local => 4.min(DEFAULT_MAX_BATCH_SIZE),
        Mode::Interactive => 1,
        Mode::Server => DEFAULT_MAX_BATCH_SIZE,
    });
    let chunk_default = chunk_arg.unwrap_or(DEFAULT_PREFILL_CHUNK);
    // Workspaces that scale with the batch: activations of a prefill chunk and the logits buffer.
    // Arithmetic in u128: absurd arguments must come out as "does not fit", not wrap around.
    let hidden = model.hidden_size as u128;
    let workspace = chunk_default as u128 * (hidden * 4 + model.intermediate_size as u128 * 3) * 4
        + max_num_seq as u128 * model.vocab_size as u128 * 16
        + (48 << 20)
        + runtime_bytes as u128;
    // An FP8 cache (1 byte per element) also keeps one f32 scale per row (token, layer, KV head, K or V).
    let scales = if kv_elem_bytes == 1 { model.kv_bytes_per_token(4) / model.head_dim.max(1) } else { 0 };
    let kv_per_token = (model.kv_bytes_per_token(kv_elem_bytes) + scales).max(1) as u128;
    let budget = (memory as f64 * util) as i128 - weight_bytes as i128 - workspace as i128;
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    if budget <= (kv_per_token * block as u128) as i128 && max_total_arg.is_none() {
        return Err(EngineError::OutOfMemory(format!(
            "{:.1} GiB x gpu_memory_utilization {util} leaves no room for the KV cache after {:.2} GiB of weights and \
             {:.2} GiB of workspaces; raise gpu_memory_utilization, lower max_num_sequence or prefill_chunk_size, \
             use a smaller or more quantized model, or set max_total_sequence_length",
            gib(memory as u128),
            gib(weight_bytes as u128),
            gib(workspace)
        )));
    }
    // Whole blocks only: the cache is allocated in blocks, so a partial one would overshoot the budget.
    let memory_blocks = budget.max(0) as u128 / (kv_per_token * block as u128);
    let memory_max = usize::try_from(memory_blocks * block as u128).unwrap_or(usize::MAX);
    let max_total = max_total_arg.unwrap_or(match args.mode {
        Mode::Local => memory_max.min(max_single).min(8192),
        Mode::Interactive => memory_max.min(max_single),
        Mode::Server => memory_max.min(max_num_seq.saturating_mul(max_single)),
    });
    let prefill_chunk = chunk_arg.unwrap_or(match args.mode {
        Mode::Local | Mode::Interactive => DEFAULT_PREFILL_CHUNK.min(max_total).min(max_single),
        Mode::Server => DEFAULT_PREFILL_CHUNK,
    });
    let num_kv_blocks = max_total.div_ceil(block).max(1);
    let kv_bytes = num_kv_blocks as u128 * block as u128 * kv_per_token;
    if kv_bytes as i128 > budget {
        let (arg, value) = match (max_total_arg, args.kv_cache_page_size) {
            (Some(v), _) => ("max_total_sequence_length", v),
            (None, Some(v)) => ("kv_cache_page_size", v),
            (None, None) => ("max_total_sequence_length", max_total),
        };
        return Err(EngineError::OutOfMemory(format!(
            "{arg} = {value} needs {:.2} GiB of KV cache; {:.1} GiB x gpu_memory_utilization {util} leaves {:.2} GiB after \
             {:.2} GiB of weights and {:.2} GiB of workspaces (at most {memory_max} tokens)",
            gib(kv_bytes),
            gib(memory as u128),
            gib(budget.max(0) as u128),
            gib(weight_bytes as u128),
            gib(workspace)
        )));
    }
    if u32::try_from(num_kv_blocks).is_err() {
        return Err(EngineError::bad_request("kv_cache_page_size", format!("{num_kv_blocks} KV blocks are more than the block table can address")));
    }
    Ok(EngineSizes {
        mode: args.mode,
        max_num_sequence: max_num_seq,
        max_total_sequence_length: max_total,
        max_single_sequence_length: max_single,
        prefill_chunk_size: prefill_chunk,
        kv_block_size: block,
        num_kv_blocks,
        memory_max_total_sequence_length: memory_max,
    })
}

/// Total system memory in bytes (Linux `/proc/meminfo`; a conservative 8 GiB elsewhere).
pub fn system_memory_bytes() -> u64 {
    meminfo_bytes("MemTotal:").unwrap_or(8 << 30)
}

/// Memory the system can give without swapping (`MemAvailable`: free memory plus reclaimable caches);
/// falls back to the total. The CPU engine sizes its KV cache from this, not from the total: the pages
/// of the cache are committed as it fills, so sizing from the total ends in an OOM kill under load.
pub fn available_memory_bytes() -> u64 {
    meminfo_bytes("MemAvailable:").unwrap_or_else(system_memory_bytes)
}

fn meminfo_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::registry::config_from_hf;

    fn model() -> ModelConfig {
        let cfg = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 1000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}"#;
        config_from_hf(cfg, "config.json").unwrap()
    }

    fn sizes(args: EngineArgs) -> Result<EngineSizes> {
        infer_sizes(&args, &model(), 1 << 30, 1 << 20, 0, 4)
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        for args in [
            EngineArgs { max_total_sequence_length: Some(1 << 40), ..Default::default() },
            EngineArgs { max_total_sequence_length: Some(usize::MAX), ..Default::default() },
            EngineArgs { kv_cache_page_size: Some(1 << 40), ..Default::default() },
            EngineArgs { kv_cache_page_size: Some(usize::MAX), ..Default::default() },
            EngineArgs { max_num_sequence: Some(usize::MAX), ..Default::default() },
            EngineArgs { prefill_chunk_size: Some(usize::MAX), ..Default::default() },
            EngineArgs { mode: Mode::Server, max_num_sequence: Some(1 << 40), ..Default::default() },
        ] {
            let e = sizes(args.clone()).expect_err(&format!("{args:?}"));
            assert!(matches!(e, EngineError::OutOfMemory(_)), "{args:?}: {e}");
        }
    }

    #[test]
    fn what_fits_is_kept_and_server_mode_stays_within_the_budget() {
        let s = sizes(EngineArgs { max_total_sequence_length: Some(8192), ..Default::default() }).unwrap();
        assert_eq!((s.max_total_sequence_length, s.num_kv_blocks), (8192, 512));
        let s = sizes(EngineArgs { mode: Mode::Server, ..Default::default() }).unwrap();
        let kv = s.num_kv_blocks as u64 * s.kv_block_size as u64 * model().kv_bytes_per_token(4) as u64;
        assert!(kv < (1u64 << 30) * 85 / 100, "{s:?}");
    }
}
