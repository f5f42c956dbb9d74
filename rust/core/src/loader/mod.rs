//! Finds a model on disk and gives its weights by their Hugging Face names, whatever the file format.

mod gguf;
mod gguf_mxfp4;
mod mlc;
pub mod mlc_config;
mod safetensors;
pub mod tensor_cache;

use crate::error::{EngineError, Result};
use crate::model::config::ModelConfig;
use crate::model::linear::Linear;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, DeviceLocation, Tensor};
use std::path::{Path, PathBuf};

pub use gguf::GgufWeights;
pub(crate) use gguf::check_tensor_infos as check_gguf_tensor_infos;
pub use mlc::MlcWeights;
pub use mlc_config::{MlcChatConfig, Quantization};
pub use safetensors::SafetensorsWeights;
pub(crate) use safetensors::{open as open_safetensors, read_config as read_hf_config};

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
    Mlc(MlcWeights),
}

/// Whether the loaders hand gpt-oss's MXFP4 experts over as blocks (`WeightSource::mxfp4_experts`) rather
/// than read them dense, on a device at `location` computing in `dtype`: on the CPU's quantized path (its
/// MXFP4 kernels), and on CUDA in bf16, where the fused MoE's MXFP4 kernel takes them (4.25 bits a weight
/// instead of 16). On CUDA that is whatever `quant` says: the kernel is exact (every MXFP4 value is a bf16
/// value), so there is no fidelity to trade. Not in f16 (2^(e - 128) leaves its range; read dense as
/// before), nor with MLC_MOE_FUSED=0 (the host-routed path takes dense experts), nor in a build without
/// CUDA, nor with `MLC_CUDA_MXFP4=0` (the experts read dense, as before the kernel; checked on an H100:
/// tests/gpu/test_moe_mxfp4_gpu.py, rust/kernels/emulate/check_moe.py --gpu).
pub fn keeps_mxfp4(location: DeviceLocation, dtype: DType, quant: QuantMode) -> bool {
    match location {
        DeviceLocation::Cpu => quant == QuantMode::Quantized,
        DeviceLocation::Cuda { .. } => {
            cfg!(feature = "cuda") && dtype == DType::BF16 && cuda_mxfp4_enabled() && !crate::model::layers::moe::fused_disabled_by_env()
        }
        _ => false,
    }
}

/// Unless `MLC_CUDA_MXFP4=0` (read once): MXFP4 experts stay in 4 bits on CUDA (see [`keeps_mxfp4`]).
pub fn cuda_mxfp4_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !crate::switches::off("MLC_CUDA_MXFP4"))
}

impl Weights {
    /// Whether gpt-oss's experts come as MXFP4 blocks that a loader keeping MXFP4 ([`keeps_mxfp4`]) hands
    /// over (see `WeightSource::mxfp4_experts`; checked on the first layer's names, without reading them).
    pub fn keeps_mxfp4_experts(&self) -> bool {
        match self {
            Weights::Gguf(w) => w.contains("model.layers.0.mlp.experts.gate_up_proj") && w.holds_mxfp4(),
            Weights::Safetensors(w) => w.contains("model.layers.0.mlp.experts.gate_up_proj_blocks"),
            Weights::Mlc(_) => false,
        }
    }
}

impl crate::model::WeightSource for Weights {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        match self {
            Weights::Gguf(w) => w.tensor(name),
            Weights::Safetensors(w) => w.tensor(name),
            Weights::Mlc(w) => w.tensor(name),
        }
    }
    fn linear(&self, name: &str, bias: bool) -> Result<Linear> {
        match self {
            Weights::Gguf(w) => w.linear(name, bias),
            Weights::Safetensors(w) => w.linear(name, bias),
            Weights::Mlc(w) => w.linear(name, bias),
        }
    }
    fn contains(&self, name: &str) -> bool {
        match self {
            Weights::Gguf(w) => w.contains(name),
            Weights::Safetensors(w) => w.contains(name),
            Weights::Mlc(w) => w.contains(name),
        }
    }
    fn mxfp4_experts(&self, prefix: &str) -> Result<Option<crate::model::weights::Mxfp4Experts>> {
        match self {
            Weights::Gguf(w) => w.mxfp4_experts(prefix),
            Weights::Safetensors(w) => w.mxfp4_experts(prefix),
            Weights::Mlc(_) => Ok(None),
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
    /// The directory's `mlc-chat-config.json`, for MLC directories.
    pub mlc_config: Option<MlcChatConfig>,
}

/// `model` is a GGUF file, an HF directory, or the path of a config file inside one.
pub fn load(model: &str, device: &Device, dtype: DType, quant: QuantMode) -> Result<LoadedModel> {
    if let Some(local) = crate::hub::resolve(model)? {
        let loaded = load(&local.to_string_lossy(), device, dtype, quant)?;
        return Ok(LoadedModel { name: crate::hub::repo_id(model).unwrap_or(loaded.name.clone()), ..loaded });
    }
    let path = PathBuf::from(model);
    if !path.exists() {
        return Err(EngineError::model_load(model, "no such file or directory"));
    }
    check_regular(&path)?;
    let (kind_path, is_gguf) = if path.is_dir() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        // An MLC directory may also hold the HF config.json it was converted from: its weights are MLC's.
        if path.join(mlc_config::CHAT_CONFIG).exists() {
            return load_mlc(&path, device, dtype);
        } else if path.join("config.json").exists() {
            (path.clone(), false)
        } else if ggufs.len() == 1 {
            (ggufs[0].clone(), true)
        } else {
            return Err(EngineError::model_load(model, "directory holds neither config.json, mlc-chat-config.json nor exactly one .gguf file"));
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
        Ok(LoadedModel { config, weights: Weights::Gguf(weights), tokenizer, name, path: kind_path, mlc_config: None })
    } else {
        let (config, weights) = safetensors::load(&kind_path, device, dtype, quant)?;
        let tokenizer = Tokenizer::from_hf_dir(&kind_path)?;
        Ok(LoadedModel { config, weights: Weights::Safetensors(weights), tokenizer, name, path: kind_path, mlc_config: None })
    }
}

/// The architecture and weights of a model directory without its tokenizer (an EAGLE head): an MLC
/// directory (`mlc-chat-config.json`) or an HF one (`config.json` + safetensors).
/// Refuses a model path, or a file in a model directory, that is neither a regular file nor a
/// directory: reading a FIFO blocks until someone writes to it, and a device can stream forever.
fn check_regular(path: &Path) -> Result<()> {
    let special = |p: &Path| std::fs::metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir());
    let refuse = |p: &Path| Err(EngineError::model_load(p.display().to_string(), "not a regular file (a FIFO, socket or device)"));
    if special(path) {
        return refuse(path);
    }
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let p = entry?.path();
            if special(&p) {
                return refuse(&p);
            }
        }
    }
    Ok(())
}

pub fn load_weights(model: &str, device: &Device, dtype: DType) -> Result<(ModelConfig, Weights)> {
    let path = PathBuf::from(model);
    let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    check_regular(&dir)?;
    if dir.join(mlc_config::CHAT_CONFIG).exists() {
        let (config, _, weights) = mlc::load(&dir, device, dtype)?;
        return Ok((config, Weights::Mlc(weights)));
    }
    if !dir.join("config.json").exists() {
        return Err(EngineError::model_load(model, "expected a directory with config.json or mlc-chat-config.json"));
    }
    let weights = safetensors::open(&dir, device, dtype)?;
    let config = crate::model::registry::eagle_config_from_hf(&safetensors::read_config(&dir)?, &dir.join("config.json").display().to_string())?;
    Ok((config, Weights::Safetensors(weights)))
}

/// The 16-bit type a model's weights are stored in (HF `torch_dtype` / `dtype`, an MLC quantization's model
/// dtype); `None` for f32, GGUF files and anything unreadable.
pub fn native_dtype(model: &str) -> Option<DType> {
    let path = PathBuf::from(model);
    if path.extension().is_some_and(|x| x == "gguf") {
        return None;
    }
    let dir = if path.is_dir() { path } else { path.parent()?.to_path_buf() };
    check_regular(&dir).ok()?;
    let sixteen = |name: &str| match name {
        "float16" => Some(DType::F16),
        "bfloat16" => Some(DType::BF16),
        _ => None,
    };
    if dir.join(mlc_config::CHAT_CONFIG).exists() {
        let quant = MlcChatConfig::read(&dir).ok()?.quantization(model).ok()?;
        return sixteen(quant.model_dtype());
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(|d| d.as_str()).and_then(sixteen)
}

fn load_mlc(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let (config, chat, weights) = mlc::load(dir, device, dtype)?;
    let mut tokenizer = Tokenizer::from_hf_dir(dir)?;
    if let Some(value) = &chat.conv_template {
        match crate::tokenizer::ConvTemplate::from_config_value(value) {
            Ok(conv) => tokenizer = tokenizer.with_conv_template(conv),
            // A template name we do not know: the tokenizer's Jinja template (if any) still renders chats.
            Err(e) if value.is_string() => log::warn!("{}: conv_template: {e}; using the tokenizer's chat template", dir.display()),
            Err(e) => return Err(EngineError::model_load(dir.join(mlc_config::CHAT_CONFIG).display().to_string(), format!("field \"conv_template\": {e}"))),
        }
    }
    Ok(LoadedModel { config, weights: Weights::Mlc(weights), tokenizer, name: model_name(dir), path: dir.to_path_buf(), mlc_config: Some(chat) })
}

fn model_name(path: &Path) -> String {
    let stem = if path.is_dir() { path.file_name() } else { path.file_stem() };
    stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}

#[cfg(test)]
mod mxfp4_tests {
    use super::{keeps_mxfp4, QuantMode};
    use candle_core::{DType, DeviceLocation};

    /// MXFP4 experts stay in 4 bits on the CPU's quantized path and on CUDA in bf16 (a build with CUDA,
    /// unless MLC_CUDA_MXFP4=0), whatever the quantization mode there; f16 on CUDA reads them dense.
    #[test]
    fn mxfp4_experts_are_kept_where_a_kernel_takes_them() {
        let cuda = DeviceLocation::Cuda { gpu_id: 0 };
        assert!(keeps_mxfp4(DeviceLocation::Cpu, DType::F32, QuantMode::Quantized));
        assert!(!keeps_mxfp4(DeviceLocation::Cpu, DType::F32, QuantMode::Dequantize));
        for quant in [QuantMode::Quantized, QuantMode::Dequantize] {
            let fused = !crate::model::layers::moe::fused_disabled_by_env();
            assert_eq!(keeps_mxfp4(cuda, DType::BF16, quant), cfg!(feature = "cuda") && fused && super::cuda_mxfp4_enabled());
            assert!(!keeps_mxfp4(cuda, DType::F16, quant));
        }
    }
}
