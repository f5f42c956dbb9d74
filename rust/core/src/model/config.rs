//! One configuration for the Llama family (Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3): the architectures
//! differ only in flags (QKV bias, q/k norm, rope scaling, tied embeddings), so one forward pass serves all.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// Which elements RoPE rotates together. HF checkpoints rotate the two halves of a head
/// (`rotate_half`); llama.cpp's converter permutes Q/K rows of llama-arch GGUFs so that adjacent
/// pairs are rotated instead, and we keep its layout rather than undoing the permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Half,
    Interleaved,
}

/// Llama 3.1's frequency-dependent rope scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rope_style: RopeStyle,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2: q/k/v projections carry a bias.
    pub attention_bias: bool,
    /// Qwen3: RMSNorm over each head of q and k before rope.
    pub qk_norm: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
}

fn arch_from_name(name: &str) -> Option<Architecture> {
    let n = name.to_ascii_lowercase();
    if n.starts_with("qwen3") && !n.contains("moe") {
        Some(Architecture::Qwen3)
    } else if n.starts_with("qwen2") && !n.contains("moe") && !n.contains("vl") {
        Some(Architecture::Qwen2)
    } else if n.starts_with("mistral") {
        Some(Architecture::Mistral)
    } else if n.starts_with("llama") && !n.starts_with("llama4") {
        Some(Architecture::Llama)
    } else {
        None
    }
}

fn parse_rope_scaling(v: &serde_json::Value, path: &str) -> Result<Option<Llama3RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "llama3" => {
            let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
            let (Some(factor), Some(low), Some(high), Some(orig)) = (
                f("factor"),
                f("low_freq_factor"),
                f("high_freq_factor"),
                f("original_max_position_embeddings"),
            ) else {
                return Err(EngineError::model_load(path, "rope_scaling llama3 is missing a field"));
            };
            Ok(Some(Llama3RopeScaling {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig as usize,
            }))
        }
        "default" | "" => Ok(None),
        other => Err(EngineError::model_load(path, format!("rope_scaling type {other:?} is not supported"))),
    }
}

impl ModelConfig {
    /// From an HF `config.json`.
    pub fn from_hf_json(text: &str, path: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| EngineError::model_load(path, format!("invalid config.json: {e}")))?;
        let names: Vec<&str> = c.model_type.iter().map(|s| s.as_str()).chain(c.architectures.iter().map(|s| s.as_str())).collect();
        let architecture = names.iter().find_map(|n| arch_from_name(n)).ok_or_else(|| {
            EngineError::model_load(path, format!("unsupported architecture {names:?}; supported: llama, mistral, qwen2, qwen3"))
        })?;
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 && c.head_dim.is_none() {
            return Err(EngineError::model_load(path, "num_attention_heads must divide hidden_size"));
        }
        let num_kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if num_kv == 0 || c.num_attention_heads % num_kv != 0 {
            return Err(EngineError::model_load(path, "num_key_value_heads must divide num_attention_heads"));
        }
        let rope_scaling = match &c.rope_scaling {
            Some(v) => parse_rope_scaling(v, path)?,
            None => None,
        };
        Ok(ModelConfig {
            architecture,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: num_kv,
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_style: RopeStyle::Half,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias: c.attention_bias.unwrap_or(architecture == Architecture::Qwen2),
            qk_norm: architecture == Architecture::Qwen3,
        })
    }

    /// From GGUF metadata (`general.architecture` and `<arch>.*` keys).
    pub fn from_gguf(md: &HashMap<String, gguf_file::Value>, has_output_weight: bool, path: &str) -> Result<Self> {
        let err = |m: String| EngineError::model_load(path, m);
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| err("GGUF has no general.architecture".into()))?
            .clone();
        let architecture = arch_from_name(&arch_name)
            .ok_or_else(|| err(format!("unsupported GGUF architecture {arch_name:?}; supported: llama, mistral, qwen2, qwen3")))?;
        let get = |k: &str| md.get(&format!("{arch_name}.{k}"));
        let get_usize = |k: &str| -> Result<usize> {
            let v = get(k).ok_or_else(|| err(format!("GGUF is missing {arch_name}.{k}")))?;
            v.to_u64().map(|x| x as usize).or_else(|_| v.to_u32().map(|x| x as usize)).map_err(|e| err(format!("{arch_name}.{k}: {e}")))
        };
        let get_f64 = |k: &str| get(k).and_then(|v| v.to_f32().ok().map(|x| x as f64).or_else(|| v.to_f64().ok()));
        let hidden = get_usize("embedding_length")?;
        let heads = get_usize("attention.head_count")?;
        let kv_heads = get_usize("attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(err("invalid attention head counts".into()));
        }
        let head_dim = get_usize("attention.key_length").unwrap_or(hidden / heads);
        let vocab_size = match get_usize("vocab_size") {
            Ok(v) => v,
            Err(_) => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok().map(|t| t.len()))
                .ok_or_else(|| err("GGUF has neither vocab_size nor tokenizer.ggml.tokens".into()))?,
        };
        let rope_scaling = match md.get(&format!("{arch_name}.rope.scaling.type")).and_then(|v| v.to_string().ok()) {
            Some(t) if t == "llama3" => Some(Llama3RopeScaling {
                factor: get_f64("rope.scaling.factor").unwrap_or(8.0),
                low_freq_factor: get_f64("rope.scaling.low_freq_factor").unwrap_or(1.0),
                high_freq_factor: get_f64("rope.scaling.high_freq_factor").unwrap_or(4.0),
                original_max_position_embeddings: get_usize("rope.scaling.original_context_length").unwrap_or(8192),
            }),
            _ => None,
        };
        Ok(ModelConfig {
            architecture,
            hidden_size: hidden,
            intermediate_size: get_usize("feed_forward_length")?,
            num_hidden_layers: get_usize("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rope_theta: get_f64("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            // llama.cpp permutes Q/K of llama-arch models only; qwen2/qwen3 use NeoX (half) rotation.
            rope_style: match architecture {
                Architecture::Llama | Architecture::Mistral => RopeStyle::Interleaved,
                Architecture::Qwen2 | Architecture::Qwen3 => RopeStyle::Half,
            },
            rms_norm_eps: get_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            vocab_size,
            max_position_embeddings: get_usize("context_length").unwrap_or(4096),
            tie_word_embeddings: !has_output_weight,
            attention_bias: architecture == Architecture::Qwen2,
            qk_norm: architecture == Architecture::Qwen3,
        })
    }

    /// Per-dimension inverse frequencies, with Llama 3.1 scaling applied when configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                match &self.rope_scaling {
                    None => f as f32,
                    Some(s) => {
                        let old = s.original_max_position_embeddings as f64;
                        let low_wavelen = old / s.low_freq_factor;
                        let high_wavelen = old / s.high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        };
                        scaled as f32
                    }
                }
            })
            .collect()
    }

    /// Bytes of K and V per token across all layers at `dtype_bytes` per element.
    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes
    }
}
