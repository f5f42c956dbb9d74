//! GGUF files: llama.cpp's tensor names mapped to HF names, quantized or dequantized weights. MXFP4
//! tensors (gpt-oss's experts; a type candle does not read, gguf_mxfp4.rs) are dequantized at load.

use super::gguf_mxfp4::{self, Mxfp4Info};
use super::QuantMode;
use crate::error::{EngineError, Result};
use crate::model::config::{ModelConfig, NormPlacement};
use crate::model::gguf_meta::GgufMeta;
use crate::model::linear::{Linear, Weight};
use crate::model::weights::Mxfp4Experts;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct GgufWeights {
    content: gguf_file::Content,
    /// The tensors of type MXFP4, which `content` does not list.
    mxfp4: HashMap<String, Mxfp4Info>,
    // Reads seek the shared handle; loading happens on one thread, the lock only makes that explicit.
    file: Mutex<BufReader<File>>,
    path: PathBuf,
    device: Device,
    dtype: DType,
    quant: QuantMode,
    /// `post_attention_layernorm` is a branch-output norm (Gemma, OLMo 2), not the MLP's input norm.
    post_norms: bool,
}

pub fn load(path: &Path, device: &Device, dtype: DType, quant: QuantMode) -> Result<(ModelConfig, GgufWeights, Tokenizer)> {
    let shown = path.display().to_string();
    let mut file = BufReader::new(File::open(path).map_err(|e| EngineError::model_load(&shown, e.to_string()))?);
    let (content, mxfp4) = gguf_mxfp4::read_content(&mut file)
        .map_err(|e| EngineError::model_load(&shown, format!("not a valid GGUF file: {e}")))?;
    let file_len = file.get_ref().metadata().map_err(|e| EngineError::model_load(&shown, e.to_string()))?.len();
    check_tensor_infos(&content, file_len).map_err(|m| EngineError::model_load(&shown, m))?;
    check_mxfp4_infos(&mxfp4, content.tensor_data_offset, file_len).map_err(|m| EngineError::model_load(&shown, m))?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let read_f32 = |name: &str| -> Option<Vec<f32>> {
        let mut own = BufReader::new(File::open(path).ok()?);
        let t = content.tensor(&mut own, name, &Device::Cpu).ok()?;
        t.dequantize(&Device::Cpu).ok()?.flatten_all().ok()?.to_dtype(DType::F32).ok()?.to_vec1::<f32>().ok()
    };
    let meta = GgufMeta { md: &content.metadata, path: &shown, has_output_weight: has_output, read_f32: &read_f32, read: Default::default() };
    let config = crate::model::registry::config_from_gguf(&meta)?;
    let tokenizer = Tokenizer::from_gguf(&content, path)?;
    // llama.cpp names a branch-output norm `post_attention_norm` and the MLP's input norm `ffn_norm`;
    // HF's `post_attention_layernorm` is the one or the other depending on where the norms sit (gpt-oss,
    // pre-norm, names its MLP input norm `post_attention_norm`: `resolve`).
    let post_norms = config.norms != NormPlacement::Pre;
    let weights = GgufWeights { content, mxfp4, file: Mutex::new(file), path: path.to_path_buf(), device: device.clone(), dtype, quant, post_norms };
    Ok((config, weights, tokenizer))
}

/// Checks every tensor info against the file before any tensor is read: candle trusts them, and a
/// zero or huge dimension or an offset past the end would reach an allocation or a raw slice.
pub(crate) fn check_tensor_infos(content: &gguf_file::Content, file_len: u64) -> std::result::Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        if dims.is_empty() || dims.len() > 4 || dims.contains(&0) {
            return Err(format!("tensor {name} has shape {dims:?}"));
        }
        let elems = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= 1 << 40);
        let block = info.ggml_dtype.block_size() as u64;
        let Some(elems) = elems.filter(|n| n % block == 0) else {
            return Err(format!("tensor {name}: shape {dims:?} is out of range or not whole {:?} blocks", info.ggml_dtype));
        };
        let bytes = elems / block * info.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset.checked_add(info.offset).and_then(|o| o.checked_add(bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(format!("tensor {name} ends past the end of the file ({file_len} bytes): the file is truncated or corrupt"));
        }
    }
    Ok(())
}

/// [`check_tensor_infos`] for the MXFP4 tensors.
fn check_mxfp4_infos(infos: &HashMap<String, Mxfp4Info>, data_offset: u64, file_len: u64) -> std::result::Result<(), String> {
    for (name, info) in infos {
        if info.dims.is_empty() || info.dims.contains(&0) {
            return Err(format!("tensor {name} has shape {:?}", info.dims));
        }
        let Some(bytes) = info.bytes() else {
            return Err(format!("tensor {name}: shape {:?} is out of range or not whole MXFP4 blocks", info.dims));
        };
        let end = data_offset.checked_add(info.offset).and_then(|o| o.checked_add(bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(format!("tensor {name} ends past the end of the file ({file_len} bytes): the file is truncated or corrupt"));
        }
    }
    Ok(())
}

/// gpt-oss's fused expert tensors (`model.layers.3.mlp.experts.gate_up_proj` and `_bias`, `down_proj` and
/// `_bias`) -> their layer and which. llama.cpp keeps gate and up apart (`ffn_gate_exps`, `ffn_up_exps`:
/// the even and odd rows of HF's interleaved `gate_up_proj`) and every weight as `[E, out, in]`.
fn gpt_oss_expert(hf: &str) -> Option<(&str, &str)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, what) = rest.split_once(".mlp.experts.")?;
    ["gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"].contains(&what).then_some((idx, what))
}

/// A mixture's expert weight -> llama.cpp's tensor of all experts (`blk.3.ffn_gate_exps.weight`, `[E, out,
/// in]`) and the expert's index: Mixtral's `block_sparse_moe.experts.5.w1` (w1 / w3 / w2: gate / up /
/// down) and Qwen's `mlp.experts.5.gate_proj` / `up_proj` / `down_proj`.
fn gguf_expert(hf: &str) -> Option<(String, usize)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("block_sparse_moe.experts.").or_else(|| rest.strip_prefix("mlp.experts."))?;
    let (expert, rest) = rest.split_once('.')?;
    let (proj, suffix) = rest.split_once('.')?;
    let g = match proj {
        "w1" | "gate_proj" => "ffn_gate_exps",
        "w3" | "up_proj" => "ffn_up_exps",
        "w2" | "down_proj" => "ffn_down_exps",
        _ => return None,
    };
    Some((format!("blk.{idx}.{g}.{suffix}"), expert.parse().ok()?))
}

/// `model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (llama.cpp's names).
fn gguf_name(hf: &str, post_norms: bool) -> Option<String> {
    let fixed = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
    ];
    for (h, g) in fixed {
        if let Some(rest) = hf.strip_prefix(h) {
            return Some(format!("{g}{rest}"));
        }
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    // gpt-oss: one sink logit per head, a parameter without a suffix in HF.
    if rest == "self_attn.sinks" {
        return Some(format!("blk.{idx}.attn_sinks.weight"));
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if post_norms => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.qkv_proj" => "attn_qkv",
        // Phi-3: llama.cpp keeps the fused gate/up projection as ffn_up.
        "mlp.gate_up_proj" => "ffn_up",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        // Mixtures: the router, and Qwen2-MoE's shared expert with its gate.
        "block_sparse_moe.gate" | "mlp.gate" | "mlp.router" => "ffn_gate_inp",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{suffix}"))
}

impl GgufWeights {
    fn qtensor(&self, hf: &str) -> Result<QTensor> {
        self.qtensor_on(hf, &self.device)
    }

    fn qtensor_on(&self, hf: &str, device: &Device) -> Result<QTensor> {
        let shown = || self.path.display().to_string();
        if let Some((name, expert)) = gguf_expert(hf) {
            return self.expert_qtensor(&name, expert, device);
        }
        let name = self.resolve(hf).ok_or_else(|| EngineError::model_load(shown(), format!("no GGUF name for {hf}")))?;
        let mut file = self.file.lock().map_err(|_| EngineError::model_load(shown(), "file lock poisoned"))?;
        self.content.tensor(&mut *file, &name, device).map_err(|e| EngineError::model_load(shown(), format!("tensor {name}: {e}")))
    }

    /// Expert `expert` of the `[E, out, in]` tensor `name`: its rows are contiguous in the file (whole
    /// quantization blocks, as rows are), so only they are read.
    fn expert_qtensor(&self, name: &str, expert: usize, device: &Device) -> Result<QTensor> {
        let shown = || self.path.display().to_string();
        let info = self.content.tensor_infos.get(name).ok_or_else(|| EngineError::model_load(shown(), format!("no tensor {name}")))?;
        let &[experts, rows, cols] = info.shape.dims() else {
            return Err(EngineError::model_load(shown(), format!("tensor {name} has shape {:?}, not [experts, out, in]", info.shape.dims())));
        };
        if expert >= experts {
            return Err(EngineError::model_load(shown(), format!("tensor {name} has {experts} experts, expert {expert} was asked for")));
        }
        // check_tensor_infos checked at open that the whole tensor is whole blocks inside the file; rows
        // of whole blocks make each expert whole blocks too.
        if cols % info.ggml_dtype.block_size() != 0 {
            return Err(EngineError::model_load(shown(), format!("tensor {name}: rows of {cols} are not whole {:?} blocks", info.ggml_dtype)));
        }
        let bytes = (rows * cols / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()) as u64;
        let slice = gguf_file::TensorInfo { ggml_dtype: info.ggml_dtype, shape: (rows, cols).into(), offset: info.offset + expert as u64 * bytes };
        let mut file = self.file.lock().map_err(|_| EngineError::model_load(shown(), "file lock poisoned"))?;
        slice.read(&mut *file, self.content.tensor_data_offset, device).map_err(|e| EngineError::model_load(shown(), format!("tensor {name} expert {expert}: {e}")))
    }

    /// llama.cpp's name for `hf`. In a pre-norm model the one norm between attention and MLP is
    /// `ffn_norm` in most of llama.cpp's architectures and `post_attention_norm` in gpt-oss: either
    /// name means that norm there.
    fn resolve(&self, hf: &str) -> Option<String> {
        let name = gguf_name(hf, self.post_norms)?;
        if !self.post_norms && name.ends_with(".ffn_norm.weight") && !self.has(&name) {
            let alt = name.replace(".ffn_norm.", ".post_attention_norm.");
            if self.has(&alt) {
                return Some(alt);
            }
        }
        Some(name)
    }

    fn has(&self, gguf: &str) -> bool {
        self.content.tensor_infos.contains_key(gguf) || self.mxfp4.contains_key(gguf)
    }

    pub fn contains(&self, hf: &str) -> bool {
        if let Some((idx, what)) = gpt_oss_expert(hf) {
            let g = if what.starts_with("down") { "ffn_down_exps" } else { "ffn_gate_exps" };
            let suffix = if what.ends_with("_bias") { "bias" } else { "weight" };
            return self.has(&format!("blk.{idx}.{g}.{suffix}"));
        }
        let name = gguf_expert(hf).map(|(n, _)| n).or_else(|| self.resolve(hf));
        name.is_some_and(|n| self.has(&n))
    }

    /// The named tensor dequantized to the compute dtype.
    pub fn tensor(&self, hf: &str) -> Result<Tensor> {
        if let Some((idx, what)) = gpt_oss_expert(hf) {
            return Ok(self.gpt_oss_fused(idx, what)?.to_dtype(self.dtype)?.to_device(&self.device)?);
        }
        if let Some(t) = self.mxfp4_dense(hf)? {
            return Ok(t);
        }
        Ok(self.qtensor(hf)?.dequantize(&self.device)?.to_dtype(self.dtype)?)
    }

    /// gpt-oss's fused expert tensor `what` of layer `idx` as HF holds it, f32 on the CPU: `gate_up_proj`
    /// `[E, hidden, 2I]` with gate and up columns interleaved (from `ffn_gate_exps` / `ffn_up_exps`, `[E, I,
    /// hidden]` each), its bias `[E, 2I]` likewise, `down_proj` `[E, I, hidden]` (`ffn_down_exps` is `[E,
    /// hidden, I]`), its bias `[E, hidden]`.
    fn gpt_oss_fused(&self, idx: &str, what: &str) -> Result<Tensor> {
        let t = |g: &str, suffix: &str| self.f32_cpu(&format!("blk.{idx}.{g}.{suffix}"), None);
        let weight = !what.ends_with("_bias");
        let suffix = if weight { "weight" } else { "bias" };
        if what.starts_with("down") {
            let d = t("ffn_down_exps", suffix)?;
            return Ok(if weight { d.transpose(1, 2)?.contiguous()? } else { d });
        }
        let (gate, up) = (t("ffn_gate_exps", suffix)?, t("ffn_up_exps", suffix)?); // [E, I, hidden] / [E, I]
        if gate.dims() != up.dims() || gate.rank() != if weight { 3 } else { 2 } {
            return Err(EngineError::model_load(
                self.path.display().to_string(),
                format!("blk.{idx}.ffn_gate_exps.{suffix} {:?} and ffn_up_exps.{suffix} {:?} are not two [experts, intermediate{}] tensors", gate.dims(), up.dims(), if weight { ", hidden" } else { "" }),
            ));
        }
        let mut dims = gate.dims().to_vec();
        dims[1] *= 2;
        let rows = Tensor::stack(&[gate, up], 2)?.reshape(dims)?; // [E, 2I(, hidden)]: gate, up, gate, ...
        Ok(if weight { rows.transpose(1, 2)?.contiguous()? } else { rows })
    }

    /// The GGUF tensor `name` (or expert `expert` of its `[E, out, in]`), dequantized to f32 on the CPU.
    fn f32_cpu(&self, name: &str, expert: Option<usize>) -> Result<Tensor> {
        let shown = || self.path.display().to_string();
        if let Some(info) = self.mxfp4.get(name) {
            return self.read_mxfp4(name, info, expert);
        }
        let q = match expert {
            Some(e) => self.expert_qtensor(name, e, &Device::Cpu)?,
            None => {
                let mut file = self.file.lock().map_err(|_| EngineError::model_load(shown(), "file lock poisoned"))?;
                self.content.tensor(&mut *file, name, &Device::Cpu).map_err(|e| EngineError::model_load(shown(), format!("tensor {name}: {e}")))?
            }
        };
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// Whether the file holds any MXFP4 tensor.
    pub fn holds_mxfp4(&self) -> bool {
        !self.mxfp4.is_empty()
    }

    /// gpt-oss's experts at `prefix` (`model.layers.3.mlp.experts`) as their MXFP4 bytes, where the file
    /// holds all three as MXFP4 and the device keeps them so ([`super::keeps_mxfp4`]: the CPU's MXFP4
    /// kernels, CUDA's fused MoE).
    pub fn mxfp4_experts(&self, prefix: &str) -> Result<Option<Mxfp4Experts>> {
        if !super::keeps_mxfp4(self.device.location(), self.dtype, self.quant) {
            return Ok(None);
        }
        let Some(idx) = prefix.strip_prefix("model.layers.").and_then(|r| r.strip_suffix(".mlp.experts")) else { return Ok(None) };
        let name = |g: &str| format!("blk.{idx}.{g}.weight");
        let (Some(gate), Some(up), Some(down)) = (self.mxfp4.get(&name("ffn_gate_exps")), self.mxfp4.get(&name("ffn_up_exps")), self.mxfp4.get(&name("ffn_down_exps"))) else {
            return Ok(None);
        };
        let (&[e, i, h], &[e2, i2, h2], &[e3, h3, i3]) = (gate.dims.as_slice(), up.dims.as_slice(), down.dims.as_slice()) else {
            return Err(EngineError::model_load(self.path.display().to_string(), format!("{}: MXFP4 experts are not [experts, out, in]", name("ffn_gate_exps"))));
        };
        if (e, i, h) != (e2, i2, h2) || (e, i, h) != (e3, i3, h3) {
            return Err(EngineError::model_load(
                self.path.display().to_string(),
                format!("layer {idx}: MXFP4 experts gate {:?}, up {:?}, down {:?} do not fit [E, I, hidden] / [E, hidden, I]", gate.dims, up.dims, down.dims),
            ));
        }
        let (gate, up) = (self.mxfp4_bytes(&name("ffn_gate_exps"), gate)?, self.mxfp4_bytes(&name("ffn_up_exps"), up)?);
        let per = gate.len() / e.max(1); // one expert's I rows
        let gate_up = gate.chunks_exact(per).zip(up.chunks_exact(per)).flat_map(|(g, u)| g.iter().chain(u)).copied().collect();
        Ok(Some(Mxfp4Experts { experts: e, inter: i, hidden: h, gate_up, down: self.mxfp4_bytes(&name("ffn_down_exps"), down)? }))
    }

    /// An MXFP4 tensor's blocks as the file holds them.
    fn mxfp4_bytes(&self, name: &str, info: &Mxfp4Info) -> Result<Vec<u8>> {
        let err = |m: String| EngineError::model_load(self.path.display().to_string(), format!("tensor {name}: {m}"));
        // check_mxfp4_infos checked at open that the whole tensor is whole blocks inside the file.
        let bytes = info.bytes().ok_or_else(|| err("not whole MXFP4 blocks".into()))?;
        let mut buf = vec![0u8; bytes as usize];
        let mut file = self.file.lock().map_err(|_| err("file lock poisoned".into()))?;
        file.seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset)).map_err(|e| err(e.to_string()))?;
        file.read_exact(&mut buf).map_err(|e| err(e.to_string()))?;
        Ok(buf)
    }

    /// `hf`'s weight dequantized to the compute dtype when the file holds it as MXFP4 (`None`: another type).
    fn mxfp4_dense(&self, hf: &str) -> Result<Option<Tensor>> {
        let (name, expert) = match gguf_expert(hf) {
            Some((n, e)) => (n, Some(e)),
            None => match self.resolve(hf) {
                Some(n) => (n, None),
                None => return Ok(None),
            },
        };
        let Some(info) = self.mxfp4.get(&name) else { return Ok(None) };
        Ok(Some(self.read_mxfp4(&name, info, expert)?.to_dtype(self.dtype)?.to_device(&self.device)?))
    }

    /// An MXFP4 tensor (or expert `expert` of an `[E, out, in]` one: its rows are contiguous whole
    /// blocks) read and dequantized to f32 on the CPU, as ggml does.
    fn read_mxfp4(&self, name: &str, info: &Mxfp4Info, expert: Option<usize>) -> Result<Tensor> {
        let err = |m: String| EngineError::model_load(self.path.display().to_string(), format!("tensor {name}: {m}"));
        // check_mxfp4_infos checked at open that the whole tensor is whole blocks inside the file.
        let whole = info.bytes().ok_or_else(|| err("not whole MXFP4 blocks".into()))?;
        let (start, bytes, dims) = match (expert, info.dims.as_slice()) {
            (None, _) => (info.offset, whole, info.dims.clone()),
            (Some(e), &[experts, rows, cols]) if e < experts => {
                let per = whole / experts as u64;
                (info.offset + e as u64 * per, per, vec![rows, cols])
            }
            (Some(e), dims) => return Err(err(format!("shape {dims:?} has no expert {e} ([experts, out, in])"))),
        };
        let mut buf = vec![0u8; bytes as usize];
        {
            let mut file = self.file.lock().map_err(|_| err("file lock poisoned".into()))?;
            file.seek(SeekFrom::Start(self.content.tensor_data_offset + start)).map_err(|e| err(e.to_string()))?;
            file.read_exact(&mut buf).map_err(|e| err(e.to_string()))?;
        }
        Ok(Tensor::from_vec(crate::quant::mxfp4::dequantize_ggml(&buf), dims, &Device::Cpu)?)
    }

    pub fn linear(&self, hf_prefix: &str, bias: bool) -> Result<Linear> {
        #[cfg(feature = "cuda")]
        if let Some(weight) = self.q4_cuda(&format!("{hf_prefix}.weight"))? {
            let bias = if bias { Some(self.tensor(&format!("{hf_prefix}.bias"))?) } else { None };
            return Ok(Linear { weight, bias });
        }
        if let Some(weight) = self.mxfp4_dense(&format!("{hf_prefix}.weight"))? {
            let bias = if bias { Some(self.tensor(&format!("{hf_prefix}.bias"))?) } else { None };
            return Ok(Linear { weight: Weight::Dense(weight), bias });
        }
        let q = self.qtensor(&format!("{hf_prefix}.weight"))?;
        let float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let weight = if self.quant == QuantMode::Quantized && !float {
            Weight::Quantized(QMatMul::from_qtensor(q)?)
        } else {
            Weight::Dense(q.dequantize(&self.device)?.to_dtype(self.dtype)?)
        };
        let bias = if bias { Some(self.tensor(&format!("{hf_prefix}.bias"))?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// A Q4_0 weight kept quantized on a CUDA device, as raw blocks for our kernels (read on the host, then
    /// uploaded once); `None` for any other type, device or mode.
    #[cfg(feature = "cuda")]
    fn q4_cuda(&self, hf: &str) -> Result<Option<Weight>> {
        let is_q4 = self
            .resolve(hf)
            .and_then(|n| self.content.tensor_infos.get(&n))
            .is_some_and(|info| info.ggml_dtype == GgmlDType::Q4_0);
        if !(is_q4 && self.device.is_cuda() && self.quant == QuantMode::Quantized) {
            return Ok(None);
        }
        let q = self.qtensor_on(hf, &Device::Cpu)?;
        let (n, k) = q.shape().dims2()?;
        let w = crate::model::q4::Q4Weight::from_blocks(&q.data()?, n, k, &self.device)?;
        Ok(Some(Weight::Q4Cuda(w)))
    }
}
