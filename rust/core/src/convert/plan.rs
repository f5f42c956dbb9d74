//! The parameters MLC's models declare, in their declaration order, and the HF tensors each is made of
//! (q/k/v and gate/up concatenated along the output rows, as MLC's loaders do).

use crate::model::config::{ModelConfig, QkNormKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A linear layer's or the embedding's `[out, in]` weight: quantized by 4-bit quantizations.
    Matrix,
    /// Norm weights and biases: always stored in the model dtype.
    Plain,
}

#[derive(Debug, Clone)]
pub struct MlcParam {
    /// MLC's name without the suffix (`model.layers.0.self_attn.qkv_proj`).
    pub name: String,
    /// `weight` or `bias` (quantized matrices become `q_weight` + `q_scale` instead).
    pub suffix: &'static str,
    pub hf_parts: Vec<String>,
    pub kind: ParamKind,
}

fn param(name: String, suffix: &'static str, hf_parts: Vec<String>, kind: ParamKind) -> MlcParam {
    MlcParam { name, suffix, hf_parts, kind }
}

fn same(name: &str, suffix: &'static str, kind: ParamKind) -> MlcParam {
    param(name.to_string(), suffix, vec![format!("{name}.{suffix}")], kind)
}

/// Every parameter of the MLC model for `cfg`. `has` says whether the checkpoint holds a tensor (a tied
/// checkpoint has no `lm_head.weight`).
pub fn mlc_params(cfg: &ModelConfig, has: impl Fn(&str) -> bool) -> Vec<MlcParam> {
    use ParamKind::{Matrix, Plain};
    let attn_fused = cfg.architecture.entry().mlc_fused_qkv;
    let mut out = vec![same("model.embed_tokens", "weight", Matrix)];
    for i in 0..cfg.num_hidden_layers {
        let attn = format!("model.layers.{i}.self_attn");
        let mlp = format!("model.layers.{i}.mlp");
        let qkv = |suffix: &str| ["q_proj", "k_proj", "v_proj"].iter().map(|m| format!("{attn}.{m}.{suffix}")).collect::<Vec<_>>();
        out.push(param(format!("{attn}.{attn_fused}"), "weight", qkv("weight"), Matrix));
        if cfg.attention_bias {
            out.push(param(format!("{attn}.{attn_fused}"), "bias", qkv("bias"), Plain));
        }
        out.push(same(&format!("{attn}.o_proj"), "weight", Matrix));
        if cfg.qk_norm != QkNormKind::None {
            out.push(same(&format!("{attn}.q_norm"), "weight", Plain));
            out.push(same(&format!("{attn}.k_norm"), "weight", Plain));
        }
        let gate_up = vec![format!("{mlp}.gate_proj.weight"), format!("{mlp}.up_proj.weight")];
        out.push(param(format!("{mlp}.gate_up_proj"), "weight", gate_up, Matrix));
        out.push(same(&format!("{mlp}.down_proj"), "weight", Matrix));
        out.push(same(&format!("model.layers.{i}.input_layernorm"), "weight", Plain));
        out.push(same(&format!("model.layers.{i}.post_attention_layernorm"), "weight", Plain));
    }
    out.push(same("model.norm", "weight", Plain));
    if !cfg.tie_word_embeddings && has("lm_head.weight") {
        out.push(same("lm_head", "weight", Matrix));
    }
    out
}

/// An EAGLE head's checkpoint: `fc` and decoder layers without the `model.` prefix.
pub fn is_eagle(has: impl Fn(&str) -> bool) -> bool {
    has("fc.weight") && has("layers.0.self_attn.q_proj.weight")
}

/// The parameters of MLC's `EagleForCasualLM`: the embedding (when the checkpoint has one), the layers
/// (the first without an input norm) and `fc`.
pub fn eagle_params(cfg: &ModelConfig, has: impl Fn(&str) -> bool) -> Vec<MlcParam> {
    use ParamKind::{Matrix, Plain};
    let mut out = Vec::new();
    if has("embed_tokens.weight") {
        out.push(same("embed_tokens", "weight", Matrix));
    }
    for i in 0..cfg.num_hidden_layers {
        let (attn, mlp) = (format!("layers.{i}.self_attn"), format!("layers.{i}.mlp"));
        let qkv = ["q_proj", "k_proj", "v_proj"].iter().map(|m| format!("{attn}.{m}.weight")).collect();
        out.push(param(format!("{attn}.qkv_proj"), "weight", qkv, Matrix));
        out.push(same(&format!("{attn}.o_proj"), "weight", Matrix));
        out.push(param(format!("{mlp}.gate_up_proj"), "weight", vec![format!("{mlp}.gate_proj.weight"), format!("{mlp}.up_proj.weight")], Matrix));
        out.push(same(&format!("{mlp}.down_proj"), "weight", Matrix));
        if i > 0 {
            out.push(same(&format!("layers.{i}.input_layernorm"), "weight", Plain));
        }
        out.push(same(&format!("layers.{i}.post_attention_layernorm"), "weight", Plain));
    }
    out.push(same("fc", "weight", Matrix));
    if has("fc.bias") {
        out.push(same("fc", "bias", Plain));
    }
    out
}
