//! An EAGLE draft head: `fc` maps the embedding of the next token concatenated with the target's hidden
//! state at the current position (`[2 hidden] -> [hidden]`), then Llama decoder layers (the first without
//! an input norm) predict the target's next hidden state, which the target's own lm_head turns into
//! logits. Weights as EAGLE checkpoints name them (`fc.weight`, `fc.bias`, `layers.0.*`, optionally
//! `embed_tokens.weight`) in HF safetensors or an MLC directory (fused `qkv_proj` / `gate_up_proj`).

use super::config::ModelConfig;
use super::decoder::{gather_ropes, rope_tables, run_layers, DecoderLayer};
use super::layers::attention::StackStep;
use super::linear::Linear;
use super::weights::WeightSource;
use crate::attention::{PagedKvCache, StepAttention};
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

pub struct EagleHead {
    cfg: ModelConfig,
    /// `[2 hidden] -> [hidden]`
    fc: Linear,
    layers: Vec<DecoderLayer>,
    /// The head's own token embedding, when the checkpoint carries one (else the target's is used).
    embed: Option<Tensor>,
    ropes: Vec<(Tensor, Tensor)>,
}

impl EagleHead {
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::load(cfg, w, &format!("layers.{i}"), i, i != 0)).collect::<Result<Vec<_>>>()?;
        let fc = w.linear("fc", w.contains("fc.bias"))?;
        let embed = if w.contains("embed_tokens.weight") { Some(w.tensor("embed_tokens.weight")?) } else { None };
        let ropes = rope_tables(cfg, device, dtype)?;
        Ok(EagleHead { cfg: cfg.clone(), fc, layers, embed, ropes })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The head's own embedding of `tokens` (`[n] -> [n, hidden]`), if it has one.
    pub fn embed(&self, tokens: &Tensor) -> Result<Option<Tensor>> {
        Ok(match &self.embed {
            Some(e) => Some(e.index_select(tokens, 0)?),
            None => None,
        })
    }

    /// `embeds`: `[n, hidden]` embeddings of the tokens after each position; `features`: `[n, hidden]` the
    /// target's (or the head's own previous) hidden states at the positions; returns the head's output
    /// `[n, hidden]` for the target's lm_head.
    pub fn forward(&self, embeds: &Tensor, features: &Tensor, positions: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor> {
        let x = Tensor::cat(&[embeds, &features.to_dtype(embeds.dtype())?], 1)?; // [n, 2 hidden]
        let residual = self.fc.forward(&x)?; // [n, hidden]
        let gathered = gather_ropes(&self.cfg, &self.ropes, positions)?;
        let s = StackStep { cfg: &self.cfg, ropes: &self.ropes, gathered: &gathered, positions, kv, step, tp: None };
        let (residual, mlp_out) = run_layers(&self.layers, &s, residual)?;
        Ok(match mlp_out {
            Some(m) => (m + residual)?,
            None => residual,
        })
    }
}
