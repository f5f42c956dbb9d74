//! Gemma 2 and Gemma 3 (text): norms around both branches applied as `1 + w`, gelu-tanh MLP, embeddings
//! scaled by sqrt(hidden), alternating sliding and full attention, `query_pre_attn_scalar`; Gemma 2 caps
//! attention and final logits, Gemma 3 has per-head q/k norms and a separate rope for its local layers.

use super::{gguf_base, hf_base, typed_layers};
use crate::error::Result;
use crate::model::config::{Activation, HfConfig, LayerConfig, ModelConfig, NormPlacement, QkNormKind};
use crate::model::config::AttentionKind;
use crate::model::gguf_meta::GgufMeta;
use crate::model::registry::Architecture;
use crate::model::rope::{RopeConfig, RopeScaling, RopeStyle};

pub fn from_hf(c: &HfConfig<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = hf_base(c, arch, true)?;
    // Gemma's default activation is gelu_pytorch_tanh (hidden_activation wins over hidden_act).
    cfg.activation = c.activation(Activation::GeluTanh)?;
    cfg.norms = NormPlacement::Sandwich;
    cfg.norm_plus_one = true;
    cfg.embedding_scale = Some((cfg.hidden_size as f64).sqrt());
    cfg.attention_bias = c.bool("attention_bias")?.unwrap_or(false);
    cfg.o_proj_bias = cfg.attention_bias;
    let scalar = c.f64("query_pre_attn_scalar")?.unwrap_or(cfg.head_dim as f64);
    cfg.attention_scale = 1.0 / scalar.sqrt();
    // transformers' default when the config leaves it out.
    let window = Some(c.usize("sliding_window")?.unwrap_or(4096));
    // google/gemma-2-* configs repeat the window as `sliding_window_size`.
    if let Some(w) = c.usize("sliding_window_size")? {
        if Some(w) != window {
            return Err(c.err(format!("sliding_window_size {w} disagrees with sliding_window {}", window.unwrap_or(0))));
        }
    }
    c.refuse_unless("use_bidirectional_attention", &false.into())?;
    let n = cfg.num_hidden_layers;
    if arch == Architecture::Gemma2 {
        // transformers' Gemma2Config defaults.
        cfg.attn_logit_softcap = c.f64_or("attn_logit_softcapping", Some(50.0))?;
        cfg.final_logit_softcap = c.f64_or("final_logit_softcapping", Some(30.0))?;
        cfg.ropes = vec![c.rope(None, "rope_theta", 10_000.0, true, cfg.head_dim, RopeStyle::Half)?];
        // transformers: even layers slide, odd layers attend fully.
        let types = c.layer_types(n, |i| if (i + 1) % 2 != 0 { "sliding_attention" } else { "full_attention" })?;
        typed_layers(&mut cfg, &types, window, (0, 0), c)?;
    } else {
        cfg.qk_norm = QkNormKind::PerHead;
        cfg.attn_logit_softcap = c.f64("attn_logit_softcapping")?;
        cfg.final_logit_softcap = c.f64("final_logit_softcapping")?;
        // transformers 5 keeps the pattern as `_sliding_window_pattern` beside `layer_types`.
        let pattern = match (c.usize("sliding_window_pattern")?, c.usize("_sliding_window_pattern")?) {
            (Some(a), Some(b)) if a != b => return Err(c.err(format!("sliding_window_pattern {a} disagrees with _sliding_window_pattern {b}"))),
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => 6,
        }
        .max(1);
        let types = c.layer_types(n, move |i| if (i + 1) % pattern != 0 { "sliding_attention" } else { "full_attention" })?;
        // Global layers: rope_theta with rope_scaling; local layers: rope_local_base_freq, unscaled.
        let full = c.rope(Some("full_attention"), "rope_theta", 1_000_000.0, true, cfg.head_dim, RopeStyle::Half)?;
        let local = c.rope(Some("sliding_attention"), "rope_local_base_freq", 10_000.0, false, cfg.head_dim, RopeStyle::Half)?;
        cfg.ropes = vec![full, local];
        typed_layers(&mut cfg, &types, window, (0, 1), c)?;
    }
    Ok(cfg)
}

pub fn from_gguf(m: &GgufMeta<'_>, arch: Architecture) -> Result<ModelConfig> {
    let mut cfg = gguf_base(m, arch, RopeStyle::Half)?;
    cfg.activation = Activation::GeluTanh;
    cfg.norms = NormPlacement::Sandwich;
    // llama.cpp's converter stores Gemma's norm weights with the 1 already added.
    cfg.norm_plus_one = false;
    cfg.embedding_scale = Some((cfg.hidden_size as f64).sqrt());
    let window = m.usize("attention.sliding_window")?;
    let n = cfg.num_hidden_layers;
    let slide = |w: Option<usize>, rope: usize| match w {
        Some(w) if w > 0 => LayerConfig { attention: AttentionKind::Sliding(w), rope },
        _ => LayerConfig { attention: AttentionKind::Full, rope: 0 },
    };
    if arch == Architecture::Gemma2 {
        cfg.attn_logit_softcap = m.f64("attn_logit_softcapping")?;
        cfg.final_logit_softcap = m.f64("final_logit_softcapping")?;
        // llama.cpp scales queries by 1/sqrt(head_dim), except Gemma 2 27B (46 layers) by 1/sqrt(hidden/heads),
        // which is what its query_pre_attn_scalar says; the GGUF carries no such key.
        if n == 46 {
            cfg.attention_scale = 1.0 / ((cfg.hidden_size / cfg.num_attention_heads) as f64).sqrt();
        }
        cfg.layers = (0..n).map(|i| if i % 2 == 0 { slide(window, 0) } else { slide(None, 0) }).collect();
    } else {
        cfg.qk_norm = QkNormKind::PerHead;
        let pattern = m.usize("attention.sliding_window_pattern")?.unwrap_or(6).max(1);
        let global = cfg.ropes[0].clone();
        // llama.cpp: the local layers' rope is unscaled, its base `rope.freq_base_swa` (default 10000).
        let local = RopeConfig { theta: m.f64("rope.freq_base_swa")?.unwrap_or(10_000.0), scaling: RopeScaling::None, ..global.clone() };
        cfg.ropes = vec![global, local];
        cfg.layers = (0..n).map(|i| if (i + 1) % pattern != 0 { slide(window, 1) } else { slide(None, 0) }).collect();
    }
    Ok(cfg)
}
