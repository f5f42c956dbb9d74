//! CUDA graphs for decode steps: the decoder stack of a decode step is captured once per shape (batch
//! bucket, split cap, block-table width: [`FixedDecodeKey`]) and replayed, so a step costs one graph
//! launch instead of hundreds of kernel launches from the host.
//!
//! A captured graph holds device addresses, so everything it reads or writes lives at fixed addresses:
//! the step buffer (input ids, positions and the whole attention plan, uploaded in one copy before each
//! launch), the KV cache, the weights and the output buffer of final hidden states. Intermediate
//! tensors are allocated and freed inside the capture (stream-ordered allocations become graph memory
//! nodes). The lm_head and sampling run after the graph, on the `[batch, hidden]` rows it wrote.
//!
//! Any failure to capture (an op that copies from the host, an unsupported library call) switches
//! graphs off for the engine's life with a warning; steps then run eagerly, with identical results.

use crate::attention::plan::FixedDecodeKey;
use crate::attention::{AttentionMetadata, PagedKvCache, StepAttention};
use crate::error::Result;
use crate::model::CausalLm;
use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
use candle_core::cuda_backend::WrapErr;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// Batch sizes graphs are captured for; a step runs the smallest that holds its batch.
const BUCKETS: [usize; 15] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256];

/// `MLC_CUDA_GRAPH=0` turns graphs off whatever the engine configuration says.
pub fn disabled_by_env() -> bool {
    crate::switches::off("MLC_CUDA_GRAPH")
}

/// An instantiated graph. Graph objects must not be used from two threads at once; the runner that
/// owns them lives on the engine thread and only moves there once, before any graph exists.
struct Graph(CudaGraph);

// SAFETY: see `Graph`: created, launched and dropped by the one thread that owns the runner.
unsafe impl Send for Graph {}

pub struct DecodeGraphs {
    buckets: Vec<usize>,
    /// Widest block table a graph is captured for (the longest context, in blocks, as a power of two).
    max_blocks_cap: usize,
    /// `[capacity]` u32: the step buffer of every graph (one layout per key, replays are serial).
    buffer: Tensor,
    /// `[largest bucket, hidden]` in the model dtype: the final hidden states a replay leaves.
    out: Tensor,
    graphs: HashMap<FixedDecodeKey, Graph>,
    disabled: bool,
    pub replays: u64,
}

impl DecodeGraphs {
    /// Buffers for batches up to `max_batch` and contexts up to `max_context` tokens.
    pub fn new(model: &dyn CausalLm, kv: &PagedKvCache, max_batch: usize, max_context: usize) -> Result<Self> {
        let buckets: Vec<usize> = BUCKETS.iter().copied().filter(|&b| b < max_batch).chain([max_batch.min(256)]).collect();
        let largest = *buckets.last().unwrap_or(&1);
        let max_blocks_cap = max_context.div_ceil(kv.block_size.max(1)).next_power_of_two();
        let capacity = FixedDecodeKey { bucket: largest, split_cap: mlc_kernels::ATTN_MAX_SPLITS, max_blocks: max_blocks_cap }.packed_len();
        let dev = model.device();
        Ok(DecodeGraphs {
            buckets,
            max_blocks_cap,
            buffer: Tensor::zeros(capacity, DType::U32, dev)?,
            out: Tensor::zeros((largest, model.config().hidden_size), model.dtype(), dev)?,
            graphs: HashMap::new(),
            disabled: false,
            replays: 0,
        })
    }

    pub fn num_graphs(&self) -> usize {
        self.graphs.len()
    }

    /// Runs the decoder stack of a decode step through a graph, capturing it on first use; returns the
    /// final hidden states `[num_seqs, hidden]` (a view of the output buffer, valid until the next
    /// step), or `None` when the step is not a decode step that fits (the caller runs it eagerly).
    pub fn run(&mut self, model: &dyn CausalLm, kv: &PagedKvCache, meta: &AttentionMetadata, tokens: &[u32], positions: &[u32]) -> Result<Option<Tensor>> {
        let n = meta.seqs.len();
        if self.disabled || n == 0 || meta.seqs.iter().any(|s| s.query_len != 1) {
            return Ok(None);
        }
        let Some(&bucket) = self.buckets.iter().find(|&&b| b >= n) else { return Ok(None) };
        let max_context = meta.seqs.iter().map(|s| s.context_len).max().unwrap_or(1);
        let Some(key) = FixedDecodeKey::for_step(n, max_context, bucket, self.max_blocks_cap, kv.block_size) else {
            return Ok(None);
        };
        let Some(step) = kv.prepare_fixed(meta.clone(), tokens, positions, key, &self.buffer)? else { return Ok(None) };
        if !self.graphs.contains_key(&key) {
            match self.capture(model, kv, &step, key) {
                Ok(g) => {
                    log::info!("captured a CUDA graph for decode batch {} (split cap {}, {} table blocks)", key.bucket, key.split_cap, key.max_blocks);
                    self.graphs.insert(key, g);
                }
                Err(e) => {
                    log::warn!("CUDA graph capture failed, decode steps run without graphs from now on: {e}");
                    self.disabled = true;
                    return Ok(None);
                }
            }
        }
        let graph = self.graphs.get(&key).expect("captured above");
        graph.0.launch().w()?;
        self.replays += 1;
        Ok(Some(self.out.narrow(0, 0, n)?))
    }

    fn capture(&self, model: &dyn CausalLm, kv: &PagedKvCache, step: &StepAttention, key: FixedDecodeKey) -> Result<Graph> {
        let Device::Cuda(dev) = model.device() else {
            return Err(candle_core::Error::Msg("CUDA graphs need a CUDA device".into()).into());
        };
        let (tokens, positions) = step.fixed_inputs()?;
        let out = self.out.narrow(0, 0, key.bucket)?;
        let run = || -> Result<()> {
            let h = model.forward_hidden(&tokens, &positions, kv, step)?; // [bucket, hidden]
            out.slice_set(&h, 0, 0)?;
            Ok(())
        };
        // candle uploads small per-op parameters (shapes, strides) from the host; inside this guard it
        // keeps them on the device keyed by value, so the warm-up run below fills the cache the capture
        // then reads from. The warm-up also loads every kernel module.
        let _params = dev.enable_cuda_graph_htod_cache();
        run()?;
        let stream = dev.cuda_stream();
        stream.synchronize().w()?;
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).w()?;
        let captured = run();
        // Capture must always be ended, also when the forward failed, or the stream stays unusable.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        captured?;
        let Some(graph) = graph.w()? else {
            return Err(candle_core::Error::Msg("the captured decode step is empty".into()).into());
        };
        graph.upload().w()?;
        Ok(Graph(graph))
    }
}
