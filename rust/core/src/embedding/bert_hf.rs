//! BERT-family encoders from an HF directory: config.json with `model_type` bert, roberta or
//! xlm-roberta, model.safetensors (with or without the `bert.` / `roberta.` prefix of a `*For*`
//! checkpoint), and what sentence-transformers stores beside them (its pooling module's mode).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use super::bert::{Bert, EncoderConfig, EncoderWeights, Gelu, Positions};
use super::Pooling;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    pad_token_id: Option<u32>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    is_decoder: bool,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

const MODEL_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta"];

/// Whether `dir` holds a BERT-family encoder (config.json's `model_type`).
pub fn is_encoder_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    value.get("model_type").and_then(|v| v.as_str()).is_some_and(|t| MODEL_TYPES.contains(&t))
}

/// The encoder of `dir` in f32 on `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Bert> {
    let path = dir.join("config.json").display().to_string();
    let hf: HfConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)
        .map_err(|e| EngineError::model_load(&path, format!("config.json: {e}")))?;
    let cfg = encoder_config(&hf).map_err(|m| EngineError::model_load(&path, m))?;
    let weights_path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights_path, device)?;
    // A `BertForMaskedLM`-style checkpoint keeps the encoder under the model's prefix.
    for prefix in ["bert.", "roberta."] {
        if tensors.contains_key(&format!("{prefix}embeddings.word_embeddings.weight")) {
            tensors = tensors.into_iter().filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t))).collect();
        }
    }
    // Old TF-converted checkpoints name LayerNorm parameters gamma / beta.
    let tensors: HashMap<String, _> = tensors
        .into_iter()
        .map(|(k, t)| {
            let k = k.strip_suffix(".gamma").map(|s| format!("{s}.weight")).or_else(|| k.strip_suffix(".beta").map(|s| format!("{s}.bias"))).unwrap_or(k);
            (k, t)
        })
        .collect();
    Bert::new(cfg, &EncoderWeights { tensors, source: &weights_path.display().to_string() })
}

/// config.json -> the encoder's settings; every key that changes the math is implemented or refused.
fn encoder_config(hf: &HfConfig) -> std::result::Result<EncoderConfig, String> {
    let gelu = match hf.hidden_act.as_str() {
        "gelu" => Gelu::Erf,
        "gelu_new" | "gelu_pytorch_tanh" => Gelu::Tanh,
        other => return Err(format!("hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh)")),
    };
    if let Some(kind) = hf.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
        return Err(format!("position_embedding_type {kind:?} is not supported (absolute)"));
    }
    if hf.is_decoder {
        return Err("is_decoder: a causal BERT is not an embedding encoder".into());
    }
    let positions = match hf.model_type.as_str() {
        "bert" => Positions::FromZero,
        "roberta" | "xlm-roberta" => {
            // transformers' RobertaEmbeddings takes padding_idx from pad_token_id (1 in every released model).
            let pad_id = hf.pad_token_id.ok_or("a RoBERTa config needs pad_token_id (its position ids start after it)")?;
            Positions::AfterPadding { pad_id }
        }
        other => return Err(format!("model_type {other:?} is not a BERT-family encoder")),
    };
    Ok(EncoderConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        intermediate_size: hf.intermediate_size,
        gelu,
        max_position_embeddings: hf.max_position_embeddings,
        type_vocab_size: hf.type_vocab_size,
        layer_norm_eps: hf.layer_norm_eps,
        positions,
    })
}

/// The tokens around an input, from tokenizer_config.json's `cls_token` / `sep_token` ([CLS] / [SEP] for
/// BERT, <s> / </s> for RoBERTa), as the tokenizer's post-processor adds them.
pub fn frame_texts(dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let token = |key: &str| match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    };
    Some((token("cls_token")?, token("sep_token")?))
}

/// sentence-transformers' pooling mode (modules.json -> the Pooling module's config.json), if the
/// directory has one: the pooling the model was trained with.
pub fn sentence_transformers_pooling(dir: &Path) -> Result<Option<Pooling>> {
    let Ok(text) = std::fs::read_to_string(dir.join("modules.json")) else { return Ok(None) };
    let shown = dir.join("modules.json").display().to_string();
    let modules: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| EngineError::model_load(&shown, e.to_string()))?;
    let Some(module) = modules.iter().find(|m| m.get("type").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with("Pooling"))) else {
        return Ok(None);
    };
    let sub = module.get("path").and_then(|p| p.as_str()).unwrap_or("1_Pooling");
    let config_path = dir.join(sub).join("config.json");
    let shown = config_path.display().to_string();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?).map_err(|e| EngineError::model_load(&shown, e.to_string()))?;
    let on = |k: &str| config.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let modes: Vec<Pooling> = [("pooling_mode_cls_token", Pooling::First), ("pooling_mode_mean_tokens", Pooling::Mean), ("pooling_mode_lasttoken", Pooling::Last)]
        .into_iter()
        .filter(|(k, _)| on(k))
        .map(|(_, p)| p)
        .collect();
    let unsupported = ["pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens"];
    if let Some(k) = unsupported.iter().find(|k| on(k)) {
        return Err(EngineError::model_load(shown, format!("{k} is not supported (cls, mean, lasttoken)")));
    }
    match modes.as_slice() {
        [one] => Ok(Some(*one)),
        [] => Ok(None),
        _ => Err(EngineError::model_load(shown, "more than one pooling mode: the concatenation is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(extra: serde_json::Value) -> std::result::Result<EncoderConfig, String> {
        let mut v = serde_json::json!({"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        encoder_config(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn math_changing_keys_are_implemented_or_refused() {
        assert_eq!(hf(serde_json::json!({})).unwrap().positions, Positions::FromZero);
        let r = hf(serde_json::json!({"model_type": "xlm-roberta", "pad_token_id": 1})).unwrap();
        assert_eq!((r.positions, r.max_input_tokens()), (Positions::AfterPadding { pad_id: 1 }, 14));
        assert!(hf(serde_json::json!({"model_type": "roberta"})).unwrap_err().contains("pad_token_id"));
        assert!(hf(serde_json::json!({"position_embedding_type": "relative_key"})).unwrap_err().contains("position_embedding_type"));
        assert!(hf(serde_json::json!({"hidden_act": "relu"})).unwrap_err().contains("hidden_act"));
        assert!(hf(serde_json::json!({"is_decoder": true})).unwrap_err().contains("is_decoder"));
        assert_eq!(hf(serde_json::json!({"hidden_act": "gelu_new"})).unwrap().gelu, Gelu::Tanh);
    }
}
