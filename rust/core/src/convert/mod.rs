//! `convert_weight`: an HF safetensors checkpoint written as an MLC tensor cache (the parameter names,
//! fused layouts and quantizations MLC's converter produces), so MLC's runtime and ours load the result.
//! EAGLE heads (`fc.weight` beside `layers.0.*`) are written as MLC's eagle model.

pub(crate) mod plan;

use crate::error::{EngineError, Result};
use crate::loader::tensor_cache::CacheWriter;
use crate::loader::Quantization;
use crate::quant::group4;
use candle_core::{DType, Device, Tensor};
use plan::{MlcParam, ParamKind};
use std::path::{Path, PathBuf};

/// What a conversion wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub output: String,
    pub quantization: String,
    /// Stored tensors (MLC's `ParamSize`).
    pub num_tensors: u64,
    pub param_bytes: u64,
    /// Elements of the unquantized model.
    pub source_params: u64,
    pub bits_per_param: f64,
    pub num_shards: usize,
}

/// The HF model directory of `source` (the directory itself or its `config.json`).
pub fn source_dir(source: &Path) -> Result<PathBuf> {
    let dir = if source.is_dir() { source.to_path_buf() } else { source.parent().unwrap_or(Path::new(".")).to_path_buf() };
    if !dir.join("config.json").exists() {
        return Err(EngineError::model_load(source.display().to_string(), "no config.json: expected an HF model directory or its config.json"));
    }
    Ok(dir)
}

/// Converts the checkpoint at `source` into `output`. `progress(done, total, name)` is called after each
/// stored parameter; an error it returns stops the conversion (e.g. an interrupt).
pub fn convert_weight(
    source: &Path,
    quantization: &str,
    output: &Path,
    progress: &mut dyn FnMut(usize, usize, &str) -> Result<()>,
) -> Result<ConvertReport> {
    let quant = Quantization::from_name(quantization).ok_or_else(|| {
        EngineError::bad_request("quantization", format!("{quantization:?} is not supported; supported: {}", Quantization::NAMES.join(", ")))
    })?;
    let dir = source_dir(source)?;
    let shown = dir.join("config.json").display().to_string();
    let weights = crate::loader::open_safetensors(&dir, &Device::Cpu, DType::F32)?;
    let text = crate::loader::read_hf_config(&dir)?;
    let eagle = plan::is_eagle(|name| weights.contains(name));
    let config = if eagle { crate::model::registry::eagle_config_from_hf(&text, &shown)? } else { crate::model::registry::config_from_hf(&text, &shown)? };
    let params = if eagle {
        plan::eagle_params(&config, |name| weights.contains(name))
    } else {
        plan::check_representable(&config)?;
        plan::mlc_params(&config, |name| weights.contains(name))
    };
    let mut writer = CacheWriter::new(output)?;
    let mut source_params = 0u64;
    for (i, p) in params.iter().enumerate() {
        let t = assemble(p, |name| weights.tensor(name), &dir.display().to_string())?;
        source_params += t.elem_count() as u64;
        write_param(&mut writer, p, &t, quant)?;
        progress(i + 1, params.len(), &p.name)?;
    }
    let cache = writer.finish(source_params)?;
    Ok(ConvertReport {
        output: output.display().to_string(),
        quantization: quantization.to_string(),
        num_tensors: cache.metadata.param_size,
        param_bytes: cache.metadata.param_bytes as u64,
        source_params,
        bits_per_param: cache.metadata.bits_per_param,
        num_shards: cache.records.len(),
    })
}

/// The f32 value of `p`: its HF parts concatenated along the rows (each checked against the rows the
/// plan gives it), plus one where MLC stores `1 + w`.
fn assemble(p: &MlcParam, tensor: impl Fn(&str) -> Result<Tensor>, shown: &str) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(p.hf_parts.len());
    for h in &p.hf_parts {
        let t = tensor(&h.name)?.to_dtype(DType::F32)?;
        if let Some((_, rows)) = h.rows {
            if t.dim(0)? != rows {
                let msg = format!("{} has {} rows, the config gives it {rows} (as part of {})", h.name, t.dim(0)?, p.name);
                return Err(EngineError::model_load(shown, msg));
            }
        }
        parts.push(t);
    }
    let t = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 0)? };
    Ok(if p.plus_one { (t + 1.0)? } else { t })
}

fn write_param(writer: &mut CacheWriter, p: &MlcParam, t: &Tensor, quant: Quantization) -> Result<()> {
    let shape = t.dims().to_vec();
    // Stacked experts are written with their leading expert dimension ([experts, rows / experts, ...]).
    let with_experts = |mut dims: Vec<usize>| -> Vec<usize> {
        if let Some(e) = p.experts {
            dims[0] /= e;
            dims.insert(0, e);
        }
        dims
    };
    match (quant, p.kind) {
        (Quantization::Group4(scale), ParamKind::Matrix) => {
            let (rows, cols) = t.dims2()?;
            if cols % group4::GROUP != 0 {
                return Err(EngineError::bad_request(
                    "quantization",
                    format!("{}: {cols} input columns are not a multiple of the group size {}", p.name, group4::GROUP),
                ));
            }
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            let packed = group4::quantize(&values, rows, cols, scale);
            writer.add(&format!("{}.q_weight", p.name), "uint32", &with_experts(vec![rows, cols / 8]), &packed.q_weight)?;
            writer.add(&format!("{}.q_scale", p.name), scale.mlc_name(), &with_experts(vec![rows, cols / group4::GROUP]), &packed.q_scale)
        }
        _ => {
            let dtype = match quant.model_dtype() {
                "float16" => DType::F16,
                "bfloat16" => DType::BF16,
                _ => DType::F32,
            };
            let full = format!("{}.{}", p.name, p.suffix);
            writer.add(&full, quant.model_dtype(), &with_experts(shape), &tensor_bytes(&t.to_dtype(dtype)?)?)
        }
    }
}

/// The little-endian bytes of a CPU tensor.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => return Err(EngineError::Unsupported(format!("writing {other:?} parameters"))),
    })
}
