//! The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2, Qwen3) over a paged KV cache.
//!
//! The forward pass takes a flat list of tokens from any number of sequences (prefill chunks and
//! decode tokens mixed), their positions, and the attention metadata; it returns logits only for the
//! rows the engine samples from, so a long prefill never materializes `[tokens, vocab]`.
//!
//! q/k/v and gate/up are stacked at load into one matrix each (one matmul, see [`StackedLinear`]). On
//! CUDA a layer then runs 9 launches (10 with split-context attention): RMSNorm fused with the previous
//! residual add, the q/k/v matmul, rope of q and k with the KV-cache write, attention, o_proj, the
//! residual add fused with the post-attention RMSNorm, the gate/up matmul, silu * up, down (its residual
//! add is fused into the next layer's norm). The CPU runs the same ops unfused (`fused`'s references).

use super::config::ModelConfig;
use super::fused::{self, QkNorm, QkvSpec};
use super::linear::{Linear, StackedLinear};
use crate::attention::{PagedKvCache, StepAttention};
use crate::error::Result;
use crate::loader::Weights;
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;

pub(crate) struct Layer {
    /// `None` for the first layer of an EAGLE head, which takes its input unnormalised.
    input_norm: Option<Tensor>,
    /// q, k, v stacked: `[T, hidden] -> [T, (heads + 2 kv_heads) * head_dim]`.
    qkv_proj: StackedLinear,
    o_proj: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    /// gate, up stacked: `[T, hidden] -> [T, 2 * intermediate]`.
    gate_up_proj: StackedLinear,
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

impl Layer {
    /// The layer at `p` (`model.layers.3`); `input_norm: false` for a layer without one (EAGLE's first).
    pub(crate) fn load(cfg: &ModelConfig, w: &Weights, p: &str, input_norm: bool) -> Result<Self> {
        let bias = cfg.attention_bias;
        let (q_norm, k_norm) = if cfg.qk_norm {
            (Some(w.tensor(&format!("{p}.self_attn.q_norm.weight"))?), Some(w.tensor(&format!("{p}.self_attn.k_norm.weight"))?))
        } else {
            (None, None)
        };
        Ok(Layer {
            input_norm: if input_norm { Some(w.tensor(&format!("{p}.input_layernorm.weight"))?) } else { None },
            qkv_proj: StackedLinear::new(vec![
                w.linear(&format!("{p}.self_attn.q_proj"), bias)?,
                w.linear(&format!("{p}.self_attn.k_proj"), bias)?,
                w.linear(&format!("{p}.self_attn.v_proj"), bias)?,
            ])?,
            o_proj: w.linear(&format!("{p}.self_attn.o_proj"), false)?,
            q_norm,
            k_norm,
            post_norm: w.tensor(&format!("{p}.post_attention_layernorm.weight"))?,
            gate_up_proj: StackedLinear::new(vec![w.linear(&format!("{p}.mlp.gate_proj"), false)?, w.linear(&format!("{p}.mlp.up_proj"), false)?])?,
            down_proj: w.linear(&format!("{p}.mlp.down_proj"), false)?,
        })
    }
}

/// What every layer of a step shares: the shapes, the rope tables, the positions and the cache.
pub(crate) struct StackStep<'a> {
    pub cfg: &'a ModelConfig,
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub positions: &'a Tensor,
    pub kv: &'a PagedKvCache,
    pub step: &'a StepAttention,
}

/// Runs `layers` over `residual` (`[num_tokens, hidden]`, the stack's input), the layers' KV going to
/// cache layers `0..layers.len()`. Returns the residual stream and the last layer's MLP output, not yet
/// added (the caller fuses that add with its final norm, or adds it).
pub(crate) fn run_layers(layers: &[Layer], s: &StackStep<'_>, mut residual: Tensor) -> Result<(Tensor, Option<Tensor>)> {
    let cfg = s.cfg;
    let n = residual.dim(0)?;
    let (nh, hd) = (cfg.num_attention_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps as f32;
    let scale = 1.0 / (hd as f32).sqrt();
    let spec = QkvSpec { num_heads: nh, num_kv_heads: cfg.num_key_value_heads, head_dim: hd, style: cfg.rope_style, eps };
    // CUDA reads the rope tables at each token's position inside the rope kernel; the CPU gathers the
    // rows once per step: [num_tokens, 1, head_dim / 2].
    let gathered = if residual.device().is_cuda() { None } else { Some(fused::gather_rope(s.cos, s.sin, s.positions)?) };
    let mut h = match layers.first().and_then(|l| l.input_norm.as_ref()) {
        Some(norm) => rms_norm(&residual, norm, eps)?,
        None => residual.clone(),
    };
    let mut mlp_out: Option<Tensor> = None; // the last layer's MLP output, not yet added to `residual`
    for (li, layer) in layers.iter().enumerate() {
        if let Some(m) = mlp_out.take() {
            (residual, h) = match &layer.input_norm {
                Some(norm) => fused::add_rms_norm(&m, &residual, norm, eps)?,
                None => {
                    let r = (m + &residual)?;
                    (r.clone(), r)
                }
            };
        }
        let qkv = layer.qkv_proj.forward(&h)?; // [num_tokens, (heads + 2 kv_heads) * head_dim]
        let norm = match (&layer.q_norm, &layer.k_norm) {
            (Some(q), Some(k)) => Some(QkNorm { q, k }),
            _ => None,
        };
        // q: [num_tokens, heads, head_dim]; k and v go to the cache.
        let q = match &gathered {
            Some((cos, sin)) => fused::rope_qkv_reference(&qkv, cos, sin, &spec, norm, s.kv, li, s.step)?,
            None => fused::rope_qkv(&qkv, s.positions, s.cos, s.sin, &spec, norm, s.kv, li, s.step)?,
        };
        let attn = s.kv.attend(li, &q, s.step, scale)?.reshape((n, nh * hd))?; // [num_tokens, heads * head_dim]
        (residual, h) = fused::add_rms_norm(&layer.o_proj.forward(&attn)?, &residual, &layer.post_norm, eps)?;
        let act = layer.gate_up_proj.forward_silu_mul(&h)?; // [num_tokens, intermediate]
        mlp_out = Some(layer.down_proj.forward(&act)?);
    }
    Ok((residual, mlp_out))
}

impl LlamaModel {
    pub fn load(cfg: &ModelConfig, w: &Weights, device: &Device, dtype: DType) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = device {
            // SAFETY: candle runs every op of a device on its one stream, so the per-buffer CUDA events
            // cudarc creates for cross-stream ordering are never waited on (it orders streams only in
            // multi-stream mode); without tracking, an allocation skips creating and destroying them.
            unsafe { d.disable_event_tracking() };
        }
        let layers = (0..cfg.num_hidden_layers).map(|i| Layer::load(cfg, w, &format!("model.layers.{i}"), true)).collect::<Result<Vec<_>>>()?;
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
        let h = self.forward_hidden(tokens, positions, kv, step)?;
        self.logits(&h.index_select(sample_rows, 0)?)
    }

    /// `h: [num_samples, hidden]` (final-normed hidden states) -> f32 logits `[num_samples, vocab]`.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(h)?.to_dtype(DType::F32)?)
    }

    /// The decoder stack and the final norm: `[num_tokens]` ids and positions -> `[num_tokens, hidden]`.
    /// On CUDA this launches only kernels (no host copies or synchronisation), so a decode step of
    /// fixed shape can be captured into a CUDA graph.
    pub fn forward_hidden(&self, tokens: &Tensor, positions: &Tensor, kv: &PagedKvCache, step: &StepAttention) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let residual = self.embed.index_select(tokens, 0)?; // [num_tokens, hidden]
        let s = StackStep { cfg: &self.cfg, cos: &self.cos, sin: &self.sin, positions, kv, step };
        let (residual, mlp_out) = run_layers(&self.layers, &s, residual)?;
        // The final norm over every row (row-wise, so the sampled rows are exactly as if selected first).
        Ok(match mlp_out {
            Some(m) => fused::add_rms_norm(&m, &residual, &self.norm, eps)?.1,
            None => rms_norm(&residual, &self.norm, eps)?,
        })
    }

    /// Embedding lookup used by tests to check weights: `[num_tokens] -> [num_tokens, hidden]`.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.embed.index_select(tokens, 0)?)
    }
}

pub(crate) fn rope_tables(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
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
