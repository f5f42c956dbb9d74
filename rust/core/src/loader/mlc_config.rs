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
