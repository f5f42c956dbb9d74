//! Phi-3 / Phi-3.5 / Phi-4 (mini): fused qkv_proj and gate_up_proj, longrope for the long-context
//! variants, partial rotary (Phi-4-mini), one sliding window on every layer (Phi-3-mini-4k).

use super::{gguf_base, hf_base, single_rope, uniform_window};
use crate::error::Result;
use crate::model::config::{HfConfig, ModelConfig};
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;
use crate::model::rope::{RopeScaling, RopeStyle};

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = hf_base(c, arch, false)?;
    single_rope(c, &mut cfg, 10_000.0)?;
    cfg.fused_projections = true;
    let bias = c.bool("attention_bias")?.unwrap_or(false);
    cfg.attention_bias = bias;
    cfg.o_proj_bias = bias;
    uniform_window(&mut cfg, c.usize("sliding_window")?);
    // Phi-4-mini's config.json carries these for its original remote code; at these values they change
    // nothing (every layer full attention, no interpolation), and transformers does not read them.
    c.refuse_unless("full_attn_mod", &1.into())?;
    c.refuse_unless("interpolate_factor", &1.into())?;
    c.refuse_unless("lm_head_bias", &false.into())?;
    Ok(cfg)
}

pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = gguf_base(m, arch, RopeStyle::Half)?;
    cfg.fused_projections = true;
    // llama.cpp keeps longrope's factors as tensors and its attention factor in rope.scaling.attn_factor.
    let long = (m.read_f32)("rope_factors_long.weight");
    let short = (m.read_f32)("rope_factors_short.weight");
    if let (Some(long), Some(short)) = (long, short) {
        let original = m.need_usize("rope.scaling.original_context_length")?;
        let scale = cfg.max_position_embeddings as f64 / original as f64;
        let attention_factor = match m.f64("rope.scaling.attn_factor")? {
            Some(a) => a,
            None if scale <= 1.0 => 1.0,
            None => (1.0 + scale.ln() / (original as f64).ln()).sqrt(),
        };
        cfg.ropes[0].scaling = RopeScaling::LongRope {
            short: short.into_iter().map(f64::from).collect(),
            long: long.into_iter().map(f64::from).collect(),
            original_max_position_embeddings: original,
            attention_factor,
        };
    }
    Ok(cfg)
}
