//! The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2, Qwen3) over a paged KV cache.
//!
//! The forward pass takes a flat list of tokens from any number of sequences (prefill chunks and
//! decode tokens mixed), their positions, and the attention metadata; it returns logits only for the
//! rows the engine samples from, so a long prefill never materializes `[tokens, vocab]`.

use super::config::{ModelConfig, RopeStyle};
use super::linear::Linear;
use crate::attention::{PagedKvCache, StepAttention};
use crate::error::Result;
use crate::loader::Weights;
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;

struct Layer {
    input_norm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct LlamaModel {
    cfg: ModelConfig,
    /// `[vocab, hidden]`
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
    device: Device,
    dtype: DType,
}

impl LlamaModel {
    pub fn load(cfg: &ModelConfig, w: &Weights, device: &Device, dtype: DType) -> Result<Self> {
        let bias = cfg.attention_bias;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(w.tensor(&format!("{p}.self_attn.q_norm.weight"))?),
                    Some(w.tensor(&format!("{p}.self_attn.k_norm.weight"))?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm: w.tensor(&format!("{p}.input_layernorm.weight"))?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), bias)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), bias)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), bias)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), false)?,
                q_norm,
                k_norm,
                post_norm: w.tensor(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), false)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), false)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), false)?,
            });
        }
        let embed = w.tensor("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            w.linear("model.embed_tokens", false)?
        } else {
            w.linear("lm_head", false)?
        };
        let (cos, sin) = rope_tables(cfg, device, dtype)?;
        Ok(LlamaModel {
            cfg: cfg.clone(),
            embed,
            layers,
            norm: w.tensor("model.norm.weight")?,
            lm_head,
            cos,
            sin,
            device: device.clone(),
            dtype,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs one step. `tokens`, `positions`: `[num_tokens]` u32; `sample_rows`: `[num_samples]` u32
    /// indices into the token list. Returns f32 logits `[num_samples, vocab]`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        sample_rows: &Tensor,
        kv: &PagedKvCache,
        step: &StepAttention,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let n = tokens.dim(0)?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        // [num_tokens, head_dim / 2] -> [num_tokens, 1, head_dim / 2]: one rotation per token.
        let cos = self.cos.index_select(positions, 0)?.reshape((n, 1, hd / 2))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((n, 1, hd / 2))?;
        let mut x = self.embed.index_select(tokens, 0)?; // [num_tokens, hidden]
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps)?;
            let q = layer.q_proj.forward(&h)?.reshape((n, nh, hd))?; // [num_tokens, heads, head_dim]
            let k = layer.k_proj.forward(&h)?.reshape((n, nkv, hd))?; // [num_tokens, kv_heads, head_dim]
            let v = layer.v_proj.forward(&h)?.reshape((n, nkv, hd))?.contiguous()?;
            let (q, k) = match (&layer.q_norm, &layer.k_norm) {
                (Some(qn), Some(kn)) => (rms_norm(&q.contiguous()?, qn, eps)?, rms_norm(&k.contiguous()?, kn, eps)?),
                _ => (q, k),
            };
            let q = self.rope(&q, &cos, &sin)?;
            let k = self.rope(&k, &cos, &sin)?;
            kv.write(li, &k, &v, step)?;
            let attn = kv.attend(li, &q, step, scale)?.reshape((n, nh * hd))?; // [num_tokens, heads * head_dim]
            x = (x + layer.o_proj.forward(&attn)?)?;
            let h = rms_norm(&x, &layer.post_norm, eps)?;
            let gate = candle_nn::ops::silu(&layer.gate_proj.forward(&h)?)?;
            let up = layer.up_proj.forward(&h)?;
            x = (x + layer.down_proj.forward(&(gate * up)?)?)?;
        }
        let last = x.index_select(sample_rows, 0)?; // [num_samples, hidden]
        let last = rms_norm(&last, &self.norm, eps)?;
        Ok(self.lm_head.forward(&last)?.to_dtype(DType::F32)?)
    }

    /// `x: [num_tokens, heads, head_dim]`, `cos`/`sin`: `[num_tokens, 1, head_dim / 2]`.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, h, d) = x.dims3()?;
        // Seen by candle's rope as batch = token, one position each: positions differ per token.
        let x4 = x.contiguous()?.reshape((n, h, 1, d))?;
        let y = match self.cfg.rope_style {
            RopeStyle::Half => candle_nn::rotary_emb::rope(&x4, cos, sin)?,
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x4, cos, sin)?,
        };
        Ok(y.reshape((n, h, d))?)
    }

    /// Embedding lookup used by tests to check weights: `[num_tokens] -> [num_tokens, hidden]`.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.embed.index_select(tokens, 0)?)
    }
}

fn rope_tables(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let inv = cfg.rope_inv_freq();
    let half = inv.len();
    let max_pos = cfg.max_position_embeddings;
    let inv = Tensor::from_vec(inv, (1, half), &Device::Cpu)?;
    let pos = Tensor::arange(0u32, max_pos as u32, &Device::Cpu)?.to_dtype(DType::F32)?.reshape((max_pos, 1))?;
    let freqs = pos.broadcast_mul(&inv)?; // [max_positions, head_dim / 2]
    let cos = freqs.cos()?.to_dtype(dtype)?.to_device(device)?;
    let sin = freqs.sin()?.to_dtype(dtype)?.to_device(device)?;
    Ok((cos, sin))
}
