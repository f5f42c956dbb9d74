//! Turns a scheduler step (plain data) into tensors, runs the model, and returns the logits rows
//! of the sequences that sample this step.

use crate::attention::{AttentionMetadata, PagedKvCache, SeqAttention};
use crate::error::Result;
use crate::model::LlamaModel;
use crate::scheduler::{SchedulerOutput, SeqId};
use candle_core::Tensor;

pub struct ModelRunner {
    pub model: LlamaModel,
    pub kv: PagedKvCache,
}

/// The logits of one sampled sequence. `[vocab]`
/// What a step hands to sampling: full rows, or tokens already chosen on the device.
pub enum StepLogits {
    Rows(Vec<SeqLogits>),
    Argmax(Vec<(SeqId, u32)>),
}

pub struct SeqLogits {
    pub seq_id: SeqId,
    pub logits: Vec<f32>,
}

impl ModelRunner {
    pub fn new(model: LlamaModel, kv: PagedKvCache) -> Self {
        ModelRunner { model, kv }
    }

    /// Builds the flattened inputs and attention metadata for a step.
    pub fn prepare(&self, out: &SchedulerOutput) -> (Vec<u32>, Vec<u32>, Vec<u32>, AttentionMetadata) {
        let bs = self.kv.block_size;
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
                sample_rows.push((tokens.len() - 1) as u32);
            }
        }
        (tokens, positions, sample_rows, meta)
    }

    /// Runs one step; returns logits for every scheduled sequence with `sample == true`, in order.
    /// `argmax_only`: every sampling sequence is plain greedy, so the device picks the tokens.
    pub fn execute(&self, out: &SchedulerOutput, argmax_only: bool) -> Result<StepLogits> {
        let (tokens, positions, sample_rows, meta) = self.prepare(out);
        if tokens.is_empty() {
            return Ok(StepLogits::Rows(Vec::new()));
        }
        let dev = self.model.device();
        let n = tokens.len();
        let s = sample_rows.len();
        let tokens = Tensor::from_vec(tokens, n, dev)?; // [num_tokens]
        let positions = Tensor::from_vec(positions, n, dev)?; // [num_tokens]
        let step = self.kv.prepare(meta)?; // validated, and on CUDA uploaded once for all layers
        if s == 0 {
            // Prefill chunks that do not reach the end of their prompt still fill the cache.
            let rows = Tensor::from_vec(vec![(n - 1) as u32], 1, dev)?;
            self.model.forward(&tokens, &positions, &rows, &self.kv, &step)?;
            return Ok(StepLogits::Rows(Vec::new()));
        }
        let rows = Tensor::from_vec(sample_rows, s, dev)?; // [num_samples]
        let logits = self.model.forward(&tokens, &positions, &rows, &self.kv, &step)?; // [num_samples, vocab]
        let ids = out.seqs.iter().filter(|s| s.sample).map(|s| s.seq_id);
        if argmax_only {
            // Only token ids leave the device: [num_samples] instead of [num_samples, vocab].
            let tokens = logits.argmax(candle_core::D::Minus1)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<u32>()?;
            return Ok(StepLogits::Argmax(ids.zip(tokens).collect()));
        }
        let logits = logits.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        Ok(StepLogits::Rows(ids.zip(logits).map(|(seq_id, logits)| SeqLogits { seq_id, logits }).collect()))
    }
}
