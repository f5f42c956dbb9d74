//! Where a model's weights come from, by their Hugging Face names: the loaders (safetensors, GGUF, MLC
//! tensor cache) implement this, so models never depend on a file format.

use super::linear::Linear;
use crate::error::Result;
use candle_core::Tensor;

pub trait WeightSource {
    /// The named tensor (`model.norm.weight`) in the compute dtype on the compute device.
    fn tensor(&self, name: &str) -> Result<Tensor>;
    /// The linear layer at `prefix` (`model.layers.0.self_attn.q_proj`): its weight, kept quantized where
    /// the source and device allow, and its bias when `bias`.
    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear>;
    fn contains(&self, name: &str) -> bool;
    /// gpt-oss's experts at `prefix` (`model.layers.3.mlp.experts`) as llama.cpp's MXFP4 blocks, where the
    /// source holds them so and keeps weights quantized on the CPU; `None` otherwise (then
    /// [`WeightSource::tensor`] reads them dense).
    fn mxfp4_experts(&self, _prefix: &str) -> Result<Option<Mxfp4Experts>> {
        Ok(None)
    }
}

/// One layer's gpt-oss experts as llama.cpp's MXFP4 rows (17-byte blocks of 32), expert after expert:
/// `gate_up` `[experts, 2 inter, hidden]` (each expert's gate rows, then its up rows: one matmul gives the
/// dense path's gate-then-up columns), `down` `[experts, hidden, inter]`.
#[derive(Debug, Clone)]
pub struct Mxfp4Experts {
    pub experts: usize,
    pub inter: usize,
    pub hidden: usize,
    pub gate_up: Vec<u8>,
    pub down: Vec<u8>,
}
