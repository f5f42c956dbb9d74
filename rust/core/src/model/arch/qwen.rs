//! Qwen2 / Qwen2.5 (q/k/v bias) and Qwen3 (per-head q/k norm); both may slide over a window on the
//! layers from `max_window_layers` on.

use super::{gguf_base, hf_base, single_rope, typed_layers};
use crate::error::Result;
use crate::model::config::{HfConfig, ModelConfig, QkNormKind};
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;
use crate::model::rope::RopeStyle;

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = hf_base(c, arch, false)?;
    single_rope(c, &mut cfg, 10_000.0)?;
    cfg.attention_bias = match arch {
        Architecture::Qwen2 => true,
        _ => c.bool("attention_bias")?.unwrap_or(false),
    };
    if arch == Architecture::Qwen3 {
        cfg.qk_norm = QkNormKind::PerHead;
    }
    c.refuse_unless("use_mrope", &false.into())?;
    // transformers: sliding_window applies only with use_sliding_window, to layers >= max_window_layers.
    let use_sliding = c.bool("use_sliding_window")?.unwrap_or(false);
    let window = c.usize("sliding_window")?.filter(|_| use_sliding);
    let first_sliding = c.usize("max_window_layers")?.unwrap_or(cfg.num_hidden_layers);
    let mut types = c.layer_types(cfg.num_hidden_layers, |i| if window.is_some() && i >= first_sliding { "sliding_attention" } else { "full_attention" })?;
    if window.is_none() {
        // transformers drops the window without use_sliding_window: "sliding" layers then attend fully.
        types.iter_mut().for_each(|t| *t = "full_attention".into());
    }
    typed_layers(&mut cfg, &types, window, (0, 0), c)?;
    Ok(cfg)
}

pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = gguf_base(m, arch, RopeStyle::Half)?;
    cfg.attention_bias = arch == Architecture::Qwen2;
    if arch == Architecture::Qwen3 {
        cfg.qk_norm = QkNormKind::PerHead;
    }
    Ok(cfg)
}
