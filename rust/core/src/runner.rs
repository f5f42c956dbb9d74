//! Turns a scheduler step (plain data) into tensors, runs the model, and returns the logits rows
//! of the sequences that sample this step.

use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
use crate::error::Result;
use crate::model::CausalLm;
use crate::scheduler::{SchedulerOutput, SeqId};
use candle_core::Tensor;

pub struct ModelRunner {
    pub model: Box<dyn CausalLm>,
    pub kv: PagedKvCache,
    /// Keep each step's final hidden states (`[num_tokens, hidden]`) in `last_hidden`: an EAGLE head
    /// drafts from them, so the target never runs a second pass for it.
    pub keep_hidden: bool,
    pub last_hidden: Option<Tensor>,
    /// Decode steps through captured CUDA graphs (see `cuda_graph.rs`); `None`: every step eagerly.
    #[cfg(feature = "cuda")]
    pub graphs: Option<crate::cuda_graph::DecodeGraphs>,
}

/// What a step hands to sampling: full rows, or tokens already chosen on the device. A sequence
/// verifying drafts has one entry per row (`num_draft + 1`, in position order), the others one.
pub enum StepLogits {
    Rows(Vec<SeqLogits>),
    Argmax(Vec<(SeqId, u32)>),
    /// The logits stay on the device for the device sampler: `[num_samples, vocab]` f32, rows in the
    /// order of `seq_ids`.
    Device { seq_ids: Vec<SeqId>, logits: Tensor },
}

/// What the engine wants back from a step's logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOn {
    /// Every sampling sequence is plain greedy: the device picks the tokens by argmax.
    Argmax,
    /// The device sampler runs on the logits where they are (a CUDA device); elsewhere rows come back.
    Device,
    /// Full rows to the host (the CPU sampler, logits capture, grammar masks).
    Host,
}

/// The logits of one sampled row of a sequence. `[vocab]`
pub struct SeqLogits {
    pub seq_id: SeqId,
    pub logits: Vec<f32>,
}

impl ModelRunner {
    pub fn new(model: Box<dyn CausalLm>, kv: PagedKvCache) -> Self {
        ModelRunner {
            model,
            kv,
            keep_hidden: false,
            last_hidden: None,
            #[cfg(feature = "cuda")]
            graphs: None,
        }
    }

    /// Replays decode steps of up to `max_batch` sequences and `max_context` tokens through CUDA graphs
    /// when the model runs on a CUDA device (a no-op elsewhere). Returns whether graphs are on.
    pub fn enable_cuda_graphs(&mut self, max_batch: usize, max_context: usize) -> Result<bool> {
        #[cfg(feature = "cuda")]
        // A mixture-of-experts layer on the host-routed path reads its top-k back every layer, which a CUDA
        // graph cannot capture: such models decode eagerly. Fused layers (moe_cuda.rs) route on the device.
        if self.model.device().is_cuda()
            && !crate::cuda_graph::disabled_by_env()
            && (self.model.config().moe.is_none() || crate::model::layers::moe_cuda::all_fused())
        {
            self.graphs = Some(crate::cuda_graph::DecodeGraphs::new(self.model.as_ref(), &self.kv, max_batch, max_context)?);
            return Ok(true);
        }
        let _ = (max_batch, max_context);
        Ok(false)
    }

    /// Decode steps replayed through CUDA graphs so far, and graphs captured.
    pub fn graph_stats(&self) -> (u64, usize) {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.graphs {
            return (g.replays, g.num_graphs());
        }
        (0, 0)
    }

    /// Builds the flattened inputs and attention metadata for a step.
    pub fn prepare(&self, out: &SchedulerOutput) -> (Vec<u32>, Vec<u32>, Vec<u32>, AttentionMetadata) {
        let (tokens, mut positions, rows, meta) = prepare_step(out, self.kv.block_size);
        // Phi-3's longrope: a sequence in the long regime reads the long half of the rope tables.
        if self.model.config().long_context_from().is_some() {
            let offset = self.model.config().max_position_embeddings as u32;
            let mut at = 0;
            for s in &out.seqs {
                let n = s.token_ids.len();
                if s.long_rope {
                    positions[at..at + n].iter_mut().for_each(|p| *p += offset);
                }
                at += n;
            }
        }
        (tokens, positions, rows, meta)
    }

    /// Runs one step; returns logits for every scheduled sequence with `sample == true`, in order, in
    /// the form `on` asks for.
    pub fn execute(&mut self, out: &SchedulerOutput, on: SampleOn) -> Result<StepLogits> {
        let (tokens, positions, sample_rows, meta) = self.prepare(out);
        if tokens.is_empty() {
            return Ok(StepLogits::Rows(Vec::new()));
        }
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &mut self.graphs {
            // A decode step where every sequence samples: the graph's rows are the sample rows.
            if sample_rows.len() == tokens.len() && out.seqs.iter().all(|s| s.sample && s.token_ids.len() == 1) {
                if let Some(h) = graphs.run(self.model.as_ref(), &self.kv, &meta, &tokens, &positions)? {
                    if self.keep_hidden {
                        // The graph's output buffer is rewritten by the next replay: keep a copy.
                        self.last_hidden = Some(h.copy()?);
                    }
                    let logits = self.model.logits(&h)?; // [num_seqs, vocab]
                    return Self::finish(out, logits, on);
                }
            }
        }
        let dev = self.model.device();
        let n = tokens.len();
        let s = sample_rows.len();
        let tokens = Tensor::from_vec(tokens, n, dev)?; // [num_tokens]
        let positions = Tensor::from_vec(positions, n, dev)?; // [num_tokens]
        let step = self.kv.prepare(meta)?; // validated, and on CUDA uploaded once for all layers
        let h = self.model.forward_hidden(&tokens, &positions, &self.kv, &step)?; // [num_tokens, hidden]
        if self.keep_hidden {
            self.last_hidden = Some(h.clone());
        }
        if s == 0 {
            // Prefill chunks that do not reach the end of their prompt still fill the cache.
            return Ok(StepLogits::Rows(Vec::new()));
        }
        let rows = Tensor::from_vec(sample_rows, s, dev)?; // [num_samples]
        let logits = self.model.logits(&h.index_select(&rows, 0)?)?; // [num_samples, vocab]
        Self::finish(out, logits, on)
    }

    /// Turns the step's logits `[num_samples, vocab]` into what sampling needs.
    fn finish(out: &SchedulerOutput, logits: Tensor, on: SampleOn) -> Result<StepLogits> {
        // One id per row: a sequence verifying drafts has `num_draft + 1` rows, in position order.
        let ids = out.seqs.iter().filter(|s| s.sample).flat_map(|s| std::iter::repeat_n(s.seq_id, s.num_draft + 1));
        if on == SampleOn::Device && logits.device().is_cuda() {
            return Ok(StepLogits::Device { seq_ids: ids.collect(), logits });
        }
        if on == SampleOn::Argmax {
            // Only token ids leave the device: [num_samples] instead of [num_samples, vocab].
            let tokens = argmax_rows(&logits)?;
            return Ok(StepLogits::Argmax(ids.zip(tokens).collect()));
        }
        let logits = logits.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        Ok(StepLogits::Rows(ids.zip(logits).map(|(seq_id, logits)| SeqLogits { seq_id, logits }).collect()))
    }
}

/// Greedy tokens of `[num_samples, vocab]` f32 logits: our one-block-per-row kernel on CUDA (candle's
/// generic argmax reduces a row with a single small block), candle's argmax elsewhere.
pub(crate) fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() && logits.dtype() == candle_core::DType::F32 {
        return crate::sampler::gpu::argmax_on_device(logits);
    }
    Ok(logits.argmax(candle_core::D::Minus1)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<u32>()?)
}

/// The flattened token ids, positions, sample rows and attention metadata of a step over a cache of
/// `bs`-token blocks.
pub fn prepare_step(out: &SchedulerOutput, bs: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>, AttentionMetadata) {
    let mut tokens = Vec::with_capacity(out.num_batched_tokens);
    let mut positions = Vec::with_capacity(out.num_batched_tokens);
    let mut sample_rows = Vec::new();
    let mut meta = AttentionMetadata { slot_mapping: Vec::with_capacity(out.num_batched_tokens), seqs: Vec::new(), block_size: bs };
    for s in &out.seqs {
        let query_start = tokens.len();
        for (i, &t) in s.token_ids.iter().enumerate() {
            let pos = s.start_pos + i;
            tokens.push(t);
            positions.push(pos as u32);
            meta.slot_mapping.push(s.block_table[pos / bs] * bs as u32 + (pos % bs) as u32);
        }
        meta.seqs.push(SeqAttention {
            query_start,
            query_len: s.token_ids.len(),
            context_len: s.start_pos + s.token_ids.len(),
            block_table: s.block_table.clone(),
        });
        if s.sample {
            // The pending token's row, then one per draft token (speculative verification).
            let end = tokens.len();
            sample_rows.extend((end - 1 - s.num_draft..end).map(|r| r as u32));
        }
    }
    (tokens, positions, sample_rows, meta)
}
