//! A linear layer whose weight is either a dense tensor or a GGUF-quantized one.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub enum Weight {
    /// `[out, in]`, in the compute dtype.
    Dense(Tensor),
    /// Quantized blocks multiplied by candle's quantized kernels (activations go through 8-bit on CPU).
    Quantized(QMatMul),
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    /// `[out]`
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `x: [num_tokens, in] -> [num_tokens, out]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Quantized(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
