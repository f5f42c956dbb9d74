//! HF safetensors checkpoints: one file or shards listed in `model.safetensors.index.json`.

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::linear::{Linear, Weight};
use crate::quant::fp8::Fp8Config;
use crate::model::weights::Mxfp4Experts;
use super::QuantMode;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

pub struct SafetensorsWeights {
    st: MmapedSafetensors,
    device: Device,
    dtype: DType,
    dir: PathBuf,
    /// How FP8 projections are scaled (the config's `quantization_config`); `None`: the checkpoint
    /// declares no FP8 weights, and an F8_E4M3 tensor is an error.
    fp8: Option<Fp8Config>,
    /// Whether quantized weights may stay quantized (MXFP4 experts on the CPU); otherwise dequantized.
    quant: QuantMode,
}

pub fn load(dir: &Path, device: &Device, dtype: DType, quant: QuantMode) -> Result<(ModelConfig, SafetensorsWeights)> {
    let config = crate::model::registry::config_from_hf(&read_config(dir)?, &dir.join("config.json").display().to_string())?;
    let mut weights = open(dir, device, dtype)?;
    weights.fp8 = config.fp8;
    weights.quant = quant;
    Ok((config, weights))
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
    Ok(SafetensorsWeights { st, device: device.clone(), dtype, dir: dir.to_path_buf(), fp8: None, quant: QuantMode::Dequantize })
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

    /// The named tensor as stored, on the CPU.
    fn raw(&self, name: &str) -> Result<Tensor> {
        self.st.load(name, &Device::Cpu).map_err(|e| EngineError::model_load(self.dir.display().to_string(), format!("tensor {name}: {e}")))
    }

    /// gpt-oss's experts at `prefix` (`model.layers.3.mlp.experts`) as llama.cpp's MXFP4 blocks, where the
    /// checkpoint stores them as MXFP4 (`gate_up_proj_blocks` / `_scales`, `down_proj_blocks` / `_scales`)
    /// and the device keeps them so ([`super::keeps_mxfp4`]): `gate_up_proj`'s rows alternate gate and up (the columns
    /// transformers splits with `::2` and `1::2` after its transpose), reordered here to each expert's
    /// gate rows then its up rows.
    pub fn mxfp4_experts(&self, prefix: &str) -> Result<Option<Mxfp4Experts>> {
        let (gu, dn) = (format!("{prefix}.gate_up_proj"), format!("{prefix}.down_proj"));
        if !super::keeps_mxfp4(self.device.location(), self.dtype, self.quant) || self.contains(&gu) || !self.contains(&format!("{gu}_blocks")) || !self.contains(&format!("{dn}_blocks")) {
            return Ok(None);
        }
        let (gb, db) = (self.raw(&format!("{gu}_blocks"))?, self.raw(&format!("{dn}_blocks"))?); // [E, 2I, H/32, 16], [E, H, I/32, 16]
        let (&[e, two_i, hg, 16], &[e2, h, ig, 16]) = (gb.dims(), db.dims()) else {
            return Err(EngineError::model_load(&gu, format!("MXFP4 experts {:?} / {:?} are not [E, out, in / 32, 16]", gb.dims(), db.dims())));
        };
        if e != e2 || two_i % 2 != 0 || hg * 32 != h || ig * 64 != two_i {
            return Err(EngineError::model_load(&gu, format!("MXFP4 experts gate_up {:?} and down {:?} do not fit [E, 2I, hidden] / [E, hidden, I]", gb.dims(), db.dims())));
        }
        let gate_up = crate::quant::mxfp4::to_ggml_blocks(&gb, &self.raw(&format!("{gu}_scales"))?, &gu)?; // rows [E * 2I]
        let down = crate::quant::mxfp4::to_ggml_blocks(&db, &self.raw(&format!("{dn}_scales"))?, &dn)?;
        let row = hg * crate::quant::mxfp4::GGML_BLOCK_BYTES;
        let mut ordered = Vec::with_capacity(gate_up.len());
        for expert in gate_up.chunks_exact(two_i * row) {
            for parity in [0, 1] {
                expert.chunks_exact(row).skip(parity).step_by(2).for_each(|r| ordered.extend_from_slice(r));
            }
        }
        Ok(Some(Mxfp4Experts { experts: e, inter: two_i / 2, hidden: h, gate_up: ordered, down }))
    }

    /// The named tensor, converted to the compute dtype on the compute device. A tensor stored as MXFP4
    /// (`{name}_blocks` and `{name}_scales`, gpt-oss's experts) is dequantized: its rows `[E, out, in]`
    /// are the transpose of the parameter transformers builds from them (`[E, in, out]`), which is what
    /// the name means.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        if !self.contains(name) && self.contains(&format!("{name}_blocks")) {
            let blocks = self.raw(&format!("{name}_blocks"))?;
            let rows = crate::quant::mxfp4::dequantize(&blocks, &self.raw(&format!("{name}_scales"))?, name)?; // [E, out, in]
            let t = if rows.rank() == 3 { rows.transpose(1, 2)?.contiguous()? } else { rows };
            return Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?);
        }
        if self.is_fp8(name)? {
            // Its scale lives beside it: only projections (`linear`) know how to read one.
            return Err(EngineError::model_load(self.dir.display().to_string(), format!("tensor {name}: FP8 (F8_E4M3) is supported for linear layer weights only")));
        }
        self.on_device(name)
    }

    fn is_fp8(&self, name: &str) -> Result<bool> {
        let view = self.st.get(name).map_err(|e| EngineError::model_load(self.dir.display().to_string(), format!("tensor {name}: {e}")))?;
        Ok(view.dtype() == safetensors::Dtype::F8_E4M3)
    }

    /// The named tensor in the compute dtype on the compute device. Off the CPU the mapped bytes are
    /// uploaded as they are and converted there: no host copy of every tensor before its upload (16 GB
    /// of memcpy for an 8B bf16 checkpoint) and, for a conversion, half the bytes over the bus.
    fn on_device(&self, name: &str) -> Result<Tensor> {
        if self.device.is_cpu() {
            return Ok(self.raw(name)?.to_dtype(self.dtype)?);
        }
        let t = self.st.load(name, &self.device).map_err(|e| EngineError::model_load(self.dir.display().to_string(), format!("tensor {name}: {e}")))?;
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A projection's weight: as stored, or an FP8 one times its scale (`weight_scale_inv` or
    /// `weight_scale`), in the compute dtype on the compute device.
    fn weight(&self, name: &str) -> Result<Tensor> {
        if !self.is_fp8(name)? {
            return self.on_device(name);
        }
        let q = self.raw(name)?;
        let Some(fp8) = &self.fp8 else {
            return Err(EngineError::model_load(self.dir.display().to_string(), format!("tensor {name} is FP8 (F8_E4M3) but config.json has no quantization_config saying how it is scaled")));
        };
        let base = name.strip_suffix("weight").unwrap_or(name);
        let scale = [format!("{base}weight_scale_inv"), format!("{base}weight_scale")]
            .into_iter()
            .find(|s| self.contains(s))
            .ok_or_else(|| EngineError::model_load(self.dir.display().to_string(), format!("FP8 tensor {name} has no {base}weight_scale_inv or {base}weight_scale")))?;
        let w = crate::quant::fp8::dequantize(&q, &self.raw(&scale)?, fp8, name)?; // [out, in] f32
        Ok(w.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    pub fn linear(&self, name: &str, bias: bool) -> Result<Linear> {
        let weight = Weight::Dense(self.weight(&format!("{name}.weight"))?);
        let bias = if bias { Some(self.tensor(&format!("{name}.bias"))?) } else { None };
        Ok(Linear { weight, bias })
    }
}
