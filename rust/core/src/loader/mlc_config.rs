//! `mlc-chat-config.json`: the model's architecture (`model_type` + `model_config`, HF-like but with MLC's
//! names), the quantization of its weights, the conversation template and sampling defaults.

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::registry::Architecture;
use crate::quant::group4::ScaleType;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

pub const CHAT_CONFIG: &str = "mlc-chat-config.json";

/// Fields of MLC's `model_config` that size the compiled engine or shard it; none changes the math.
const MLC_SIZING_KEYS: &[&str] = &[
    "context_window_size", "prefill_chunk_size", "tensor_parallel_shards", "pipeline_parallel_stages", "max_batch_size",
    "disaggregation", "kwargs", "max_sequence_length",
];

/// How the weights of an MLC directory are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Unquantized, in this dtype (`q0f16`, `q0bf16`, `q0f32`).
    None(candle_core::DType),
    /// MLC 4-bit groups (`q4f16_1`, `q4f32_1`, `q4bf16_1`), scales in this type.
    Group4(ScaleType),
}

impl Quantization {
    pub const NAMES: [&'static str; 6] = ["q0f16", "q0bf16", "q0f32", "q4f16_1", "q4bf16_1", "q4f32_1"];

    pub fn from_name(name: &str) -> Option<Self> {
        use candle_core::DType;
        Some(match name {
            "q0f16" => Quantization::None(DType::F16),
            "q0bf16" => Quantization::None(DType::BF16),
            "q0f32" => Quantization::None(DType::F32),
            "q4f16_1" => Quantization::Group4(ScaleType::F16),
            "q4bf16_1" => Quantization::Group4(ScaleType::BF16),
            "q4f32_1" => Quantization::Group4(ScaleType::F32),
            _ => return None,
        })
    }

    /// The dtype name MLC writes for unquantized parameters (norms, biases, unquantized weights).
    pub fn model_dtype(&self) -> &'static str {
        use candle_core::DType;
        match self {
            Quantization::None(DType::F16) | Quantization::Group4(ScaleType::F16) => "float16",
            Quantization::None(DType::BF16) | Quantization::Group4(ScaleType::BF16) => "bfloat16",
            _ => "float32",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MlcChatConfig {
    pub model_type: String,
    pub quantization: String,
    pub model_config: serde_json::Value,
    #[serde(default)]
    pub context_window_size: Option<i64>,
    #[serde(default)]
    pub conv_template: Option<serde_json::Value>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
}

impl MlcChatConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CHAT_CONFIG);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::model_load(&shown, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| EngineError::model_load(&shown, format!("invalid mlc-chat-config.json: {e}")))
    }

    pub fn quantization(&self, shown: &str) -> Result<Quantization> {
        Quantization::from_name(&self.quantization).ok_or_else(|| {
            EngineError::model_load(
                shown,
                format!("field \"quantization\": {:?} is not supported; supported: {}", self.quantization, Quantization::NAMES.join(", ")),
            )
        })
    }

    /// The architecture, read through the HF config parser after renaming MLC's fields and dropping its
    /// sizing fields (they size the engine, not the math).
    pub fn model_config(&self, shown: &str) -> Result<ModelConfig> {
        let obj = self.model_config.as_object().ok_or_else(|| EngineError::model_load(shown, "field \"model_config\" must be an object"))?;
        let model_type = match self.model_type.as_str() {
            // An EAGLE head's config is a Llama config (its layers are Llama decoder layers).
            "eagle" => "llama",
            // MLC names Gemma 3 after the checkpoint's model_type: text-only checkpoints are `gemma3_text`.
            "gemma3_text" => "gemma3",
            other => other,
        };
        let entry = crate::model::registry::by_mlc(model_type, shown)?;
        let mut hf = match entry.arch {
            Architecture::Gemma3 => gemma3_fields(obj, shown)?,
            _ => obj.clone(),
        };
        hf.insert("model_type".into(), entry.hf_names[0].into());
        // MLC's name of the rope base (all models but Qwen).
        if let Some(base) = hf.remove("position_embedding_base") {
            if !hf.contains_key("rope_theta") && base.as_f64().is_some_and(|b| b > 0.0) {
                hf.insert("rope_theta".into(), base);
            }
        }
        // MLC's Gemma configs: `hidden_activation` wins; `hidden_act` is read only without it.
        if hf.get("hidden_activation").is_some_and(|v| !v.is_null()) {
            hf.remove("hidden_act");
        }
        // MLC's Mistral: `sliding_window_size` (-1: none) and attention sinks kept inside the window.
        let window = hf.remove("sliding_window_size").and_then(|v| v.as_i64()).filter(|&w| w > 0);
        let sinks = hf.remove("attention_sink_size").and_then(|v| v.as_i64()).filter(|&s| s > 0);
        if let Some(w) = window {
            if sinks.is_some() {
                return Err(EngineError::model_load(shown, "model_config.attention_sink_size: attention sinks inside a sliding window are not supported"));
            }
            hf.insert("sliding_window".into(), w.into());
        }
        if entry.arch == Architecture::Phi3 {
            phi3_rope_scaling(&mut hf, shown)?;
        }
        let context = hf.get("context_window_size").and_then(|v| v.as_i64()).or(self.context_window_size).filter(|&w| w > 0);
        if let (Some(w), false) = (context, hf.contains_key("max_position_embeddings")) {
            hf.insert("max_position_embeddings".into(), w.into());
        }
        for k in MLC_SIZING_KEYS {
            hf.remove(*k);
        }
        if self.model_type == "eagle" {
            hf.remove("bias"); // fc's bias: read from the weights
        }
        let text = serde_json::Value::Object(hf).to_string();
        let mut cfg = crate::model::registry::config_from_hf(&text, shown)?;
        // MLC's Gemma loaders store every norm weight as `1 + w` (gemma2_loader.py, gemma3_loader.py).
        if matches!(cfg.architecture, Architecture::Gemma2 | Architecture::Gemma3) {
            cfg.norm_plus_one = false;
        }
        Ok(cfg)
    }

    /// Sampling defaults the config sets (MLC applies them to requests that leave the field unset).
    pub fn generation_defaults(&self) -> Vec<(&'static str, f64)> {
        [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
            ("repetition_penalty", self.repetition_penalty),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// MLC's `Gemma3Config` (gemma3_model.py): the text model's fields under `text_config`, with every other
/// key of the checkpoint's text config kept in its `kwargs`; the vocabulary and the engine's sizes at
/// the top. Flattened into one HF-like text config (a flat config is taken as it is).
fn gemma3_fields(top: &Map<String, Value>, shown: &str) -> Result<Map<String, Value>> {
    let err = |m: &str| EngineError::model_load(shown, format!("model_config.{m}"));
    let Some(text) = top.get("text_config") else { return Ok(top.clone()) };
    let text = text.as_object().ok_or_else(|| err("text_config must be an object"))?;
    let mut hf = match text.get("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(kw)) => kw.clone(),
        Some(_) => return Err(err("text_config.kwargs must be an object")),
    };
    hf.extend(text.iter().filter(|(k, _)| *k != "kwargs").map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in top {
        match k.as_str() {
            "text_config" | "kwargs" | "is_text_model" => {}
            // MLC's runtime would slide a window over every layer: not Gemma 3's attention.
            "sliding_window_size" if v.as_i64().is_some_and(|w| w > 0) => {
                return Err(err("sliding_window_size: a sliding window on every layer is not Gemma 3's attention; not supported"));
            }
            "sliding_window_size" => {}
            // The engine sizes of the top level replace the text model's.
            _ => {
                hf.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(hf)
}

/// MLC's `Phi3Config` copies `max_position_embeddings` and `original_max_position_embeddings` into
/// `rope_scaling` (and `rope_type` beside `type`) and writes `original_max_position_embeddings: 0` for a
/// checkpoint without one. The copies must agree with the top-level keys they were made from.
fn phi3_rope_scaling(hf: &mut Map<String, Value>, shown: &str) -> Result<()> {
    let zero = |v: Option<&Value>| v.and_then(|v| v.as_f64()) == Some(0.0);
    if zero(hf.get("original_max_position_embeddings")) {
        hf.remove("original_max_position_embeddings");
    }
    let top_max = hf.get("max_position_embeddings").cloned();
    let Some(Value::Object(rope)) = hf.get_mut("rope_scaling") else { return Ok(()) };
    if zero(rope.get("original_max_position_embeddings")) {
        rope.remove("original_max_position_embeddings");
    }
    match (rope.remove("max_position_embeddings"), top_max) {
        (Some(copy), Some(top)) if copy.as_f64() != top.as_f64() => Err(EngineError::model_load(
            shown,
            format!("model_config.rope_scaling.max_position_embeddings {copy} disagrees with max_position_embeddings {top}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(model_type: &str, model_config: Value) -> Result<ModelConfig> {
        let chat: MlcChatConfig = serde_json::from_value(json!({"model_type": model_type, "quantization": "q0f32", "model_config": model_config})).unwrap();
        chat.model_config("mlc-chat-config.json")
    }

    fn gemma2() -> Value {
        json!({"hidden_size": 64, "intermediate_size": 128, "attention_bias": false, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16, "num_hidden_layers": 2, "rms_norm_eps": 1e-6, "vocab_size": 100, "hidden_activation": "gelu_pytorch_tanh",
               "position_embedding_base": 10000.0, "context_window_size": 16, "prefill_chunk_size": 16, "tensor_parallel_shards": 1,
               "max_batch_size": 128, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 32,
               "sliding_window": 16})
    }

    /// MLC's Gemma2Config as written: its fields are read (the window is the context), the norms are already `1 + w`.
    #[test]
    fn gemma2_fields_and_norms_stored_plus_one() {
        let cfg = read("gemma2", gemma2()).unwrap();
        assert!(!cfg.norm_plus_one);
        assert_eq!((cfg.attn_logit_softcap, cfg.final_logit_softcap, cfg.max_position_embeddings), (Some(50.0), Some(30.0), 16));
        assert!((cfg.attention_scale - 32f64.powf(-0.5)).abs() < 1e-12);
        let mut with_length = gemma2();
        with_length["max_position_embeddings"] = 512.into();
        assert_eq!(read("gemma2", with_length).unwrap().max_position_embeddings, 512);
    }

    #[test]
    fn unknown_math_fields_are_refused_by_name() {
        let mut c = gemma2();
        c["use_bidirectional_attention"] = true.into();
        let e = read("gemma2", c).unwrap_err().to_string();
        assert!(e.contains("use_bidirectional_attention"), "{e}");
        let mut c = gemma2();
        c["logit_scale"] = 2.0.into();
        let e = read("gemma2", c).unwrap_err().to_string();
        assert!(e.contains("\"logit_scale\""), "{e}");
    }

    /// MLC's Gemma3Config: text fields and the checkpoint's other keys (kwargs) under text_config; the
    /// local rope base and the layer pattern come from the kwargs; `gemma3_text` is MLC's name for it.
    #[test]
    fn gemma3_text_config_and_kwargs() {
        let text = json!({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "attention_bias": false,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh", "position_embedding_base": 1e6, "context_window_size": 8192,
            "prefill_chunk_size": 8192, "query_pre_attn_scalar": 48, "sliding_window": 16,
            "kwargs": {"max_position_embeddings": 512, "rope_local_base_freq": 20000.0, "sliding_window_pattern": 3,
                       "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "hidden_act": "gelu_pytorch_tanh", "model_type": "gemma3_text"}});
        let top = json!({"text_config": text, "vocab_size": 100, "tensor_parallel_shards": 1, "max_batch_size": 128,
            "context_window_size": 8192, "sliding_window_size": -1, "prefill_chunk_size": 8192, "is_text_model": true});
        let cfg = read("gemma3_text", top.clone()).unwrap();
        assert!(!cfg.norm_plus_one);
        assert_eq!((cfg.vocab_size, cfg.max_position_embeddings, cfg.ropes.len()), (100, 512, 2));
        assert_eq!((cfg.ropes[0].theta, cfg.ropes[1].theta), (1e6, 20000.0));
        assert_eq!(cfg.layers.iter().filter(|l| l.attention.window() == Some(16)).count(), 4);
        assert_eq!(read("gemma3", top.clone()).unwrap().ropes, cfg.ropes);
        let mut sliding = top;
        sliding["sliding_window_size"] = 1024.into();
        let e = read("gemma3_text", sliding).unwrap_err().to_string();
        assert!(e.contains("sliding_window_size"), "{e}");
    }

    /// MLC's Phi3Config copies both lengths into rope_scaling and writes 0 for a missing original length.
    #[test]
    fn phi3_rope_scaling_copies() {
        let scaling = json!({"type": "longrope", "rope_type": "longrope", "short_factor": [1.0, 1.0], "long_factor": [2.0, 2.0],
                             "max_position_embeddings": 256, "original_max_position_embeddings": 32});
        let phi3 = json!({"model_type": "phi3", "hidden_size": 16, "vocab_size": 100, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "rms_norm_eps": 1e-5, "num_key_value_heads": 1, "max_position_embeddings": 256,
            "position_embedding_base": 10000.0, "rope_scaling": scaling, "original_max_position_embeddings": 32,
            "context_window_size": 256, "prefill_chunk_size": 256, "head_dim": 8, "tensor_parallel_shards": 1,
            "max_batch_size": 128, "tie_word_embeddings": false, "partial_rotary_factor": 0.5});
        let cfg = read("phi3", phi3.clone()).unwrap();
        assert_eq!(cfg.ropes[0].rotary_dim, 4);
        assert!(matches!(cfg.ropes[0].scaling, crate::model::rope::RopeScaling::LongRope { original_max_position_embeddings: 32, .. }));
        let mut bad = phi3.clone();
        bad["rope_scaling"]["max_position_embeddings"] = 4096.into();
        let e = read("phi3", bad).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.max_position_embeddings"), "{e}");
        let mut plain = phi3;
        plain["rope_scaling"] = Value::Null;
        plain["original_max_position_embeddings"] = 0.into();
        assert_eq!(read("phi3", plain).unwrap().ropes[0].scaling, crate::model::rope::RopeScaling::None);
    }
}
