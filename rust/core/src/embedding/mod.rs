//! Sentence embeddings: MLC's embedding engine and OpenAI's `/v1/embeddings`, from a decoder model
//! (Qwen3-Embedding and other causal LMs trained for it) or a BERT-family encoder (bert.rs).
//!
//! A decoder input is one full prefill through the model's decoder stack and final norm; its embedding
//! is a pooling of those hidden states (the last token's for causal models, whose last position has seen
//! the whole input; the first, [CLS], for encoders), optionally L2-normalized. Decoder inputs are batched
//! into steps of at most `max_batch_tokens` tokens over a KV cache of that size, which every step reuses
//! from block 0: nothing is kept between inputs, so results do not depend on what else is in the batch.
//! An encoder runs one input at a time (its attention sees the whole input, so nothing is cached).
//!
//! The embedder owns its own model and cache, apart from the generating engine (as MLC's
//! `AsyncEmbeddingEngine` is), and runs on its caller's thread.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::attention::PagedKvCache;
use crate::error::{EngineError, Result};
use crate::loader::{self, QuantMode};
use crate::model::registry;
use crate::runner::{ModelRunner, SampleOn};
use crate::scheduler::{ScheduledSeq, SchedulerOutput};
use crate::tokenizer::Tokenizer;

pub mod bert;

const BLOCK_SIZE: usize = 16;

enum Backbone {
    Decoder(ModelRunner),
    Encoder(bert::Bert),
}

/// Which hidden states make an input's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last token's (Qwen3-Embedding; any causal model).
    Last,
    /// The mean over the input's tokens.
    Mean,
    /// The first token's (BERT's [CLS] convention).
    First,
}

impl Pooling {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "last" => Ok(Pooling::Last),
            "mean" => Ok(Pooling::Mean),
            "cls" | "first" => Ok(Pooling::First),
            other => Err(EngineError::bad_request("pooling", format!("{other:?} is not one of last, mean, cls"))),
        }
    }
}

/// A loaded embedding model: see the module documentation.
pub struct Embedder {
    backbone: Backbone,
    vocab_size: usize,
    tokenizer: Arc<Tokenizer>,
    max_batch_tokens: usize,
    hidden_size: usize,
    name: String,
    device: Device,
}

impl Embedder {
    /// Loads `model` (the loader's paths, or HF://) on `device` ("auto", "cpu", "cuda[:N]"). Weights are
    /// dequantized: an embedding is compared by cosine, and 8-bit activations would move it.
    pub fn load(model: &str, device: &str, max_batch_tokens: usize) -> Result<Self> {
        if max_batch_tokens == 0 {
            return Err(EngineError::bad_request("max_batch_tokens", "must be at least 1"));
        }
        let device = crate::device::parse_device(device)?;
        let local = crate::hub::resolve(model)?;
        let path = local.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| model.to_string());
        let dir = std::path::Path::new(&path);
        if dir.is_dir() && bert::is_bert(dir) {
            let encoder = bert::Bert::load(dir, &device)?;
            let cfg = encoder.config().clone();
            let tokenizer = Tokenizer::from_hf_dir(dir)?;
            let name = crate::hub::repo_id(model).unwrap_or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(path.clone()));
            return Ok(Embedder {
                backbone: Backbone::Encoder(encoder),
                vocab_size: cfg.vocab_size,
                tokenizer: Arc::new(tokenizer),
                max_batch_tokens: max_batch_tokens.min(cfg.max_position_embeddings),
                hidden_size: cfg.hidden_size,
                name,
                device,
            });
        }
        let dtype = if device.is_cuda() { loader::native_dtype(&path).unwrap_or(DType::BF16) } else { DType::F32 };
        let loaded = loader::load(&path, &device, dtype, QuantMode::Dequantize)?;
        let cfg = loaded.config.with_max_positions(max_batch_tokens);
        let model_impl = registry::build(&cfg, &loaded.weights, &device, dtype)?;
        let num_blocks = max_batch_tokens.div_ceil(BLOCK_SIZE);
        let kv = PagedKvCache::new(cfg.num_hidden_layers, num_blocks, BLOCK_SIZE, cfg.num_key_value_heads, cfg.head_dim, dtype, &device)?;
        let mut runner = ModelRunner::new(model_impl, kv);
        runner.keep_hidden = true;
        let name = crate::hub::repo_id(model).unwrap_or(loaded.name);
        Ok(Embedder {
            backbone: Backbone::Decoder(runner),
            vocab_size: cfg.vocab_size,
            tokenizer: Arc::new(loaded.tokenizer),
            max_batch_tokens,
            hidden_size: cfg.hidden_size,
            name,
            device,
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The most tokens one input may have (and one step may run).
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the model is a bidirectional encoder (BERT) rather than a causal decoder.
    pub fn is_encoder(&self) -> bool {
        matches!(self.backbone, Backbone::Encoder(_))
    }

    /// One embedding per input, in order. Every input needs at least one token and at most
    /// `max_batch_tokens`.
    pub fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        for (i, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > self.max_batch_tokens {
                return Err(EngineError::bad_request(
                    "input",
                    format!("input {i} has {} tokens; it needs 1 to {}", ids.len(), self.max_batch_tokens),
                ));
            }
            let vocab = self.vocab_size as u32;
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(EngineError::bad_request("input", format!("token id {bad} is not below the vocabulary size {vocab}")));
            }
        }
        if let Backbone::Encoder(encoder) = &self.backbone {
            return inputs.iter().map(|ids| self.finish(&encoder.forward(ids)?, &[ids.len()], pooling, normalize).map(|mut v| v.remove(0))).collect();
        }
        let mut out = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            // As many whole inputs as fit in one step.
            let mut end = start;
            let mut tokens = 0;
            while end < inputs.len() && tokens + inputs[end].len() <= self.max_batch_tokens {
                tokens += inputs[end].len();
                end += 1;
            }
            out.extend(self.embed_step(&inputs[start..end], pooling, normalize)?);
            start = end;
        }
        Ok(out)
    }

    /// One prefill step over `inputs` (their tokens fit in the cache), pooled.
    fn embed_step(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        let mut next_block = 0u32;
        let mut seqs = Vec::with_capacity(inputs.len());
        for (i, ids) in inputs.iter().enumerate() {
            let blocks = ids.len().div_ceil(BLOCK_SIZE) as u32;
            seqs.push(ScheduledSeq {
                seq_id: i as u64,
                start_pos: 0,
                token_ids: ids.clone(),
                block_table: (next_block..next_block + blocks).collect(),
                sample: false,
                num_draft: 0,
                long_rope: false,
            });
            next_block += blocks;
        }
        let num_batched_tokens: usize = inputs.iter().map(Vec::len).sum();
        let step = SchedulerOutput { seqs, num_batched_tokens, ..Default::default() };
        let Backbone::Decoder(runner) = &mut self.backbone else {
            return Err(EngineError::Internal("a decoder step on an encoder".into()));
        };
        runner.execute(&step, SampleOn::Host)?;
        let hidden = runner
            .last_hidden
            .take()
            .ok_or_else(|| EngineError::Internal("the model kept no hidden states".into()))?; // [num_tokens, hidden]
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        self.finish(&hidden, &lens, pooling, normalize)
    }

    /// `hidden`: the stacked hidden states `[sum(lens), hidden]` of inputs of `lens` tokens -> pooled vectors.
    fn finish(&self, hidden: &Tensor, lens: &[usize], pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        check_hidden(hidden, lens.iter().sum(), self.hidden_size)?;
        let hidden: Vec<Vec<f32>> = hidden.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        let mut out = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &len in lens {
            let rows = &hidden[at..at + len];
            at += len;
            let mut v = pool(rows, pooling);
            if normalize {
                l2_normalize(&mut v);
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// `rows`: the input's hidden states `[len, hidden]`, len >= 1.
fn pool(rows: &[Vec<f32>], pooling: Pooling) -> Vec<f32> {
    match pooling {
        Pooling::Last => rows[rows.len() - 1].clone(),
        Pooling::First => rows[0].clone(),
        Pooling::Mean => {
            // Accumulated in f64: a long input's sum would lose the low bits of each row in f32.
            let mut sum = vec![0f64; rows[0].len()];
            for row in rows {
                sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
            }
            sum.iter().map(|s| (s / rows.len() as f64) as f32).collect()
        }
    }
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    if norm > 1e-12 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// Checks that a step's hidden states are what pooling reads: `[num_tokens, hidden]`.
fn check_hidden(h: &Tensor, num_tokens: usize, hidden: usize) -> Result<()> {
    if h.dims() != [num_tokens, hidden] {
        return Err(EngineError::Internal(format!("hidden states {:?}, expected [{num_tokens}, {hidden}]", h.dims())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_and_normalization() {
        let rows = vec![vec![1.0, 0.0], vec![3.0, 4.0]];
        assert_eq!(pool(&rows, Pooling::Last), vec![3.0, 4.0]);
        assert_eq!(pool(&rows, Pooling::First), vec![1.0, 0.0]);
        assert_eq!(pool(&rows, Pooling::Mean), vec![2.0, 2.0]);
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        assert!(Pooling::parse("max").is_err());
    }
}
