//! The architectures we run, in one table: the names HF (`architectures` / `model_type`), GGUF
//! (`general.architecture`) and MLC (`model_type`) give them, how each reads its config, and the
//! constructor. Adding an architecture is one file in `arch/` and one row here.

use super::arch;
use super::config::{HfConfig, ModelConfig};
use super::gguf_meta::GgufMeta;
use super::rope::RopeScaling;
use super::weights::WeightSource;
use super::{CausalLm, DecoderModel};
use crate::error::{EngineError, Result};
use candle_core::{DType, Device};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
    Olmo2,
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    GptOss,
}

pub struct ArchEntry {
    pub arch: Architecture,
    /// Our name for it (= MLC's `model_type` and llama.cpp's `general.architecture` where they exist).
    pub name: &'static str,
    /// HF `model_type` values and `architectures` class names.
    pub hf_names: &'static [&'static str],
    /// llama.cpp's `general.architecture`.
    pub gguf_name: Option<&'static str>,
    /// MLC's `model_type` in `mlc-chat-config.json`.
    pub mlc_name: Option<&'static str>,
    pub from_hf: fn(&HfConfig<'_>, Architecture) -> Result<ModelConfig>,
    pub from_gguf: fn(&GgufMeta<'_>, Architecture) -> Result<ModelConfig>,
    pub build: fn(&ModelConfig, &dyn WeightSource, &Device, DType) -> Result<Box<dyn CausalLm>>,
}

fn dense(cfg: &ModelConfig, w: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(DecoderModel::load(cfg, w, device, dtype)?))
}

pub static REGISTRY: &[ArchEntry] = &[
    ArchEntry {
        arch: Architecture::Llama,
        name: "llama",
        hf_names: &["llama", "LlamaForCausalLM"],
        gguf_name: Some("llama"),
        mlc_name: Some("llama"),
        from_hf: arch::llama::from_hf,
        from_gguf: arch::llama::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Mistral,
        name: "mistral",
        hf_names: &["mistral", "MistralForCausalLM"],
        gguf_name: Some("mistral"),
        mlc_name: Some("mistral"),
        from_hf: arch::llama::from_hf,
        from_gguf: arch::llama::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Qwen2,
        name: "qwen2",
        hf_names: &["qwen2", "Qwen2ForCausalLM"],
        gguf_name: Some("qwen2"),
        mlc_name: Some("qwen2"),
        from_hf: arch::qwen::from_hf,
        from_gguf: arch::qwen::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Qwen3,
        name: "qwen3",
        hf_names: &["qwen3", "Qwen3ForCausalLM"],
        gguf_name: Some("qwen3"),
        mlc_name: Some("qwen3"),
        from_hf: arch::qwen::from_hf,
        from_gguf: arch::qwen::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Gemma2,
        name: "gemma2",
        hf_names: &["gemma2", "Gemma2ForCausalLM"],
        gguf_name: Some("gemma2"),
        mlc_name: Some("gemma2"),
        from_hf: arch::gemma::from_hf,
        from_gguf: arch::gemma::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Gemma3,
        name: "gemma3",
        hf_names: &["gemma3_text", "Gemma3ForCausalLM"],
        gguf_name: Some("gemma3"),
        mlc_name: Some("gemma3"),
        from_hf: arch::gemma::from_hf,
        from_gguf: arch::gemma::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Phi3,
        name: "phi3",
        hf_names: &["phi3", "Phi3ForCausalLM"],
        gguf_name: Some("phi3"),
        mlc_name: Some("phi3"),
        from_hf: arch::phi3::from_hf,
        from_gguf: arch::phi3::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Olmo2,
        name: "olmo2",
        hf_names: &["olmo2", "Olmo2ForCausalLM"],
        gguf_name: Some("olmo2"),
        mlc_name: Some("olmo2"),
        from_hf: arch::olmo2::from_hf,
        from_gguf: arch::olmo2::from_gguf,
        build: dense,
    },
    // Mixtures of experts (Mixtral GGUFs are llama files with experts).
    ArchEntry {
        arch: Architecture::Mixtral,
        name: "mixtral",
        hf_names: &["mixtral", "MixtralForCausalLM"],
        gguf_name: None,
        mlc_name: Some("mixtral"),
        from_hf: arch::moe::from_hf,
        from_gguf: arch::moe::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Qwen2Moe,
        name: "qwen2_moe",
        hf_names: &["qwen2_moe", "Qwen2MoeForCausalLM"],
        gguf_name: Some("qwen2moe"),
        mlc_name: Some("qwen2_moe"),
        from_hf: arch::moe::from_hf,
        from_gguf: arch::moe::from_gguf,
        build: dense,
    },
    ArchEntry {
        arch: Architecture::Qwen3Moe,
        name: "qwen3_moe",
        hf_names: &["qwen3_moe", "Qwen3MoeForCausalLM"],
        gguf_name: Some("qwen3moe"),
        mlc_name: Some("qwen3_moe"),
        from_hf: arch::moe::from_hf,
        from_gguf: arch::moe::from_gguf,
        build: dense,
    },
    // Attention sinks (both attention kernels take them) and fused experts with a clamped SwiGLU.
    ArchEntry {
        arch: Architecture::GptOss,
        name: "gpt_oss",
        hf_names: &["gpt_oss", "GptOssForCausalLM"],
        gguf_name: Some("gpt-oss"),
        mlc_name: None,
        from_hf: arch::gpt_oss::from_hf,
        from_gguf: arch::gpt_oss::from_gguf,
        build: dense,
    },
];

impl Architecture {
    pub fn entry(&self) -> &'static ArchEntry {
        REGISTRY.iter().find(|e| e.arch == *self).expect("every architecture has a registry row")
    }

    pub fn name(&self) -> &'static str {
        self.entry().name
    }
}

fn supported(names: impl Fn(&ArchEntry) -> Option<&'static str>) -> String {
    REGISTRY.iter().filter_map(names).collect::<Vec<_>>().join(", ")
}

/// The entry for an HF config's `model_type` or one of its `architectures`.
pub fn by_hf(model_type: Option<&str>, architectures: &[String], path: &str) -> Result<&'static ArchEntry> {
    let names: Vec<&str> = model_type.into_iter().chain(architectures.iter().map(String::as_str)).collect();
    names
        .iter()
        .find_map(|n| REGISTRY.iter().find(|e| e.hf_names.contains(n)))
        .ok_or_else(|| EngineError::model_load(path, format!("unsupported architecture {names:?}; supported: {}", supported(|e| Some(e.hf_names[1])))))
}

/// The entry for a GGUF `general.architecture`.
pub fn by_gguf(name: &str, path: &str) -> Result<&'static ArchEntry> {
    REGISTRY
        .iter()
        .find(|e| e.gguf_name == Some(name))
        .ok_or_else(|| EngineError::model_load(path, format!("unsupported GGUF architecture {name:?}; supported: {}", supported(|e| e.gguf_name))))
}

/// The entry for an MLC `model_type`.
pub fn by_mlc(name: &str, path: &str) -> Result<&'static ArchEntry> {
    REGISTRY.iter().find(|e| e.mlc_name == Some(name)).ok_or_else(|| {
        EngineError::model_load(path, format!("field \"model_type\": unsupported architecture {name:?}; supported: {}", supported(|e| e.mlc_name)))
    })
}

/// Reads an HF `config.json` (its text) into the model's configuration, refusing any key that changes
/// the math and is not implemented.
pub fn config_from_hf(text: &str, path: &str) -> Result<ModelConfig> {
    let obj = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return Err(EngineError::model_load(path, "invalid config.json: not a JSON object")),
        Err(e) => return Err(EngineError::model_load(path, format!("invalid config.json: {e}"))),
    };
    let c = HfConfig::new(obj, path);
    let architectures: Vec<String> = match c.get("architectures") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    let model_type = c.str("model_type")?.map(String::from);
    let entry = by_hf(model_type.as_deref(), &architectures, path)?;
    let mut cfg = (entry.from_hf)(&c, entry.arch)?;
    // gpt-oss reads its own quantization_config (MXFP4 experts, arch/gpt_oss.rs).
    if entry.arch != Architecture::GptOss {
        cfg.fp8 = crate::quant::fp8::read_config(&c)?;
    }
    c.finish()?;
    // Dynamic NTK exists to run past max_position_embeddings: the context it serves is factor times
    // longer (as vLLM derives it).
    if let Some(f) = cfg.ropes.iter().find_map(|r| match r.scaling {
        RopeScaling::Dynamic { factor, .. } => Some(factor),
        _ => None,
    }) {
        cfg.max_position_embeddings = (cfg.max_position_embeddings as f64 * f.max(1.0)).ceil() as usize;
    }
    cfg.validate(path)?;
    Ok(cfg)
}

/// An EAGLE head's `config.json`: a Llama config whose `bias` says whether `fc` has one (the head reads
/// that from its weights).
pub fn eagle_config_from_hf(text: &str, path: &str) -> Result<ModelConfig> {
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| EngineError::model_load(path, format!("invalid config.json: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("bias");
    }
    config_from_hf(&v.to_string(), path)
}

/// Reads GGUF metadata into the model's configuration.
pub fn config_from_gguf(meta: &GgufMeta<'_>) -> Result<ModelConfig> {
    let entry = by_gguf(meta.arch(), meta.path)?;
    let cfg = (entry.from_gguf)(meta, entry.arch)?;
    meta.finish()?;
    cfg.validate_gguf(meta.path, meta.arch())?;
    Ok(cfg)
}

/// Builds the model for `cfg` from `weights`.
pub fn build(cfg: &ModelConfig, weights: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Box<dyn CausalLm>> {
    (cfg.architecture.entry().build)(cfg, weights, device, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_has_one_row_and_unknown_names_list_the_supported() {
        for e in REGISTRY {
            assert_eq!(REGISTRY.iter().filter(|x| x.arch == e.arch).count(), 1);
            assert_eq!(e.arch.name(), e.name);
        }
        let err = by_hf(Some("falcon"), &["FalconForCausalLM".into()], "c.json").err().unwrap().to_string();
        assert!(err.contains("Gemma2ForCausalLM") && err.contains("falcon"), "{err}");
        assert!(by_gguf("gemma3", "m.gguf").is_ok());
        assert!(by_mlc("bert", "d").err().unwrap().to_string().contains("olmo2"));
    }
}
