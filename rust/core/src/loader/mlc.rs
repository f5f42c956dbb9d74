//! MLC model directories: parameters from the tensor cache, served under HF names. Which MLC parameter
//! holds an HF tensor, and which of its rows, is the converter's table ([`crate::convert::plan`]): MLC fuses
//! q/k/v (`qkv_proj`, `c_attn` for Qwen) and gate/up (`gate_up_proj`) into one matrix each and names some
//! modules its own way (Phi-3's `transformer.h.N.mixer`, Gemma 3's `language_model.` prefix); the model asks
//! for the HF parts, so the fused rows are split here (and stacked back by the model where that pays off).
//! Gemma's norms are stored as `1 + w` (the config then says so, see [`super::mlc_config`]).
//! 4-bit weights with f16 scales stay quantized as GGML Q4_0 blocks (exact, see [`crate::quant::group4`]);
//! other scale types are dequantized at load.

use super::mlc_config::{MlcChatConfig, Quantization};
use super::tensor_cache::{self, RawParam};
use crate::convert::plan::{self, Location};
use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::linear::{Linear, Weight};
use crate::quant::group4::{self, ScaleType};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct MlcWeights {
    params: HashMap<String, RawParam>,
    quant: Quantization,
    /// HF name -> the MLC parameter (and rows) holding it; names not listed are stored under their own.
    locations: HashMap<String, Location>,
    device: Device,
    dtype: DType,
    dir: PathBuf,
}

/// Which stored matrix holds an HF-named one, and which of its rows.
struct Source {
    base: String,
    rows: Option<(usize, usize)>,
}

pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(ModelConfig, MlcChatConfig, MlcWeights)> {
    let chat = MlcChatConfig::read(dir)?;
    let shown = dir.join(super::mlc_config::CHAT_CONFIG).display().to_string();
    let quant = chat.quantization(&shown)?;
    let config = chat.model_config(&shown)?;
    let params = tensor_cache::read_params(dir)?;
    let layout = if chat.model_type == "eagle" { plan::eagle_params(&config, |_| true) } else { plan::mlc_params(&config, |_| true) };
    let weights = MlcWeights {
        params,
        quant,
        locations: plan::locations(&layout),
        device: device.clone(),
        dtype,
        dir: dir.to_path_buf(),
    };
    Ok((config, chat, weights))
}

impl MlcWeights {
    fn error(&self, message: impl Into<String>) -> EngineError {
        EngineError::model_load(self.dir.display().to_string(), message)
    }

    /// `model.layers.3.self_attn.k_proj` (+ `weight`) -> rows of `model.layers.3.self_attn.qkv_proj`.
    fn source(&self, hf_prefix: &str, suffix: &str) -> Source {
        match self.locations.get(&format!("{hf_prefix}.{suffix}")) {
            Some(l) => Source { base: l.name.clone(), rows: l.rows },
            None => Source { base: hf_prefix.to_string(), rows: None },
        }
    }

    fn param(&self, name: &str) -> Result<&RawParam> {
        self.params.get(name).ok_or_else(|| self.error(format!("parameter {name} is not in the tensor cache")))
    }

    pub fn contains(&self, hf: &str) -> bool {
        let (prefix, suffix) = hf.rsplit_once('.').unwrap_or((hf, ""));
        let base = self.source(prefix, suffix).base;
        self.params.contains_key(&format!("{base}.{suffix}")) || (suffix == "weight" && self.params.contains_key(&format!("{base}.q_weight")))
    }

    /// A float parameter (`[rows, ...]`), optionally a row range of it, in the compute dtype.
    fn float_param(&self, name: &str, rows: Option<(usize, usize)>) -> Result<Tensor> {
        let p = self.param(name)?;
        let dtype = match p.dtype.as_str() {
            "float32" => DType::F32,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            other => return Err(self.error(format!("parameter {name} has dtype {other}, expected a float type"))),
        };
        let t = Tensor::from_raw_buffer(&p.bytes, dtype, &p.shape, &Device::Cpu)?;
        // Stacked experts `[E, rows, cols]`: their rows count over both leading dimensions.
        let t = if p.shape.len() == 3 { t.reshape((p.shape[0] * p.shape[1], p.shape[2]))? } else { t };
        let t = match rows {
            Some((start, len)) => t.narrow(0, start, len)?,
            None => t,
        };
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// The named tensor (HF name), dequantized if it is stored 4-bit.
    pub fn tensor(&self, hf: &str) -> Result<Tensor> {
        let (prefix, suffix) = hf.rsplit_once('.').unwrap_or((hf, ""));
        let src = self.source(prefix, suffix);
        let dense = format!("{}.{suffix}", src.base);
        if self.params.contains_key(&dense) || suffix != "weight" {
            return self.float_param(&dense, src.rows);
        }
        let (q_weight, q_scale, rows, cols, scale) = self.packed(&src)?;
        let values = group4::dequantize(q_weight, q_scale, rows, cols, scale);
        Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// The packed bytes of a 4-bit matrix (or its row range), with its shape and scale type.
    fn packed(&self, src: &Source) -> Result<(&[u8], &[u8], usize, usize, ScaleType)> {
        let Quantization::Group4(scale) = self.quant else {
            return Err(self.error(format!("parameter {}.weight is not in the tensor cache", src.base)));
        };
        let w_name = format!("{}.q_weight", src.base);
        let s_name = format!("{}.q_scale", src.base);
        let (w, s) = (self.param(&w_name)?, self.param(&s_name)?);
        // Stacked experts carry a leading expert dimension: their rows are the rows of every expert in turn.
        let dims_ok = |d: &[usize]| d.len() == 2 || d.len() == 3;
        if w.dtype != "uint32" || !dims_ok(&w.shape) || w.shape.len() != s.shape.len() || s.dtype != scale.mlc_name() {
            return Err(self.error(format!(
                "{w_name} / {s_name}: expected uint32 [rows, cols/8] and {} [rows, cols/32] (with a leading expert dimension for experts), found {} {:?} and {} {:?}",
                scale.mlc_name(), w.dtype, w.shape, s.dtype, s.shape
            )));
        }
        let (all_rows, cols) = (w.shape[..w.shape.len() - 1].iter().product::<usize>(), w.shape[w.shape.len() - 1] * 8);
        group4::check_sizes(&w.bytes, &s.bytes, all_rows, cols, scale).map_err(|m| self.error(format!("{w_name}: {m}")))?;
        let (start, rows) = src.rows.unwrap_or((0, all_rows));
        if start + rows > all_rows {
            return Err(self.error(format!("{w_name} has {all_rows} rows, the model config needs {}", start + rows)));
        }
        let (wb, sb) = (cols / 2, cols / group4::GROUP * scale.size());
        Ok((&w.bytes[start * wb..(start + rows) * wb], &s.bytes[start * sb..(start + rows) * sb], rows, cols, scale))
    }

    pub fn linear(&self, hf_prefix: &str, bias: bool) -> Result<Linear> {
        let src = self.source(hf_prefix, "weight");
        let bias = if bias {
            let b = self.source(hf_prefix, "bias");
            Some(self.float_param(&format!("{}.bias", b.base), b.rows)?)
        } else {
            None
        };
        let weight = if self.params.contains_key(&format!("{}.weight", src.base)) {
            Weight::Dense(self.float_param(&format!("{}.weight", src.base), src.rows)?)
        } else {
            let (q_weight, q_scale, rows, cols, scale) = self.packed(&src)?;
            if scale == ScaleType::F16 {
                self.q4_0(&group4::to_q4_0(q_weight, q_scale, rows, cols), rows, cols)?
            } else {
                let values = group4::dequantize(q_weight, q_scale, rows, cols, scale);
                Weight::Dense(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device)?)
            }
        };
        Ok(Linear { weight, bias })
    }

    /// Q4_0 blocks as a weight of the compute device: our CUDA kernels on a GPU, candle's quantized matmul
    /// on the CPU.
    fn q4_0(&self, blocks: &[u8], rows: usize, cols: usize) -> Result<Weight> {
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            return Ok(Weight::Q4Cuda(crate::model::q4::Q4Weight::from_blocks(blocks, rows, cols, &self.device)?));
        }
        let q = qtensor_from_ggml(GgmlDType::Q4_0, blocks, vec![rows, cols], &self.device)?;
        Ok(Weight::Quantized(QMatMul::QTensor(Arc::new(q))))
    }
}
