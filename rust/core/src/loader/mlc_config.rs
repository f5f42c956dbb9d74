//! `mlc-chat-config.json`: the model's architecture (`model_type` + `model_config`, HF-like but with MLC's
//! names), the quantization of its weights, the conversation template and sampling defaults.

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::quant::group4::ScaleType;
use serde::Deserialize;
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
        let mut hf = self.model_config.as_object().cloned().ok_or_else(|| {
            EngineError::model_load(shown, "field \"model_config\" must be an object")
        })?;
        // An EAGLE head's config is a Llama config (its layers are Llama decoder layers).
        let model_type = if self.model_type == "eagle" { "llama" } else { self.model_type.as_str() };
        let entry = crate::model::registry::by_mlc(model_type, shown)?;
        hf.insert("model_type".into(), entry.hf_names[0].into());
        // MLC's Llama and Mistral name the rope base `position_embedding_base`.
        if let Some(base) = hf.remove("position_embedding_base") {
            if !hf.contains_key("rope_theta") && base.as_f64().is_some_and(|b| b > 0.0) {
                hf.insert("rope_theta".into(), base);
            }
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
        crate::model::registry::config_from_hf(&text, shown)
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
