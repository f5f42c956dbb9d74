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
}
