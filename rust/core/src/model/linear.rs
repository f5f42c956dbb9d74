//! A linear layer whose weight is either a dense tensor or a GGUF-quantized one, and projections that
//! read the same input stacked into one matrix at load (q/k/v, gate/up): one matmul instead of several.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{Module, Result, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Weight {
    /// `[out, in]`, in the compute dtype.
    Dense(Tensor),
    /// GGUF-quantized blocks. On the CPU, Q4_0 / Q4_1 / Q8_0 run our kernels (`quant::cpu`: 8-bit
    /// activations, integer dot products, instruction set chosen at run time); other types and devices
    /// run candle's quantized matmul.
    Quantized(QMatMul),
    /// GGUF Q4_0 blocks on a CUDA device, multiplied by our own kernels.
    #[cfg(feature = "cuda")]
    Q4Cuda(super::q4::Q4Weight),
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
            #[cfg(feature = "cuda")]
            Weight::Dense(w) if super::dense_gemv::takes(x, w, false) => super::dense_gemv::forward(x, w)?,
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Quantized(QMatMul::QTensor(q)) if crate::quant::cpu::op::supports(q, x) => crate::quant::cpu::op::forward(q, x)?,
            Weight::Quantized(q) => q.forward(x)?,
            #[cfg(feature = "cuda")]
            Weight::Q4Cuda(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl Linear {
    /// The layers' weights stacked along the output dimension (`[sum of outs, in]`, rows in order) and
    /// their biases concatenated, or `None` where they cannot be stacked exactly: dense weights of one
    /// dtype stack on a GPU; GGUF-quantized ones (candle's or our CUDA Q4_0 ones) only when all share one
    /// quantized type, whose blocks run along a row, so stacking concatenates the raw rows (each output is
    /// then computed exactly as before); any mix (a Q6_K v beside Q4_K q/k, a dense part beside a quantized one, a bias on some
    /// parts only) stays separate. Dense weights on the CPU stay separate too: the CPU matmul's blocking
    /// depends on the output width, so a stacked one could differ from the separate ones in the last
    /// bits, and the CPU is not bound by launches.
    pub fn stack(parts: &[Linear]) -> Result<Option<Linear>> {
        let Some(first) = parts.first() else { return Ok(None) };
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(Tensor::cat(&parts.iter().filter_map(|p| p.bias.as_ref()).collect::<Vec<_>>(), 0)?)
        } else if parts.iter().all(|p| p.bias.is_none()) {
            None
        } else {
            return Ok(None);
        };
        let weight = match &first.weight {
            Weight::Dense(w0) if w0.device().is_cpu() => return Ok(None),
            Weight::Dense(w0) => {
                let mut ws = Vec::with_capacity(parts.len());
                for p in parts {
                    match &p.weight {
                        Weight::Dense(w) if w.dtype() == w0.dtype() && w.dim(1)? == w0.dim(1)? => ws.push(w),
                        _ => return Ok(None),
                    }
                }
                Weight::Dense(Tensor::cat(&ws, 0)?)
            }
            Weight::Quantized(q0) => match stack_quantized(q0, parts)? {
                Some(q) => Weight::Quantized(q),
                None => return Ok(None),
            },
            #[cfg(feature = "cuda")]
            Weight::Q4Cuda(_) => {
                let qs: Option<Vec<_>> = parts
                    .iter()
                    .map(|p| match &p.weight {
                        Weight::Q4Cuda(q) => Some(q),
                        _ => None,
                    })
                    .collect();
                match qs {
                    Some(qs) => match super::q4::Q4Weight::stack(&qs)? {
                        Some(q) => Weight::Q4Cuda(q),
                        None => return Ok(None),
                    },
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(Linear { weight, bias }))
    }
}

fn stack_quantized(q0: &QMatMul, parts: &[Linear]) -> Result<Option<QMatMul>> {
    let qs: Vec<&QMatMul> = parts
        .iter()
        .map(|p| match &p.weight {
            Weight::Quantized(q) => Some(q),
            _ => None,
        })
        .collect::<Option<_>>()
        .unwrap_or_default();
    if qs.len() != parts.len() {
        return Ok(None);
    }
    match q0 {
        QMatMul::QTensor(t0) => {
            let (dtype, device) = (t0.dtype(), t0.device());
            let cols = t0.shape().dims2()?.1;
            let mut rows = 0;
            let mut raw = Vec::new();
            for q in &qs {
                let QMatMul::QTensor(t) = q else { return Ok(None) };
                let (r, c) = t.shape().dims2()?;
                if t.dtype() != dtype || c != cols {
                    return Ok(None);
                }
                rows += r;
                raw.extend_from_slice(&t.data()?);
            }
            Ok(Some(QMatMul::QTensor(Arc::new(qtensor_from_ggml(dtype, &raw, vec![rows, cols], &device)?))))
        }
        // Types candle keeps as plain tensors (f32 / f16 in a GGUF).
        QMatMul::Tensor(w0) | QMatMul::TensorF16(w0) => {
            let mut ws = Vec::with_capacity(qs.len());
            for q in &qs {
                match (q0, q) {
                    (QMatMul::Tensor(_), QMatMul::Tensor(w)) | (QMatMul::TensorF16(_), QMatMul::TensorF16(w))
                        if w.dtype() == w0.dtype() && w.dim(1)? == w0.dim(1)? =>
                    {
                        ws.push(w)
                    }
                    _ => return Ok(None),
                }
            }
            let w = Tensor::cat(&ws, 0)?;
            Ok(Some(if matches!(q0, QMatMul::Tensor(_)) { QMatMul::Tensor(w) } else { QMatMul::TensorF16(w) }))
        }
    }
}

/// Projections of one input: stacked into one matmul where [`Linear::stack`] allows it, else run one by
/// one and concatenated, so either way `forward` gives `[num_tokens, sum of outs]` with the parts in
/// order.
#[derive(Debug, Clone)]
pub enum StackedLinear {
    Stacked(Linear),
    Separate(Vec<Linear>),
}

impl StackedLinear {
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        Ok(match Linear::stack(&parts)? {
            Some(l) => StackedLinear::Stacked(l),
            None => StackedLinear::Separate(parts),
        })
    }

    pub fn is_stacked(&self) -> bool {
        matches!(self, StackedLinear::Stacked(_))
    }

    /// For a stacked gate/up pair: `x: [num_tokens, in] -> [num_tokens, out]` silu(gate) * up. A Q4_0
    /// weight on CUDA, and a 16-bit one at the batches our dense GEMV takes (`dense_gemv::takes`: one
    /// token by default), compute it inside their GEMV; everything else runs `forward` then `silu_mul`.
    pub fn forward_silu_mul(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        match self {
            StackedLinear::Stacked(Linear { weight: Weight::Q4Cuda(q), bias: None }) => return q.forward_silu_mul(x),
            StackedLinear::Stacked(Linear { weight: Weight::Dense(w), bias: None }) if super::dense_gemv::takes(x, w, true) => {
                return super::dense_gemv::forward_silu_mul(x, w);
            }
            _ => {}
        }
        super::fused::silu_mul(&self.forward(x)?)
    }

    /// `x: [num_tokens, in] -> [num_tokens, sum of outs]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            StackedLinear::Stacked(l) => l.forward(x),
            StackedLinear::Separate(parts) => {
                let ys = parts.iter().map(|p| p.forward(x)).collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, 1)
            }
        }
    }
}
