//! OLMo 2: norms on the branch outputs only, q/k RMSNorm over the whole projection.

use super::{gguf_base, hf_base, single_rope};
use crate::error::Result;
use crate::model::config::{HfConfig, ModelConfig, NormPlacement, QkNormKind};
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;
use crate::model::rope::RopeStyle;

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = hf_base(c, arch, false)?;
    single_rope(c, &mut cfg, 10_000.0)?;
    let bias = c.bool("attention_bias")?.unwrap_or(false);
    cfg.attention_bias = bias;
    cfg.o_proj_bias = bias;
    cfg.norms = NormPlacement::Post;
    cfg.qk_norm = QkNormKind::Whole;
    Ok(cfg)
}

pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = gguf_base(m, arch, RopeStyle::Half)?;
    cfg.norms = NormPlacement::Post;
    cfg.qk_norm = QkNormKind::Whole;
    Ok(cfg)
}
