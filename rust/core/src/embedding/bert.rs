//! BERT-family encoders (BERT, BGE, all-MiniLM, E5, RoBERTa, XLM-RoBERTa: BGE-M3, multilingual-e5) for
//! embeddings: HF `BertModel` / `XLMRobertaModel`'s forward, post-LayerNorm blocks, bidirectional
//! attention, no KV cache. The weights come from an HF directory (bert_hf.rs) or a llama.cpp `bert` GGUF
//! (bert_gguf.rs), both handed over under HF's names without the `bert.` / `roberta.` prefix.
//!
//! Many inputs run as one batch: padded to the longest, with the padding masked out of every attention
//! row, so an input's states do not depend on what else is in the batch. Only what an embedding needs is
//! computed: the last hidden state; the pooler head is not used (sentence-transformers pools the hidden
//! states itself).

use std::collections::HashMap;

use candle_core::{DType, Tensor, D};

use crate::error::{EngineError, Result};

/// The activation between the two feed-forward matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// HF's "gelu": the exact erf form.
    Erf,
    /// HF's "gelu_new" / "gelu_pytorch_tanh": the tanh approximation.
    Tanh,
}

/// Where an input's position ids start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, ... (BERT; and llama.cpp's RoBERTa GGUFs, whose converter drops the table's first rows).
    FromZero,
    /// RoBERTa's `create_position_ids_from_input_ids`: `pad_id + 1 + i` for the i-th non-padding token,
    /// `pad_id` for padding tokens (the table's first `pad_id + 1` rows are never used otherwise).
    AfterPadding { pad_id: u32 },
}

/// The encoder's shape and the settings that change its math (read from config.json or GGUF metadata).
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub gelu: Gelu,
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub positions: Positions,
}

impl EncoderConfig {
    /// The most tokens one input may have: every position id must have a row in the table.
    pub fn max_input_tokens(&self) -> usize {
        match self.positions {
            Positions::FromZero => self.max_position_embeddings,
            Positions::AfterPadding { pad_id } => self.max_position_embeddings.saturating_sub(pad_id as usize + 1),
        }
    }

    /// Position ids of one input, as the model's reference implementation makes them.
    fn position_ids(&self, ids: &[u32]) -> Vec<u32> {
        match self.positions {
            Positions::FromZero => (0..ids.len() as u32).collect(),
            Positions::AfterPadding { pad_id } => {
                let mut next = pad_id;
                ids.iter()
                    .map(|&t| {
                        if t == pad_id {
                            pad_id
                        } else {
                            next += 1;
                            next
                        }
                    })
                    .collect()
            }
        }
    }
}

struct Linear {
    w: Tensor, // [out, in]
    b: Tensor, // [out]
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.w.t()?)?.broadcast_add(&self.b)?) // [tokens, out]
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.w)?.broadcast_add(&self.b)?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    cfg: EncoderConfig,
    word: Tensor,       // [vocab, hidden]
    position: Tensor,   // [max_positions, hidden]
    token_type: Tensor, // [type_vocab, hidden]
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// The checkpoint's tensors by HF name (no model prefix); `source` names the file in errors.
pub struct EncoderWeights<'a> {
    pub tensors: HashMap<String, Tensor>,
    pub source: &'a str,
}

impl EncoderWeights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::model_load(self.source, format!("the encoder's checkpoint lacks {name}")))?;
        if t.dims() != shape {
            return Err(EngineError::model_load(self.source, format!("{name} has shape {:?}, the config says {shape:?}", t.dims())));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear { w: self.get(&format!("{name}.weight"), &[out, inp])?, b: self.get(&format!("{name}.bias"), &[out])? })
    }
    fn norm(&self, name: &str, size: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm { w: self.get(&format!("{name}.weight"), &[size])?, b: self.get(&format!("{name}.bias"), &[size])?, eps })
    }
}

impl Bert {
    /// Builds the encoder from `w` (f32, on the device the tensors are on), checking every shape.
    pub fn new(cfg: EncoderConfig, w: &EncoderWeights) -> Result<Self> {
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(EngineError::model_load(w.source, "hidden_size is not a multiple of num_attention_heads"));
        }
        if cfg.max_input_tokens() == 0 || cfg.type_vocab_size == 0 {
            return Err(EngineError::model_load(w.source, "the position or token type table has no usable row"));
        }
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let word = w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = w.get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let token_type = w.get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let embed_norm = w.norm("embeddings.LayerNorm", h, eps)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
                    attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    up: w.linear(&format!("{p}.intermediate.dense"), cfg.intermediate_size, h)?,
                    down: w.linear(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                    out_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert { cfg, word, position, token_type, embed_norm, layers })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The last hidden states of `inputs` run as one batch (token type 0 throughout, as llama.cpp and
    /// sentence-transformers use for a single text): `[sum(len)] ids -> [sum(len), hidden]`, each input's
    /// rows in order, the inputs in order. Every input has 1 to `max_input_tokens` tokens.
    pub fn forward(&self, inputs: &[&[u32]]) -> Result<Tensor> {
        let dev = self.word.device().clone();
        let (batch, longest) = (inputs.len(), inputs.iter().map(|i| i.len()).max().unwrap_or(0));
        if longest == 0 || longest > self.cfg.max_input_tokens() || inputs.iter().any(|i| i.is_empty()) {
            return Err(EngineError::Internal(format!("encoder inputs of 1 to {} tokens expected", self.cfg.max_input_tokens())));
        }
        let (h, heads) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let head_dim = h / heads;
        // Padded to [batch, longest]: token 0 at position 0 (any valid row; the rows are masked out).
        let (mut ids, mut pos, mut mask, mut keep) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (b, input) in inputs.iter().enumerate() {
            let pad = longest - input.len();
            ids.extend(input.iter().copied().chain(std::iter::repeat_n(0, pad)));
            pos.extend(self.cfg.position_ids(input).into_iter().chain(std::iter::repeat_n(0, pad)));
            mask.extend(std::iter::repeat_n(0f32, input.len()).chain(std::iter::repeat_n(f32::NEG_INFINITY, pad)));
            keep.extend((0..input.len() as u32).map(|i| (b * longest) as u32 + i));
        }
        let ids = Tensor::from_vec(ids, batch * longest, &dev)?;
        let pos = Tensor::from_vec(pos, batch * longest, &dev)?;
        let mask = Tensor::from_vec(mask, (batch, 1, 1, longest), &dev)?; // added to [batch, heads, query, key]
        let mut x = self
            .word
            .index_select(&ids, 0)? // [batch * longest, hidden]
            .add(&self.position.index_select(&pos, 0)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        x = self.embed_norm.forward(&x)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            // [batch * longest, hidden] -> [batch, heads, longest, head_dim]
            let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((batch, longest, heads, head_dim))?.transpose(1, 2)?.contiguous()?) };
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?.broadcast_add(&mask)?; // [batch, heads, longest, longest]
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((batch * longest, h))?; // [batch * longest, hidden]
            x = layer.attn_norm.forward(&layer.attn_out.forward(&ctx)?.add(&x)?)?;
            let act = layer.up.forward(&x)?;
            let act = match self.cfg.gelu {
                Gelu::Erf => act.gelu_erf()?,
                Gelu::Tanh => act.gelu()?,
            };
            x = layer.out_norm.forward(&layer.down.forward(&act)?.add(&x)?)?;
        }
        let keep = Tensor::from_vec(keep, inputs.iter().map(|i| i.len()).sum::<usize>(), &dev)?;
        Ok(x.index_select(&keep, 0)?) // [sum(len), hidden]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(positions: Positions) -> EncoderConfig {
        EncoderConfig {
            vocab_size: 10,
            hidden_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 16,
            gelu: Gelu::Erf,
            max_position_embeddings: 12,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            positions,
        }
    }

    #[test]
    fn roberta_positions_start_after_padding() {
        let c = cfg(Positions::AfterPadding { pad_id: 1 });
        assert_eq!(c.position_ids(&[0, 5, 1, 6]), vec![2, 3, 1, 4]);
        assert_eq!(c.max_input_tokens(), 10);
        assert_eq!(cfg(Positions::FromZero).position_ids(&[4, 4]), vec![0, 1]);
    }
}
