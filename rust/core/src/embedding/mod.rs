//! Sentence embeddings: MLC's embedding engine and OpenAI's `/v1/embeddings`, from a decoder model
//! (Qwen3-Embedding and other causal LMs trained for it; HF, GGUF or MLC weights) or a BERT-family encoder
//! (bert.rs: BERT, RoBERTa, XLM-RoBERTa from an HF directory, bert_hf.rs, or a llama.cpp `bert` GGUF,
//! bert_gguf.rs).
//!
//! A decoder input is one full prefill through the model's decoder stack and final norm; its embedding
//! is a pooling of those hidden states (the last token's for causal models, whose last position has seen
//! the whole input; the first, [CLS], or the mean for encoders), optionally L2-normalized. Many inputs
//! run as one step: decoder inputs are packed into steps over a KV cache of `max_batch_tokens` tokens
//! (each input in whole blocks of its own), which every step reuses from block 0; encoder inputs, ordered
//! by length, are
//! padded into steps of at most `max_batch_tokens` padded tokens. Nothing is kept between inputs, so
//! results do not depend on what else is in the batch.
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
pub mod bert_gguf;
pub mod bert_hf;

const BLOCK_SIZE: usize = 16;

enum Backbone {
    Decoder(ModelRunner),
    Encoder(Encoder),
}

struct Encoder {
    bert: bert::Bert,
    /// The ids framing an input ([CLS] / [SEP], <s> / </s>), where the model says.
    frame: Option<(u32, u32)>,
    /// The pooling the model was trained with (sentence-transformers' module, GGUF's pooling_type).
    pooling: Pooling,
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

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Last => "last",
            Pooling::Mean => "mean",
            Pooling::First => "cls",
        }
    }
}

/// A loaded embedding model: see the module documentation.
pub struct Embedder {
    backbone: Backbone,
    vocab_size: usize,
    tokenizer: Arc<Tokenizer>,
    max_batch_tokens: usize,
    /// The longest input: the step size, or an encoder's position table if shorter.
    max_input_tokens: usize,
    hidden_size: usize,
    name: String,
    device: Device,
    /// Forward passes run so far (one per step of many inputs).
    steps: u64,
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
        let display_name = || crate::hub::repo_id(model).unwrap_or_else(|| loader_name(dir));
        if dir.is_dir() && bert_hf::is_encoder_dir(dir) {
            let bert = bert_hf::load(dir, &device)?;
            let tokenizer = Tokenizer::from_hf_dir(dir)?;
            let frame = bert_hf::frame_texts(dir).and_then(|(c, s)| tokenizer.token_to_id(&c).zip(tokenizer.token_to_id(&s)));
            let pooling = bert_hf::sentence_transformers_pooling(dir)?.unwrap_or(Pooling::First);
            return Ok(Self::encoder(Encoder { bert, frame, pooling }, tokenizer, display_name(), device, max_batch_tokens));
        }
        // A GGUF file, or a directory holding just one (as the loader takes it).
        let gguf = if dir.is_dir() && !dir.join("config.json").exists() { single_gguf(dir) } else { Some(dir.to_path_buf()) };
        if let Some(file) = gguf.filter(|f| bert_gguf::is_bert_gguf(f)) {
            let g = bert_gguf::load(&file, &device)?;
            let encoder = Encoder { bert: g.bert, frame: g.frame, pooling: g.pooling.unwrap_or(Pooling::First) };
            return Ok(Self::encoder(encoder, g.tokenizer, display_name(), device, max_batch_tokens));
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
            max_input_tokens: max_batch_tokens,
            hidden_size: cfg.hidden_size,
            name,
            device,
            steps: 0,
        })
    }

    fn encoder(encoder: Encoder, tokenizer: Tokenizer, name: String, device: Device, max_batch_tokens: usize) -> Self {
        let cfg = encoder.bert.config();
        Embedder {
            vocab_size: cfg.vocab_size,
            max_batch_tokens,
            max_input_tokens: max_batch_tokens.min(cfg.max_input_tokens()),
            hidden_size: cfg.hidden_size,
            backbone: Backbone::Encoder(encoder),
            tokenizer: Arc::new(tokenizer),
            name,
            device,
            steps: 0,
        }
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

    /// The most tokens one step may run (padding included for an encoder).
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    /// The most tokens one input may have.
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the model is a bidirectional encoder (BERT) rather than a causal decoder.
    pub fn is_encoder(&self) -> bool {
        matches!(self.backbone, Backbone::Encoder(_))
    }

    /// The pooling the model was trained with: the last token for a decoder; an encoder's own (its
    /// sentence-transformers module or GGUF pooling_type), else [CLS].
    pub fn default_pooling(&self) -> Pooling {
        match &self.backbone {
            Backbone::Decoder(_) => Pooling::Last,
            Backbone::Encoder(e) => e.pooling,
        }
    }

    /// The ids an encoder's input is framed by (its tokenizer's [CLS] and [SEP], or <s> and </s>).
    pub fn frame(&self) -> Option<(u32, u32)> {
        match &self.backbone {
            Backbone::Decoder(_) => None,
            Backbone::Encoder(e) => e.frame,
        }
    }

    /// Forward passes run so far: a call with many inputs that fit one step adds one.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One embedding per input, in order. Every input needs at least one token and at most
    /// `max_input_tokens`.
    pub fn embed(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        for (i, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > self.max_input_tokens {
                return Err(EngineError::bad_request(
                    "input",
                    format!("input {i} has {} tokens; it needs 1 to {}", ids.len(), self.max_input_tokens),
                ));
            }
            let vocab = self.vocab_size as u32;
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(EngineError::bad_request("input", format!("token id {bad} is not below the vocabulary size {vocab}")));
            }
        }
        if matches!(self.backbone, Backbone::Encoder(_)) {
            return self.embed_encoder(inputs, pooling, normalize);
        }
        let mut out = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            // As many whole inputs as fit in one step: each input starts a fresh block, so the bound is the
            // cache's blocks (counting tokens alone overflowed it with inputs of partial blocks).
            let num_blocks = self.max_batch_tokens.div_ceil(BLOCK_SIZE);
            let mut end = start;
            let mut blocks = 0;
            while end < inputs.len() && blocks + inputs[end].len().div_ceil(BLOCK_SIZE) <= num_blocks {
                blocks += inputs[end].len().div_ceil(BLOCK_SIZE);
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
        self.steps += 1;
        let hidden = runner
            .last_hidden
            .take()
            .ok_or_else(|| EngineError::Internal("the model kept no hidden states".into()))?; // [num_tokens, hidden]
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        self.finish(&hidden, &lens, pooling, normalize)
    }

    /// Encoder inputs in steps of at most `max_batch_tokens` padded tokens, shortest first so that a
    /// step pads little; the vectors come back in the inputs' order.
    fn embed_encoder(&mut self, inputs: &[Vec<u32>], pooling: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out = vec![Vec::new(); inputs.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending: the step's padded size is its count times its last input's length.
            let mut end = start + 1;
            while end < order.len() && (end + 1 - start) * inputs[order[end]].len() <= self.max_batch_tokens {
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end].iter().map(|&i| inputs[i].as_slice()).collect();
            let Backbone::Encoder(encoder) = &self.backbone else {
                return Err(EngineError::Internal("an encoder step on a decoder".into()));
            };
            let hidden = encoder.bert.forward(&batch)?; // [sum(len), hidden]
            self.steps += 1;
            let lens: Vec<usize> = batch.iter().map(|ids| ids.len()).collect();
            for (&i, v) in order[start..end].iter().zip(self.finish(&hidden, &lens, pooling, normalize)?) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
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

/// The one `.gguf` file in `dir`, if it holds exactly one.
fn single_gguf(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut found = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "gguf"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The file or directory name a model is known by when it has no hub id.
fn loader_name(path: &std::path::Path) -> String {
    let stem = if path.is_dir() { path.file_name() } else { path.file_stem() };
    stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
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
