//! gpt-oss (`GptOssForCausalLM`): Llama-shaped attention with biases on q/k/v/o and a learned sink logit
//! per head, layers alternating a sliding window and full attention, YaRN rope, and a mixture of experts
//! whose router has a bias, whose softmax runs over the top `k` logits only, and whose experts (fused
//! 3D tensors with biases) apply a clamped SwiGLU. As transformers 5 reads `GptOssConfig`.

use super::{gguf_base, hf_base, single_rope, typed_layers};
use crate::error::Result;
use crate::model::config::{AttentionKind, ClampedSwiglu, HfConfig, LayerConfig, ModelConfig, MoeConfig, MoeNaming, Routing};
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;
use crate::model::rope::{RopeConfig, RopeStyle};

/// `GptOssConfig`'s defaults where a key is absent.
const DEFAULT_THETA: f64 = 150_000.0;
const DEFAULT_WINDOW: f64 = 128.0;
const DEFAULT_TOP_K: usize = 4;
const DEFAULT_ALPHA: f64 = 1.702;
const DEFAULT_LIMIT: f64 = 7.0;

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    refuse_quantization(c)?;
    // GptOssConfig defaults these sizes to gpt-oss-120b's (head_dim 64, 8 kv heads), not to what Llama
    // derives; a config that leaves them out is refused rather than read as another model.
    for k in ["head_dim", "num_key_value_heads"] {
        if c.get(k).is_none() {
            return Err(c.err(format!("config.json has no {k} (gpt_oss defaults it to gpt-oss-120b's size)")));
        }
    }
    // Without either, GptOssConfig substitutes its own yarn scaling (factor 32 over 4096 positions).
    if c.get("rope_parameters").is_none() && c.get("rope_scaling").is_none() {
        return Err(c.err("config.json has neither rope_parameters nor rope_scaling (gpt_oss would apply its default yarn scaling)"));
    }
    let mut cfg = hf_base(c, arch, false)?;
    cfg.rms_norm_eps = c.f64("rms_norm_eps")?.unwrap_or(1e-5);
    single_rope(c, &mut cfg, DEFAULT_THETA)?;
    // attention_bias covers o_proj too.
    let bias = c.bool("attention_bias")?.unwrap_or(true);
    (cfg.attention_bias, cfg.o_proj_bias) = (bias, bias);
    cfg.attention_sinks = true;
    let window = match c.f64_or("sliding_window", Some(DEFAULT_WINDOW))? {
        Some(w) if w >= 1.0 && w.fract() == 0.0 && w <= crate::model::config::MAX_SIZE as f64 => Some(w as usize),
        Some(w) => return Err(c.err(format!("sliding_window = {w} must be a positive integer"))),
        None => None,
    };
    // GptOssConfig's default: even layers slide, odd layers attend fully.
    let types = c.layer_types(cfg.num_hidden_layers, |i| if i % 2 == 0 { "sliding_attention" } else { "full_attention" })?;
    typed_layers(&mut cfg, &types, window, (0, 0), c)?;
    // openai's own keys beside transformers' (the pretrained length, the expert count per token):
    // transformers reads neither, so they cannot change its math.
    c.get("initial_context_length");
    c.get("experts_per_token");
    let experts = match (c.usize("num_local_experts")?, c.usize("num_experts")?) {
        (Some(a), Some(b)) if a != b => return Err(c.err(format!("num_local_experts {a} and num_experts {b} disagree"))),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(c.err("config.json has no num_local_experts")),
    };
    let number = |k: &str, default: f64| -> Result<f64> {
        c.f64_or(k, Some(default))?.ok_or_else(|| c.err(format!("{k} must be a number, found null")))
    };
    let top_k = c.usize("num_experts_per_tok")?.unwrap_or(DEFAULT_TOP_K);
    let act = ClampedSwiglu { alpha: number("swiglu_alpha", DEFAULT_ALPHA)?, limit: number("swiglu_limit", DEFAULT_LIMIT)? };
    cfg.moe = Some(moe(&cfg, experts, top_k, act));
    Ok(cfg)
}

/// The published gpt-oss checkpoints keep their experts in MXFP4 (`quant_method: "mxfp4"`): read, and
/// dequantized at load by the safetensors reader (`*_blocks` / `*_scales`, quant/mxfp4.rs). Reading the
/// key here takes it off `HfConfig::finish`'s list, so any other quantization is refused here.
fn refuse_quantization(c: &HfConfig<'_>) -> Result<()> {
    let Some(q) = c.get("quantization_config") else { return Ok(()) };
    if q.as_object().is_some_and(|o| o.is_empty()) || q.as_bool() == Some(false) {
        return Ok(());
    }
    match q.get("quant_method").and_then(|m| m.as_str()) {
        Some("mxfp4") => match q.as_object().and_then(|o| o.keys().find(|k| !["quant_method", "modules_to_not_convert", "dequantize"].contains(&k.as_str()))) {
            Some(k) => Err(c.err(format!("config key \"quantization_config\": key {k:?} of quant_method \"mxfp4\" is not supported"))),
            None => Ok(()),
        },
        _ => Err(c.err(format!("config key \"quantization_config\" ({q}) is not supported"))),
    }
}

/// llama.cpp's `gpt-oss` files, as its `llama_model_openai_moe` reads them: NEOX rope (YaRN from
/// `rope.scaling.*`, correction range rounded outward), layer `i` sliding over `attention.sliding_window`
/// iff `i % pattern < pattern - 1` (`attention.sliding_window_pattern`, default 2: even layers), the
/// sliding layers' rope base `rope.freq_base_swa` (default: the other layers'), queries scaled by
/// 1/sqrt(rope dims), biases on q/k/v/o and sinks, and every layer a mixture routed by a softmax over the
/// top `expert_used_count` logits.
pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = gguf_base(m, arch, RopeStyle::Half)?;
    // llama.cpp scales by 1/sqrt(n_rot); partial rotation would change that scale too.
    if cfg.ropes[0].rotary_dim != cfg.head_dim {
        return Err(m.err(format!("{}.rope.dimension_count {} differs from the head size {}: not supported", m.arch(), cfg.ropes[0].rotary_dim, cfg.head_dim)));
    }
    let window = match m.need_usize("attention.sliding_window")? {
        0 => return Err(m.err(format!("{}.attention.sliding_window must be at least 1", m.arch()))),
        w => w,
    };
    // A per-layer array of flags is llama.cpp's other form of this key: refused by name (not an integer).
    let pattern = m.usize("attention.sliding_window_pattern")?.unwrap_or(2);
    let sliding_rope = match m.f64("rope.freq_base_swa")? {
        Some(theta) if theta != cfg.ropes[0].theta => {
            cfg.ropes.push(RopeConfig { theta, ..cfg.ropes[0].clone() });
            1
        }
        _ => 0,
    };
    cfg.layers = (0..cfg.num_hidden_layers)
        .map(|i| match pattern == 0 || i % pattern < pattern - 1 {
            true => LayerConfig { attention: AttentionKind::Sliding(window), rope: sliding_rope },
            false => LayerConfig { attention: AttentionKind::Full, rope: 0 },
        })
        .collect();
    (cfg.attention_bias, cfg.o_proj_bias, cfg.attention_sinks) = (true, true, true);
    // llama.cpp sizes the experts by expert_feed_forward_length; feed_forward_length is not used.
    cfg.intermediate_size = m.need_usize("expert_feed_forward_length")?;
    // The SwiGLU constants are built into llama.cpp's SwiGLU-OAI (no GGUF key): gpt-oss's published values.
    let act = ClampedSwiglu { alpha: DEFAULT_ALPHA, limit: DEFAULT_LIMIT };
    cfg.moe = Some(moe(&cfg, m.need_usize("expert_count")?, m.need_usize("expert_used_count")?, act));
    Ok(cfg)
}

/// gpt-oss's experts in every layer: top `top_k` of `experts`, softmax over the chosen logits (which
/// already sums to 1, so no renormalization), each a clamped SwiGLU of `cfg.intermediate_size`.
fn moe(cfg: &ModelConfig, experts: usize, top_k: usize, act: ClampedSwiglu) -> MoeConfig {
    MoeConfig {
        num_experts: experts,
        top_k,
        norm_topk_prob: false,
        expert_intermediate: cfg.intermediate_size,
        shared_expert_intermediate: None,
        sparse_layers: vec![true; cfg.num_hidden_layers],
        naming: MoeNaming::GptOss,
        routing: Routing::TopKSoftmax,
        clamped_swiglu: Some(act),
    }
}
