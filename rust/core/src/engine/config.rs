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
    /// Keep GGUF weights quantized on the CPU (faster, slightly less exact); see the README.
    pub quantized_matmul: bool,
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
            quantized_matmul: false,
            dtype: None,
            cuda_graph: true,
            speculative_mode: "disable".to_string(),
            spec_draft_length: 0,
            additional_models: Vec::new(),
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

/// `total_memory`: device memory (or system memory on the CPU); `weight_bytes`: parameters already
/// resident; `runtime_bytes`: what the device runtime holds besides (on CUDA the context, cuBLAS
/// workspaces, kernel modules and CUDA-graph memory: measured at about 0.6 GiB on an H100);
/// `kv_elem_bytes`: bytes per cached K or V element.
pub fn infer_sizes(
    args: &EngineArgs,
    model: &ModelConfig,
    total_memory: u64,
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
    let hidden = model.hidden_size as u64;
    let workspace = (chunk_default as u64) * (hidden * 4 + model.intermediate_size as u64 * 3) * 4
        + max_num_seq as u64 * model.vocab_size as u64 * 16
        + (48 << 20)
        + runtime_bytes;
    let kv_per_token = model.kv_bytes_per_token(kv_elem_bytes) as u64;
    let budget = (total_memory as f64 * util) as i64 - weight_bytes as i64 - workspace as i64;
    if budget <= kv_per_token as i64 * block as i64 && max_total_arg.is_none() {
        return Err(EngineError::OutOfMemory(format!(
            "{:.1} GiB x gpu_memory_utilization {util} leaves no room for the KV cache after {:.2} GiB of weights; \
             raise gpu_memory_utilization, use a smaller or more quantized model, or set max_total_sequence_length",
            total_memory as f64 / (1u64 << 30) as f64,
            weight_bytes as f64 / (1u64 << 30) as f64
        )));
    }
    let memory_max = (budget.max(0) as u64 / kv_per_token.max(1)) as usize;
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
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}
