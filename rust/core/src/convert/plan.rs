//! The parameters MLC's models declare, in their declaration order, and the HF tensors each is made of.
//! Both directions use this one table: `convert_weight` writes each parameter from its HF parts, and the
//! MLC loader serves each HF name from the rows of the parameter that holds it.
//!
//! Per architecture, from MLC LLM's `python/mlc_llm/model/<arch>/<arch>_model.py` (module names) and
//! `<arch>_loader.py` (how each parameter is built from the HF checkpoint):
//! - Llama, Mistral, Qwen2/3: `model.layers.N.self_attn.qkv_proj` (`c_attn` for Qwen), `mlp.gate_up_proj`,
//!   q/k/v and gate/up concatenated along the output rows.
//! - Gemma 2 (`gemma2_model.py`, `gemma_model.py`): the same fused names; every RMSNorm weight is stored as
//!   `1 + w` ("Gemma model adds 1 to the weights ... we add 1 to the weights here"); no `lm_head` (the
//!   embedding is always tied).
//! - Gemma 3 (`gemma3_model.py`, `gemma3_loader.py`): everything under `language_model.`; q/k/v stay separate
//!   (`q_proj`, `k_proj`, `v_proj`), gate/up fused; norms, q_norm and k_norm included, stored as `1 + w`.
//! - Phi-3 (`phi3_model.py`, `phi3_loader.py`): `transformer.embd`, `transformer.h.N.ln` (input norm),
//!   `mixer.qkv_proj`, `mixer.out_proj`, `mlp.gate_up_proj` (fused in the HF checkpoint already),
//!   `post_attention_layernorm`, `transformer.norm`, `lm_head`.
//! - Mixtral (`mixtral_model.py`, `mixtral_loader.py`): Llama attention; `model.layers.N.moe.gate` (router),
//!   `moe.e1_e3` `[E, 2I, H]` (per expert w1 rows then w3 rows) and `moe.e2` `[E, H, I]`.
//! - Qwen2-MoE / Qwen3-MoE (`qwen2_moe_model.py`, `qwen3_moe_model.py` and loaders): Qwen attention
//!   (`c_attn`); `mlp.shared_expert.gate_up_proj` / `down_proj` and `mlp.shared_expert_gate` (Qwen2-MoE),
//!   `mlp.gate`, `mlp.moe_gate_up_proj` `[E, 2I, H]` (gate rows then up rows) and `mlp.moe_down_proj`
//!   `[E, H, I]`. MLC's models make every layer sparse (they assert it): a checkpoint with dense layers is
//!   refused. Stacked experts are rows of one matrix (`[E * rows, cols]`, 4-bit groups run along a row),
//!   written with their 3-D shape.
//! - OLMo 2: MLC LLM has no OLMo 2 model (its `olmo` is OLMo 1, with parameter-free LayerNorms). We write
//!   the names its Llama-family models would use: fused `qkv_proj` / `gate_up_proj`, HF norm names
//!   (`q_norm`, `k_norm`, `post_attention_layernorm`, `post_feedforward_layernorm`).

use crate::error::{EngineError, Result};
use crate::model::config::{ModelConfig, MoeConfig, MoeNaming, NormPlacement, QkNormKind};
use crate::model::registry::Architecture;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A linear layer's or the embedding's `[out, in]` weight: quantized by 4-bit quantizations.
    Matrix,
    /// Norm weights and biases: always stored in the model dtype.
    Plain,
}

/// One HF tensor inside an MLC parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfPart {
    pub name: String,
    /// Its rows in the MLC parameter (`start`, `len`); `None` when it is the whole parameter.
    pub rows: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct MlcParam {
    /// MLC's name without the suffix (`model.layers.0.self_attn.qkv_proj`).
    pub name: String,
    /// `weight` or `bias` (quantized matrices become `q_weight` + `q_scale` instead).
    pub suffix: &'static str,
    /// Concatenated along the output rows, in this order.
    pub hf_parts: Vec<HfPart>,
    pub kind: ParamKind,
    /// Stored as `1 + w` (Gemma's norms).
    pub plus_one: bool,
    /// The experts' matrices stacked (`[experts, rows / experts, cols]` on disk; rows of one matrix here).
    pub experts: Option<usize>,
}

/// Where an HF tensor is stored in an MLC directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The MLC parameter without its suffix.
    pub name: String,
    pub suffix: &'static str,
    /// Its rows in that parameter; `None`: all of it.
    pub rows: Option<(usize, usize)>,
}

/// HF name -> where `params` store it.
pub fn locations(params: &[MlcParam]) -> HashMap<String, Location> {
    params
        .iter()
        .flat_map(|p| p.hf_parts.iter().map(move |h| (h.name.clone(), Location { name: p.name.clone(), suffix: p.suffix, rows: h.rows })))
        .collect()
}

/// MLC's module names of one architecture.
struct Naming {
    /// What `layers`, the embedding and the final norm hang off.
    root: &'static str,
    layers: &'static str,
    embed: &'static str,
    attn: &'static str,
    /// The fused q/k/v projection; `None`: q_proj, k_proj, v_proj kept separate.
    qkv: Option<&'static str>,
    o_proj: &'static str,
    input_norm: &'static str,
    /// The input norm is declared before the attention (Phi-3's `ln`), not after the MLP.
    input_norm_first: bool,
    /// Norm weights are stored as `1 + w`.
    plus_one: bool,
    /// The model has an `lm_head` when the embedding is not tied (Gemma never has one).
    lm_head: bool,
}

const LLAMA: Naming = Naming {
    root: "model",
    layers: "layers",
    embed: "embed_tokens",
    attn: "self_attn",
    qkv: Some("qkv_proj"),
    o_proj: "o_proj",
    input_norm: "input_layernorm",
    input_norm_first: false,
    plus_one: false,
    lm_head: true,
};

fn naming(arch: Architecture) -> Naming {
    match arch {
        // gpt-oss has no MLC layout: check_representable refuses it before any naming is used.
        Architecture::Llama | Architecture::Mistral | Architecture::Olmo2 | Architecture::Mixtral | Architecture::GptOss => LLAMA,
        Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Qwen2Moe | Architecture::Qwen3Moe => Naming { qkv: Some("c_attn"), ..LLAMA },
        Architecture::Gemma2 => Naming { plus_one: true, lm_head: false, ..LLAMA },
        Architecture::Gemma3 => Naming { root: "language_model.model", qkv: None, plus_one: true, lm_head: false, ..LLAMA },
        Architecture::Phi3 => Naming {
            root: "transformer",
            layers: "h",
            embed: "embd",
            attn: "mixer",
            o_proj: "out_proj",
            input_norm: "ln",
            input_norm_first: true,
            ..LLAMA
        },
    }
}

fn part(name: String) -> HfPart {
    HfPart { name, rows: None }
}

/// Parts laid out one after another: `(name, rows)` -> row ranges.
fn stacked(parts: Vec<(String, usize)>) -> Vec<HfPart> {
    let mut start = 0;
    parts
        .into_iter()
        .map(|(name, len)| {
            let p = HfPart { name, rows: Some((start, len)) };
            start += len;
            p
        })
        .collect()
}

fn param(name: String, suffix: &'static str, hf_parts: Vec<HfPart>, kind: ParamKind, plus_one: bool) -> MlcParam {
    MlcParam { name, suffix, hf_parts, kind, plus_one, experts: None }
}

/// The experts' matrices of one layer stacked as MLC's `MixtralExperts` holds them: for each expert its
/// `projs` (HF suffixes, `rows` each) one after another.
fn experts(name: String, hf_expert: impl Fn(usize, &str) -> String, projs: &[&str], rows: usize, count: usize) -> MlcParam {
    let parts = (0..count).flat_map(|e| projs.iter().map(move |p| (e, *p))).map(|(e, p)| (hf_expert(e, p), rows)).collect();
    MlcParam { name, suffix: "weight", hf_parts: stacked(parts), kind: ParamKind::Matrix, plus_one: false, experts: Some(count) }
}

/// Layer `hf`'s mixture, in MLC's declaration order.
fn moe_params(cfg: &ModelConfig, m: &MoeConfig, hf: &str, mlc: &str) -> Vec<MlcParam> {
    let (h, i, e) = (cfg.hidden_size, m.expert_intermediate, m.num_experts);
    match m.naming {
        MoeNaming::Mixtral => {
            let x = |e: usize, p: &str| format!("{hf}.block_sparse_moe.experts.{e}.{p}.weight");
            vec![
                param(format!("{mlc}.moe.gate"), "weight", vec![part(format!("{hf}.block_sparse_moe.gate.weight"))], ParamKind::Matrix, false),
                experts(format!("{mlc}.moe.e1_e3"), x, &["w1", "w3"], i, e),
                experts(format!("{mlc}.moe.e2"), x, &["w2"], h, e),
            ]
        }
        MoeNaming::Qwen => {
            let x = |e: usize, p: &str| format!("{hf}.mlp.experts.{e}.{p}.weight");
            let mut out = Vec::new();
            if let Some(s) = m.shared_expert_intermediate {
                let shared = stacked(vec![(format!("{hf}.mlp.shared_expert.gate_proj.weight"), s), (format!("{hf}.mlp.shared_expert.up_proj.weight"), s)]);
                out.push(param(format!("{mlc}.mlp.shared_expert.gate_up_proj"), "weight", shared, ParamKind::Matrix, false));
                out.push(same_at(&format!("{mlc}.mlp.shared_expert.down_proj"), &format!("{hf}.mlp.shared_expert.down_proj")));
                out.push(same_at(&format!("{mlc}.mlp.shared_expert_gate"), &format!("{hf}.mlp.shared_expert_gate")));
            }
            out.push(same_at(&format!("{mlc}.mlp.gate"), &format!("{hf}.mlp.gate")));
            out.push(experts(format!("{mlc}.mlp.moe_gate_up_proj"), x, &["gate_proj", "up_proj"], i, e));
            out.push(experts(format!("{mlc}.mlp.moe_down_proj"), x, &["down_proj"], h, e));
            out
        }
        // Other mixtures have no MLC layout; check_representable refuses them first.
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

/// A matrix stored whole under its MLC name, made of the HF weight at `hf`.
fn same_at(mlc: &str, hf: &str) -> MlcParam {
    param(mlc.to_string(), "weight", vec![part(format!("{hf}.weight"))], ParamKind::Matrix, false)
}

/// An MLC parameter made of one HF tensor of the same name.
fn same(name: &str, suffix: &'static str, kind: ParamKind) -> MlcParam {
    param(name.to_string(), suffix, vec![part(format!("{name}.{suffix}"))], kind, false)
}

/// What MLC's model of this architecture cannot represent, named (its config class refuses it, or its
/// model would silently compute something else).
pub fn check_representable(cfg: &ModelConfig) -> Result<()> {
    let n = naming(cfg.architecture);
    let refuse = |m: String| Err(EngineError::Unsupported(format!("{} in MLC's format: {m}", cfg.architecture.name())));
    if cfg.moe.as_ref().is_some_and(|m| !matches!(m.naming, MoeNaming::Mixtral | MoeNaming::Qwen)) {
        return refuse("MLC has no layout for this mixture of experts".into());
    }
    if cfg.moe.as_ref().is_some_and(|m| m.sparse_layers.iter().any(|&s| !s)) {
        return refuse("MLC's mixture-of-experts models make every layer sparse, but this checkpoint has dense layers (mlp_only_layers / decoder_sparse_step)".into());
    }
    if !n.lm_head && !cfg.tie_word_embeddings {
        return refuse("MLC's model ties lm_head to the embeddings, but this checkpoint sets tie_word_embeddings false".into());
    }
    let gemma_or_phi = matches!(cfg.architecture, Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Phi3);
    if gemma_or_phi && (cfg.attention_bias || cfg.o_proj_bias) {
        return refuse("MLC's model has no attention biases, but this checkpoint sets attention_bias".into());
    }
    if n.qkv.is_none() && cfg.fused_projections {
        return refuse("MLC's model keeps q_proj, k_proj and v_proj apart, but this checkpoint fuses them".into());
    }
    Ok(())
}

/// Every parameter of the MLC model for `cfg`, in MLC's declaration order. `has` says whether the
/// checkpoint holds a tensor (a tied checkpoint has no `lm_head.weight`).
pub fn mlc_params(cfg: &ModelConfig, has: impl Fn(&str) -> bool) -> Vec<MlcParam> {
    let n = naming(cfg.architecture);
    let mut out = vec![param(format!("{}.{}", n.root, n.embed), "weight", vec![part("model.embed_tokens.weight".into())], ParamKind::Matrix, false)];
    for i in 0..cfg.num_hidden_layers {
        out.extend(layer_params(cfg, &n, i));
    }
    out.push(norm(&n, format!("{}.norm", n.root), "model.norm.weight".into()));
    if n.lm_head && !cfg.tie_word_embeddings && has("lm_head.weight") {
        out.push(same("lm_head", "weight", ParamKind::Matrix));
    }
    out
}

fn norm(n: &Naming, mlc: String, hf: String) -> MlcParam {
    param(mlc, "weight", vec![part(hf)], ParamKind::Plain, n.plus_one)
}

/// Decoder layer `i`: its input norm (first for Phi-3), attention, MLP, then the other norms.
fn layer_params(cfg: &ModelConfig, n: &Naming, i: usize) -> Vec<MlcParam> {
    let (hf, mlc) = (format!("model.layers.{i}"), format!("{}.{}.{i}", n.root, n.layers));
    let ffn = cfg.intermediate_size;
    let norm_at = |name: &str| norm(n, format!("{mlc}.{name}"), format!("{hf}.{name}.weight"));
    let input_norm = (cfg.norms != NormPlacement::Post).then(|| norm(n, format!("{mlc}.{}", n.input_norm), format!("{hf}.input_layernorm.weight")));
    let mut out = Vec::new();
    if n.input_norm_first {
        out.extend(input_norm.clone());
    }
    out.extend(attention_params(cfg, n, &format!("{hf}.self_attn"), &format!("{mlc}.{}", n.attn)));
    match &cfg.moe {
        Some(m) if m.sparse_layers.get(i).copied().unwrap_or(false) => out.extend(moe_params(cfg, m, &hf, &mlc)),
        _ => {
            let gate_up = if cfg.fused_projections {
                vec![part(format!("{hf}.mlp.gate_up_proj.weight"))]
            } else {
                stacked(vec![(format!("{hf}.mlp.gate_proj.weight"), ffn), (format!("{hf}.mlp.up_proj.weight"), ffn)])
            };
            out.push(param(format!("{mlc}.mlp.gate_up_proj"), "weight", gate_up, ParamKind::Matrix, false));
            out.push(param(format!("{mlc}.mlp.down_proj"), "weight", vec![part(format!("{hf}.mlp.down_proj.weight"))], ParamKind::Matrix, false));
        }
    }
    if !n.input_norm_first {
        out.extend(input_norm);
    }
    out.extend(match cfg.norms {
        NormPlacement::Pre => vec![norm_at("post_attention_layernorm")],
        NormPlacement::Sandwich => ["post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"].map(norm_at).to_vec(),
        NormPlacement::Post => ["post_attention_layernorm", "post_feedforward_layernorm"].map(norm_at).to_vec(),
    });
    out
}

/// q/k/v (fused or apart, with their biases), o_proj and the q/k norms of one layer.
fn attention_params(cfg: &ModelConfig, n: &Naming, hf: &str, mlc: &str) -> Vec<MlcParam> {
    use ParamKind::{Matrix, Plain};
    let (q_rows, kv_rows) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    let mut out = Vec::new();
    let suffixes: &[(&'static str, ParamKind)] = if cfg.attention_bias { &[("weight", Matrix), ("bias", Plain)] } else { &[("weight", Matrix)] };
    for &(suffix, kind) in suffixes {
        match (n.qkv, cfg.fused_projections) {
            (Some(fused), true) => out.push(param(format!("{mlc}.{fused}"), suffix, vec![part(format!("{hf}.qkv_proj.{suffix}"))], kind, false)),
            (Some(fused), false) => {
                let parts = [("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)].map(|(m, r)| (format!("{hf}.{m}.{suffix}"), r));
                out.push(param(format!("{mlc}.{fused}"), suffix, stacked(parts.to_vec()), kind, false));
            }
            // (check_representable refuses a fused checkpoint for a model that keeps q/k/v apart)
            (None, _) => {
                for m in ["q_proj", "k_proj", "v_proj"] {
                    out.push(param(format!("{mlc}.{m}"), suffix, vec![part(format!("{hf}.{m}.{suffix}"))], kind, false));
                }
            }
        }
    }
    out.push(param(format!("{mlc}.{}", n.o_proj), "weight", vec![part(format!("{hf}.o_proj.weight"))], Matrix, false));
    if cfg.o_proj_bias {
        out.push(param(format!("{mlc}.{}", n.o_proj), "bias", vec![part(format!("{hf}.o_proj.bias"))], Plain, false));
    }
    if cfg.qk_norm != QkNormKind::None {
        out.push(norm(n, format!("{mlc}.q_norm"), format!("{hf}.q_norm.weight")));
        out.push(norm(n, format!("{mlc}.k_norm"), format!("{hf}.k_norm.weight")));
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
    let (q_rows, kv_rows, ffn) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size);
    let mut out = Vec::new();
    if has("embed_tokens.weight") {
        out.push(same("embed_tokens", "weight", Matrix));
    }
    for i in 0..cfg.num_hidden_layers {
        let (attn, mlp) = (format!("layers.{i}.self_attn"), format!("layers.{i}.mlp"));
        let qkv = [("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)].map(|(m, r)| (format!("{attn}.{m}.weight"), r));
        out.push(param(format!("{attn}.qkv_proj"), "weight", stacked(qkv.to_vec()), Matrix, false));
        out.push(same(&format!("{attn}.o_proj"), "weight", Matrix));
        let gate_up = stacked(vec![(format!("{mlp}.gate_proj.weight"), ffn), (format!("{mlp}.up_proj.weight"), ffn)]);
        out.push(param(format!("{mlp}.gate_up_proj"), "weight", gate_up, Matrix, false));
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
