//! BERT-family encoders (BGE, all-MiniLM, E5, ...) for embeddings: HF `BertModel`'s forward over one
//! input at a time, bidirectional attention, no KV cache, in candle style (weight names as the
//! checkpoint's, with or without the `bert.` prefix of a `BertFor*` checkpoint).
//!
//! Only what an embedding needs: the last hidden state `[len, hidden]`; the pooler head is not used
//! (sentence-transformers pools the hidden states itself).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Whether `dir` holds a BERT-family encoder (config.json's `model_type`).
pub fn is_bert(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    matches!(value.get("model_type").and_then(|v| v.as_str()), Some("bert"))
}

struct Linear {
    w: Tensor, // [out, in]
    b: Tensor, // [out]
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.w.t()?)?.broadcast_add(&self.b)?) // [len, out]
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
    cfg: BertConfig,
    word: Tensor,       // [vocab, hidden]
    position: Tensor,   // [max_positions, hidden]
    token_type: Tensor, // [type_vocab, hidden]
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let key = format!("{}{name}", self.prefix);
        let t = self.tensors.get(&key).ok_or_else(|| EngineError::Unsupported(format!("BERT checkpoint lacks {key}")))?;
        Ok(t.to_dtype(DType::F32)?)
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.get(&format!("{name}.bias"))?;
        check(&w, &[out, inp], name)?;
        check(&b, &[out], name)?;
        Ok(Linear { w, b })
    }
    fn norm(&self, name: &str, size: usize, eps: f64) -> Result<LayerNorm> {
        let w = self.get(&format!("{name}.weight")).or_else(|_| self.get(&format!("{name}.gamma")))?;
        let b = self.get(&format!("{name}.bias")).or_else(|_| self.get(&format!("{name}.beta")))?;
        check(&w, &[size], name)?;
        Ok(LayerNorm { w, b, eps })
    }
}

fn check(t: &Tensor, shape: &[usize], name: &str) -> Result<()> {
    if t.dims() != shape {
        return Err(EngineError::model_load(name, format!("shape {:?}, the config says {shape:?}", t.dims())));
    }
    Ok(())
}

impl Bert {
    /// Loads `dir` (config.json + model.safetensors) in f32 on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.display().to_string();
        let cfg: BertConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)
            .map_err(|e| EngineError::model_load(&path, format!("config.json: {e}")))?;
        if !matches!(cfg.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(EngineError::model_load(&path, format!("hidden_act {:?} is not supported", cfg.hidden_act)));
        }
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(EngineError::model_load(&path, "hidden_size is not a multiple of num_attention_heads"));
        }
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let w = Weights { tensors, prefix };
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let word = w.get("embeddings.word_embeddings.weight")?;
        check(&word, &[cfg.vocab_size, h], "embeddings.word_embeddings")?;
        let position = w.get("embeddings.position_embeddings.weight")?;
        check(&position, &[cfg.max_position_embeddings, h], "embeddings.position_embeddings")?;
        let token_type = w.get("embeddings.token_type_embeddings.weight")?;
        check(&token_type, &[cfg.type_vocab_size, h], "embeddings.token_type_embeddings")?;
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

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The last hidden state of one input: `[len] ids -> [len, hidden]` (token type 0 throughout).
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let len = ids.len();
        let dev = self.word.device();
        let (h, heads) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let head_dim = h / heads;
        let ids_t = Tensor::from_vec(ids.to_vec(), len, dev)?;
        let mut x = self
            .word
            .index_select(&ids_t, 0)? // [len, hidden]
            .add(&self.position.narrow(0, 0, len)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        x = self.embed_norm.forward(&x)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            // [len, hidden] -> [heads, len, head_dim]
            let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((len, heads, head_dim))?.transpose(0, 1)?.contiguous()?) };
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * scale)?; // [heads, len, len]
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(0, 1)?.contiguous()?.reshape((len, h))?; // [len, hidden]
            x = layer.attn_norm.forward(&layer.attn_out.forward(&ctx)?.add(&x)?)?;
            let act = layer.up.forward(&x)?;
            let act = if self.cfg.hidden_act == "gelu" { act.gelu_erf()? } else { act.gelu()? };
            x = layer.out_norm.forward(&layer.down.forward(&act)?.add(&x)?)?;
        }
        Ok(x)
    }
}
