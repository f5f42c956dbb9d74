//! Mixture-of-experts architectures: Mixtral (Llama attention, top-k of `num_local_experts`, always
//! renormalized), Qwen2-MoE (Qwen2 attention, a shared expert with a sigmoid gate) and Qwen3-MoE
//! (Qwen3 attention). What differs from their dense siblings is only the MLP ([`MoeConfig`]).

use super::{llama, qwen};
use crate::error::Result;
use crate::model::config::{HfConfig, ModelConfig, MoeConfig, MoeNaming, Routing};
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    if arch == Architecture::Qwen2Moe && c.bool("use_sliding_window")?.unwrap_or(false) && c.get("layer_types").is_none() {
        // Qwen2-MoE's default layer types (every other layer below max_window_layers) differ from Qwen2's.
        return Err(c.err("use_sliding_window without layer_types is not supported for qwen2_moe"));
    }
    let mut cfg = match arch {
        Architecture::Mixtral => llama::from_hf(c, Architecture::Mistral)?,
        Architecture::Qwen2Moe => qwen::from_hf(c, Architecture::Qwen2)?,
        _ => qwen::from_hf(c, Architecture::Qwen3)?,
    };
    cfg.architecture = arch;
    if arch == Architecture::Qwen2Moe {
        // Qwen2-MoE names Qwen2's q/k/v bias `qkv_bias` (true by default).
        cfg.attention_bias = c.bool("qkv_bias")?.unwrap_or(true);
    }
    let layers = cfg.num_hidden_layers;
    cfg.moe = Some(match arch {
        Architecture::Mixtral => MoeConfig {
            num_experts: c.need_usize("num_local_experts")?,
            top_k: c.usize("num_experts_per_tok")?.unwrap_or(2),
            norm_topk_prob: true,
            expert_intermediate: cfg.intermediate_size,
            shared_expert_intermediate: None,
            sparse_layers: vec![true; layers],
            naming: MoeNaming::Mixtral,
            routing: Routing::SoftmaxTopK,
            clamped_swiglu: None,
        },
        _ => {
            // transformers 5 saves Qwen3-MoE's expert count as num_local_experts, published checkpoints
            // as num_experts; both must agree when both are present.
            let experts = match (c.usize("num_experts")?, c.usize("num_local_experts")?) {
                (Some(a), Some(b)) if a != b => return Err(c.err(format!("num_experts {a} and num_local_experts {b} disagree"))),
                (Some(a), _) | (None, Some(a)) => a,
                (None, None) => return Err(c.err("config.json has no num_experts")),
            };
            let step = c.usize("decoder_sparse_step")?.unwrap_or(1);
            if step == 0 {
                return Err(c.err("decoder_sparse_step must be at least 1"));
            }
            let dense_only = mlp_only_layers(c)?;
            MoeConfig {
                num_experts: experts,
                top_k: c.need_usize("num_experts_per_tok")?,
                norm_topk_prob: c.bool("norm_topk_prob")?.unwrap_or(false),
                expert_intermediate: c.need_usize("moe_intermediate_size")?,
                shared_expert_intermediate: match arch {
                    Architecture::Qwen2Moe => Some(c.need_usize("shared_expert_intermediate_size")?),
                    _ => None,
                },
                // transformers: sparse iff not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
                sparse_layers: (0..layers).map(|i| !dense_only.contains(&i) && (i + 1) % step == 0).collect(),
                naming: MoeNaming::Qwen,
                routing: Routing::SoftmaxTopK,
                clamped_swiglu: None,
            }
        }
    });
    Ok(cfg)
}

/// Qwen's `mlp_only_layers`: layer indices whose MLP stays dense.
fn mlp_only_layers(c: &HfConfig<'_>) -> Result<Vec<usize>> {
    let Some(v) = c.get("mlp_only_layers") else { return Ok(Vec::new()) };
    let list = v.as_array().ok_or_else(|| c.err(format!("mlp_only_layers must be a list of layer indices, found {v}")))?;
    list.iter()
        .map(|x| x.as_u64().map(|i| i as usize).ok_or_else(|| c.err(format!("mlp_only_layers holds {x}, not a layer index"))))
        .collect()
}

/// llama.cpp's `qwen2moe` / `qwen3moe` files (Mixtral GGUFs are `llama` files: arch/llama.rs). Every layer
/// is sparse there; the top-k is renormalized for qwen3moe and not for qwen2moe unless
/// `expert_weights_norm` says otherwise, as llama.cpp decides.
pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = qwen::from_gguf(m, if arch == Architecture::Qwen2Moe { Architecture::Qwen2 } else { Architecture::Qwen3 })?;
    cfg.architecture = arch;
    // 1 = softmax, the only gating these architectures use (2 = sigmoid, DeepSeek V3's).
    if let Some(g) = m.usize("expert_gating_func")?.filter(|&g| g != 1) {
        return Err(m.err(format!("{}.expert_gating_func {g} is not supported (softmax = 1 only)", m.arch())));
    }
    cfg.moe = Some(MoeConfig {
        num_experts: m.need_usize("expert_count")?,
        top_k: m.need_usize("expert_used_count")?,
        norm_topk_prob: m.bool("expert_weights_norm")?.unwrap_or(arch == Architecture::Qwen3Moe),
        expert_intermediate: m.need_usize("expert_feed_forward_length")?,
        shared_expert_intermediate: match arch {
            Architecture::Qwen2Moe => Some(m.need_usize("expert_shared_feed_forward_length")?),
            _ => None,
        },
        sparse_layers: vec![true; cfg.num_hidden_layers],
        naming: MoeNaming::Qwen,
        routing: Routing::SoftmaxTopK,
        clamped_swiglu: None,
    });
    Ok(cfg)
}
