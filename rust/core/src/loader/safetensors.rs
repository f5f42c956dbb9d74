//! HF safetensors checkpoints: one file or shards listed in `model.safetensors.index.json`.

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::linear::{Linear, Weight};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

pub struct SafetensorsWeights {
    st: MmapedSafetensors,
    device: Device,
    dtype: DType,
    dir: PathBuf,
}

pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(ModelConfig, SafetensorsWeights)> {
    let config = crate::model::registry::config_from_hf(&read_config(dir)?, &dir.join("config.json").display().to_string())?;
    Ok((config, open(dir, device, dtype)?))
}

/// The text of the directory's `config.json`.
pub fn read_config(dir: &Path) -> Result<String> {
    let cfg_path = dir.join("config.json");
    std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::model_load(cfg_path.display().to_string(), e.to_string()))
}

/// The weights of the directory, without reading its config.
pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<SafetensorsWeights> {
    let files = shard_files(dir)?;
    for f in &files {
        if !f.exists() {
            return Err(EngineError::model_load(f.display().to_string(), "shard listed in the index is missing"));
        }
    }
    // SAFETY: the files are memory-mapped read-only; a concurrent writer would be a user error that
    // safetensors' header checks mostly catch.
    let st = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(|e| EngineError::model_load(dir.display().to_string(), format!("cannot read safetensors: {e}")))?;
    Ok(SafetensorsWeights { st, device: device.clone(), dtype, dir: dir.to_path_buf() })
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::model_load(index.display().to_string(), e.to_string()))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            EngineError::model_load(index.display().to_string(), "no weight_map")
        })?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(EngineError::model_load(dir.display().to_string(), "no model.safetensors or model.safetensors.index.json"))
}

impl SafetensorsWeights {
    pub fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    /// The named tensor, converted to the compute dtype on the compute device.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.st.load(name, &Device::Cpu).map_err(|e| {
            EngineError::model_load(self.dir.display().to_string(), format!("tensor {name}: {e}"))
        })?;
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    pub fn linear(&self, name: &str, bias: bool) -> Result<Linear> {
        let weight = Weight::Dense(self.tensor(&format!("{name}.weight"))?);
        let bias = if bias { Some(self.tensor(&format!("{name}.bias"))?) } else { None };
        Ok(Linear { weight, bias })
    }
}
