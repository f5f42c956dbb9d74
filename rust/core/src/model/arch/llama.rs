//! Llama 2/3/3.1 and Mistral: the base every other architecture starts from.

use super::{gguf_base, hf_base, single_rope, uniform_window};
use crate::error::Result;
use crate::model::config::{HfConfig, ModelConfig, MoeConfig, MoeNaming, Routing};
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;
use crate::model::rope::RopeStyle;

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = hf_base(c, arch, false)?;
    single_rope(c, &mut cfg, 10_000.0)?;
    // Llama's attention_bias puts a bias on o_proj too.
    let bias = c.bool("attention_bias")?.unwrap_or(false);
    cfg.attention_bias = bias;
    cfg.o_proj_bias = bias;
    c.refuse_unless("mlp_bias", &false.into())?;
    if arch == Architecture::Mistral {
        uniform_window(&mut cfg, c.usize("sliding_window")?);
    }
    Ok(cfg)
}

pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    // llama.cpp's converter permutes Q/K rows of llama-arch models so that rope rotates adjacent pairs.
    let mut cfg = gguf_base(m, arch, RopeStyle::Interleaved)?;
    // Mixtral GGUFs are llama files with experts (`ffn_{gate,up,down}_exps`, one [E, out, in] tensor each).
    if let Some(experts) = m.usize("expert_count")?.filter(|&n| n > 0) {
        cfg.architecture = Architecture::Mixtral;
        cfg.moe = Some(MoeConfig {
            num_experts: experts,
            top_k: m.need_usize("expert_used_count")?,
            norm_topk_prob: true,
            expert_intermediate: m.usize("expert_feed_forward_length")?.unwrap_or(cfg.intermediate_size),
            shared_expert_intermediate: None,
            sparse_layers: vec![true; cfg.num_hidden_layers],
            naming: MoeNaming::Mixtral,
            routing: Routing::SoftmaxTopK,
            clamped_swiglu: None,
        });
    }
    Ok(cfg)
}
