//! Finds a model on disk and gives its weights by their Hugging Face names, whatever the file format.

mod gguf;
mod safetensors;

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::linear::Linear;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

pub use gguf::GgufWeights;
pub use safetensors::SafetensorsWeights;

/// How GGUF-quantized weights are used on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    /// Dequantize to the compute dtype at load: numerically the closest to the reference implementation.
    Dequantize,
    /// Keep the quantized blocks and use candle's quantized matmul: less memory, faster decoding.
    Quantized,
}

pub enum Weights {
    Gguf(GgufWeights),
    Safetensors(SafetensorsWeights),
}

impl Weights {
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        match self {
            Weights::Gguf(w) => w.tensor(name),
            Weights::Safetensors(w) => w.tensor(name),
        }
    }
    pub fn linear(&self, name: &str, bias: bool) -> Result<Linear> {
        match self {
            Weights::Gguf(w) => w.linear(name, bias),
            Weights::Safetensors(w) => w.linear(name, bias),
        }
    }
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Weights::Gguf(w) => w.contains(name),
            Weights::Safetensors(w) => w.contains(name),
        }
    }
}

/// Everything read from disk for one model.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// A short name for responses (`model` field) and logs.
    pub name: String,
    pub path: PathBuf,
}

/// `model` is a GGUF file, an HF directory, or the path of a config file inside one.
pub fn load(model: &str, device: &Device, dtype: DType, quant: QuantMode) -> Result<LoadedModel> {
    let path = PathBuf::from(model);
    if !path.exists() {
        return Err(EngineError::model_load(model, "no such file or directory"));
    }
    let (kind_path, is_gguf) = if path.is_dir() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        if path.join("config.json").exists() {
            (path.clone(), false)
        } else if ggufs.len() == 1 {
            (ggufs[0].clone(), true)
        } else if path.join("mlc-chat-config.json").exists() {
            return Err(EngineError::Unsupported(format!(
                "{}: MLC-format weight directories (mlc-chat-config.json) are not supported yet; use an HF or GGUF model",
                path.display()
            )));
        } else {
            return Err(EngineError::model_load(model, "directory holds neither config.json nor exactly one .gguf file"));
        }
    } else if path.extension().is_some_and(|x| x == "gguf") {
        (path.clone(), true)
    } else if path.file_name().is_some_and(|n| n == "config.json" || n == "mlc-chat-config.json") {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return load(&dir.to_string_lossy(), device, dtype, quant);
    } else {
        return Err(EngineError::model_load(model, "expected a .gguf file, a model directory or its config.json"));
    };
    let name = model_name(&kind_path);
    if is_gguf {
        let (config, weights, tokenizer) = gguf::load(&kind_path, device, dtype, quant)?;
        Ok(LoadedModel { config, weights: Weights::Gguf(weights), tokenizer, name, path: kind_path })
    } else {
        let (config, weights) = safetensors::load(&kind_path, device, dtype)?;
        let tokenizer = Tokenizer::from_hf_dir(&kind_path)?;
        Ok(LoadedModel { config, weights: Weights::Safetensors(weights), tokenizer, name, path: kind_path })
    }
}

fn model_name(path: &Path) -> String {
    let stem = if path.is_dir() { path.file_name() } else { path.file_stem() };
    stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}
