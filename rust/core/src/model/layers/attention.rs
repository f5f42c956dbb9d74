//! Self-attention of one layer over the paged KV cache: stacked q/k/v projection, optional q/k norm
//! (per head, or over the whole projection), rope (all or the leading part of each head), the write of
//! k and v into the cache, attention of the layer's kind (full or sliding window, soft-capped or not,
//! with per-head sinks or not), o_proj.

use crate::attention::{AttnParams, PagedKvCache, StepAttention};
use crate::error::{EngineError, Result};
use crate::model::config::{LayerConfig, ModelConfig, QkNormKind};
use crate::model::fused::{self, QkNorm, QkvSpec};
use crate::model::layers::norm;
use crate::model::linear::{Linear, StackedLinear};
use crate::model::sharded::TensorParallel;
use crate::model::weights::WeightSource;
use crate::profile::{span, Part};
use candle_core::Tensor;
use candle_nn::ops::rms_norm;

pub struct Attention {
    /// q, k, v stacked: `[T, hidden] -> [T, (heads + 2 kv_heads) * head_dim]`.
    qkv: StackedLinear,
    o_proj: Linear,
    /// `[head_dim]` each (per head) or `[heads * head_dim]` / `[kv_heads * head_dim]` (whole).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    qk_norm: QkNormKind,
    layer: LayerConfig,
    /// gpt-oss: `self_attn.sinks`, one logit per query head, `[heads]` f32 on the model's device (made
    /// once at load: the CUDA kernels read it in place, also from a captured graph).
    sinks: Option<Tensor>,
}

/// What every layer of a step shares: the config, the rope tables, the positions and the cache.
pub struct StackStep<'a> {
    pub cfg: &'a ModelConfig,
    /// `(cos, sin)` per rope of the config, `[max_positions, rotary_dim / 2]` each.
    pub ropes: &'a [(Tensor, Tensor)],
    /// Per rope on the CPU: the rows at the step's positions, `[T, 1, rotary_dim / 2]` (gathered once
    /// per step); `None` on CUDA, where the rope kernel reads the tables at each token's position.
    pub gathered: &'a [Option<(Tensor, Tensor)>],
    /// `[T]` u32
    pub positions: &'a Tensor,
    pub kv: &'a PagedKvCache,
    pub step: &'a StepAttention,
    /// The rank's group when the model is sharded (`cfg` is then the rank's slice): o_proj's and the
    /// MLP's partial sums are all-reduced, OLMo 2's whole q/k norms take their sums of squares over it.
    pub tp: Option<&'a TensorParallel>,
}

impl Attention {
    /// The attention at `p` (`model.layers.3.self_attn`), of layer kind `layer`.
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str, layer: LayerConfig) -> Result<Self> {
        let bias = cfg.attention_bias;
        let qkv = if cfg.fused_projections {
            StackedLinear::new(vec![w.linear(&format!("{p}.qkv_proj"), bias)?])?
        } else {
            StackedLinear::new(vec![
                w.linear(&format!("{p}.q_proj"), bias)?,
                w.linear(&format!("{p}.k_proj"), bias)?,
                w.linear(&format!("{p}.v_proj"), bias)?,
            ])?
        };
        let (q_norm, k_norm) = match cfg.qk_norm {
            QkNormKind::None => (None, None),
            _ => (Some(norm::load(cfg, w, &format!("{p}.q_norm.weight"))?), Some(norm::load(cfg, w, &format!("{p}.k_norm.weight"))?)),
        };
        let sinks = if cfg.attention_sinks { Some(load_sinks(w, &format!("{p}.sinks"), cfg.num_attention_heads)?) } else { None };
        Ok(Attention { qkv, o_proj: w.linear(&format!("{p}.o_proj"), cfg.o_proj_bias)?, q_norm, k_norm, qk_norm: cfg.qk_norm, layer, sinks })
    }

    /// `h: [T, hidden]` (normed) -> `[T, hidden]`; writes the layer's k and v into cache layer `li`.
    pub fn forward(&self, h: &Tensor, s: &StackStep<'_>, li: usize) -> Result<Tensor> {
        let cfg = s.cfg;
        let (n, nh, nkv, hd) = (h.dim(0)?, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let qkv_span = span(Part::Qkv);
        let mut qkv = self.qkv.forward(h)?; // [T, (heads + 2 kv_heads) * head_dim]
        drop(qkv_span);
        let per_head = match (self.qk_norm, &self.q_norm, &self.k_norm) {
            (QkNormKind::PerHead, Some(q), Some(k)) => Some(QkNorm { q, k }),
            (QkNormKind::Whole, Some(qw), Some(kw)) => {
                // OLMo 2 normalises q and k over all heads at once, before they are split into heads.
                let norm = |x: Tensor, w: &Tensor| match s.tp {
                    Some(tp) => tp.rms_norm_split(&x, w, eps),
                    None => Ok(rms_norm(&x, w, eps)?),
                };
                let q = norm(qkv.narrow(1, 0, nh * hd)?.contiguous()?, qw)?;
                let k = norm(qkv.narrow(1, nh * hd, nkv * hd)?.contiguous()?, kw)?;
                qkv = Tensor::cat(&[&q, &k, &qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?], 1)?;
                None
            }
            _ => None,
        };
        let rope = self.layer.rope;
        let (cos, sin) = &s.ropes[rope];
        let spec = QkvSpec { num_heads: nh, num_kv_heads: nkv, head_dim: hd, style: cfg.ropes[rope].style, eps };
        // q: [T, heads, head_dim]; k and v go to the cache.
        let rope_span = span(Part::RopeKv);
        let q = match &s.gathered[rope] {
            Some((gc, gs)) => fused::rope_qkv_reference(&qkv, gc, gs, &spec, per_head, s.kv, li, s.step)?,
            None => fused::rope_qkv(&qkv, s.positions, cos, sin, &spec, per_head, s.kv, li, s.step)?,
        };
        drop(rope_span);
        let params = AttnParams {
            scale: cfg.attention_scale as f32,
            softcap: cfg.attn_logit_softcap.map(|c| c as f32),
            window: self.layer.attention.window(),
        };
        let attn_span = span(Part::Attn);
        let attn = s.kv.attend_with_sinks(li, &q, s.step, &params, self.sinks.as_ref())?.reshape((n, nh * hd))?; // [T, heads * head_dim]
        drop(attn_span);
        let o_span = span(Part::OProj);
        let out = self.o_proj.forward(&attn)?; // [T, hidden] (this rank's partial sum when sharded)
        drop(o_span);
        match s.tp {
            Some(tp) => tp.all_reduce(&out),
            None => Ok(out),
        }
    }
}

/// A layer's sinks, `[heads]` f32 where the weights live (the checkpoint's bf16 widened exactly).
fn load_sinks(w: &dyn WeightSource, name: &str, heads: usize) -> Result<Tensor> {
    let t = w.tensor(name)?; // [heads]
    if t.dims() != [heads] {
        return Err(EngineError::model_load(name, format!("shape {:?}, expected [{heads}] (one sink per query head)", t.shape())));
    }
    Ok(t.to_dtype(candle_core::DType::F32)?.contiguous()?)
}
