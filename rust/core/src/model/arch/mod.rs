//! One file per architecture family: how its HF config and GGUF metadata fill [`ModelConfig`]. The
//! decoder reads only the config, so an architecture says here only what differs from Llama.

pub mod gemma;
pub mod gpt_oss;
pub mod llama;
pub mod moe;
pub mod olmo2;
pub mod phi3;
pub mod qwen;
#[cfg(test)]
mod tests;

use super::config::{Activation, AttentionKind, HfConfig, LayerConfig, ModelConfig, NormPlacement, QkNormKind};
use super::gguf_meta::GgufMeta;
use super::registry::Architecture;
use super::rope::{RopeConfig, RopeScaling, RopeStyle};
use crate::error::Result;

/// The sizes every source gives.
pub(crate) struct Sizes {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    max_positions: usize,
}

/// Llama's choices for everything but the sizes (no rope yet, every layer full attention with rope 0).
fn llama_defaults(arch: Architecture, s: Sizes, rms_norm_eps: f64, tie_word_embeddings: bool) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        num_key_value_heads: s.kv_heads,
        head_dim: s.head_dim,
        rms_norm_eps,
        vocab_size: s.vocab,
        max_position_embeddings: s.max_positions,
        tie_word_embeddings,
        attention_bias: false,
        o_proj_bias: false,
        fused_projections: false,
        qk_norm: QkNormKind::None,
        norms: NormPlacement::Pre,
        norm_plus_one: false,
        activation: Activation::Silu,
        embedding_scale: None,
        attention_scale: 1.0 / (s.head_dim as f64).sqrt(),
        attn_logit_softcap: None,
        attention_sinks: false,
        final_logit_softcap: None,
        ropes: Vec::new(),
        layers: vec![LayerConfig { attention: AttentionKind::Full, rope: 0 }; s.layers],
        moe: None,
        fp8: None,
    }
}

/// The Llama defaults every architecture starts from, with the sizes read from an HF config. The rope
/// is read separately ([`single_rope`]) because architectures differ in its keys.
pub(crate) fn hf_base(c: &HfConfig<'_>, arch: Architecture, tie_default: bool) -> Result<ModelConfig> {
    let hidden = c.need_usize("hidden_size")?;
    let heads = c.need_usize("num_attention_heads")?;
    if heads == 0 {
        return Err(c.err("num_attention_heads must be at least 1"));
    }
    let head_dim = match c.usize("head_dim")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => return Err(c.err("num_attention_heads must divide hidden_size")),
    };
    let sizes = Sizes {
        hidden,
        intermediate: c.need_usize("intermediate_size")?,
        layers: c.need_usize("num_hidden_layers")?,
        heads,
        kv_heads: c.usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        vocab: c.need_usize("vocab_size")?,
        max_positions: c.usize("max_position_embeddings")?.unwrap_or(4096),
    };
    let mut cfg = llama_defaults(arch, sizes, c.f64("rms_norm_eps")?.unwrap_or(1e-6), c.bool("tie_word_embeddings")?.unwrap_or(tie_default));
    cfg.activation = c.activation(Activation::Silu)?;
    Ok(cfg)
}

/// One rope for every layer, from `rope_theta` / `rope_scaling` or `rope_parameters`.
pub(crate) fn single_rope(c: &HfConfig<'_>, cfg: &mut ModelConfig, default_theta: f64) -> Result<()> {
    cfg.ropes = vec![c.rope(None, "rope_theta", default_theta, true, cfg.head_dim, RopeStyle::Half)?];
    Ok(())
}

/// Every layer slides over `window` positions (`None`: all full).
pub(crate) fn uniform_window(cfg: &mut ModelConfig, window: Option<usize>) {
    if let Some(w) = window {
        for l in &mut cfg.layers {
            l.attention = AttentionKind::Sliding(w);
        }
    }
}

/// The layer kinds of `types` (`full_attention` / `sliding_attention`), sliding ones over `window`;
/// `ropes`: the rope index of each kind (full, sliding).
pub(crate) fn typed_layers(cfg: &mut ModelConfig, types: &[String], window: Option<usize>, ropes: (usize, usize), c: &HfConfig<'_>) -> Result<()> {
    for (l, t) in cfg.layers.iter_mut().zip(types) {
        *l = if t == "sliding_attention" {
            let w = window.ok_or_else(|| c.err("layer_types has sliding_attention layers but sliding_window is not set"))?;
            LayerConfig { attention: AttentionKind::Sliding(w), rope: ropes.1 }
        } else {
            LayerConfig { attention: AttentionKind::Full, rope: ropes.0 }
        };
    }
    Ok(())
}

/// The Llama defaults with the sizes read from GGUF metadata (llama.cpp's keys) and one rope.
pub(crate) fn gguf_base(m: &GgufMeta<'_>, arch: Architecture, style: RopeStyle) -> Result<ModelConfig> {
    let hidden = m.need_usize("embedding_length")?;
    let heads = m.need_usize("attention.head_count")?;
    let kv_heads = m.usize("attention.head_count_kv")?.unwrap_or(heads);
    if heads == 0 {
        return Err(m.err("invalid attention head counts"));
    }
    let head_dim = m.usize("attention.key_length")?.unwrap_or(hidden / heads);
    if let Some(v) = m.usize("attention.value_length")? {
        if v != head_dim {
            return Err(m.err(format!("{}.attention.value_length {v} differs from key_length {head_dim}: not supported", m.arch())));
        }
    }
    let layers = m.need_usize("block_count")?;
    let max_pos = m.usize("context_length")?.unwrap_or(4096);
    let rotary_dim = m.usize("rope.dimension_count")?.unwrap_or(head_dim);
    let mut scaling = gguf_rope_scaling(m, max_pos)?;
    // Llama 3.1 GGUFs carry their rope scaling precomputed: per-dimension divisors of the frequencies.
    if let Some(divisors) = (m.read_f32)("rope_freqs.weight") {
        if scaling != RopeScaling::None {
            return Err(m.err("rope_freqs.weight beside rope.scaling.type: not supported"));
        }
        scaling = RopeScaling::Divisors(divisors.into_iter().map(f64::from).collect());
    }
    let sizes = Sizes {
        hidden,
        intermediate: m.need_usize("feed_forward_length")?,
        layers,
        heads,
        kv_heads,
        head_dim,
        vocab: m.vocab_size()?,
        max_positions: max_pos,
    };
    let mut cfg = llama_defaults(arch, sizes, m.f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5), !m.has_output_weight);
    cfg.ropes = vec![RopeConfig { theta: m.f64("rope.freq_base")?.unwrap_or(10_000.0), scaling, rotary_dim, style }];
    let attention = match m.usize("attention.sliding_window")? {
        Some(w) if w > 0 => AttentionKind::Sliding(w),
        _ => AttentionKind::Full,
    };
    cfg.layers = vec![LayerConfig { attention, rope: 0 }; layers];
    Ok(cfg)
}

/// llama.cpp's `rope.scaling.*` keys. Unknown types are refused.
fn gguf_rope_scaling(m: &GgufMeta<'_>, max_pos: usize) -> Result<RopeScaling> {
    let orig = m.usize("rope.scaling.original_context_length")?;
    let factor = m.f64("rope.scaling.factor")?;
    Ok(match m.str("rope.scaling.type") {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear { factor: factor.ok_or_else(|| m.err("linear rope scaling without rope.scaling.factor"))? },
        Some("llama3") => RopeScaling::Llama3 {
            factor: factor.unwrap_or(8.0),
            low_freq_factor: m.f64("rope.scaling.low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: m.f64("rope.scaling.high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: orig.unwrap_or(8192),
        },
        Some("yarn") => {
            let factor = factor.ok_or_else(|| m.err("yarn rope scaling without rope.scaling.factor"))?;
            let mscale = if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig.unwrap_or(max_pos),
                beta_fast: m.f64("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: m.f64("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                attention_factor: m.f64("rope.scaling.attn_factor")?.unwrap_or(mscale),
                truncate: true,
            }
        }
        Some(other) => return Err(m.err(format!("{}.rope.scaling.type {other:?} is not supported; supported: none, linear, llama3, yarn", m.arch()))),
    })
}
