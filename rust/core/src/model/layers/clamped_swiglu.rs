//! gpt-oss's experts: every expert of a layer in fused 3D tensors with biases, each a clamped SwiGLU
//! MLP, as transformers' `GptOssExperts` computes one expert:
//! `gu = x @ gate_up_proj[e] + gate_up_proj_bias[e]`, `gate = gu[..., ::2].clamp(max = limit)`,
//! `up = gu[..., 1::2].clamp(-limit, limit)`, `h = (up + 1) * gate * sigmoid(gate * alpha)`,
//! `out = h @ down_proj[e] + down_proj_bias[e]`, every step in the weights' dtype. llama.cpp's MXFP4
//! experts stay in 4 bits on the CPU (the quantized path), multiplied by the CPU's MXFP4 kernels, and on
//! CUDA in bf16, where the fused MoE (moe_cuda.rs) stacks them for its MXFP4 kernel (or, where it cannot
//! take them, they are dequantized: [`ClampedSwigluExperts::densify`]).

use crate::error::Result;
use crate::model::config::ClampedSwiglu;
use crate::model::weights::{Mxfp4Experts, WeightSource};
use crate::quant::cpu::{self as qcpu, QMatrix, QType};
use candle_core::{DType, Device, IndexOp, Tensor};

/// The experts' projection weights.
enum Weights {
    Dense {
        /// `[E, hidden, 2I]`: per expert, the gate columns then the up columns (the checkpoint interleaves
        /// them; split once at load so each forward takes two plain halves).
        gate_up: Tensor,
        /// `[E, I, hidden]`
        down: Tensor,
    },
    /// MXFP4 rows as llama.cpp stores them, each expert's gate rows then its up rows, kept in 4 bits
    /// (host bytes: the CPU's kernels read them, the fused MoE on CUDA uploads them).
    Mxfp4(Mxfp4Experts),
}

/// The experts' projection weights as the fused MoE on CUDA stacks them.
#[cfg(feature = "cuda")]
pub(crate) enum ExpertWeights<'a> {
    /// gate_up `[E, hidden, 2I]`, down `[E, I, hidden]`.
    Dense { gate_up: &'a Tensor, down: &'a Tensor },
    /// llama.cpp's MXFP4 rows: gate_up `[E, 2I, hidden]` (gate rows then up rows), down `[E, hidden, I]`.
    Mxfp4(&'a Mxfp4Experts),
}

pub struct ClampedSwigluExperts {
    weights: Weights,
    /// `[E, 2I]`, gate then up.
    gate_up_bias: Tensor,
    /// `[E, hidden]`
    down_bias: Tensor,
    act: ClampedSwiglu,
}

impl ClampedSwigluExperts {
    /// The experts at `p` (`model.layers.3.mlp.experts`).
    pub fn load(w: &dyn WeightSource, p: &str, act: ClampedSwiglu) -> Result<Self> {
        let t = |name: &str| w.tensor(&format!("{p}.{name}"));
        let weights = match w.mxfp4_experts(p)? {
            Some(m) => Weights::Mxfp4(m),
            None => Weights::Dense { gate_up: deinterleave(&t("gate_up_proj")?)?, down: t("down_proj")? },
        };
        Ok(ClampedSwigluExperts { weights, gate_up_bias: deinterleave(&t("gate_up_proj_bias")?)?, down_bias: t("down_proj_bias")?, act })
    }

    /// The projection weights, the biases gate_up `[E, 2I]` and down `[E, hidden]`, and the activation's
    /// constants (the fused MoE on CUDA stacks them).
    #[cfg(feature = "cuda")]
    pub(crate) fn parts(&self) -> (ExpertWeights<'_>, &Tensor, &Tensor, ClampedSwiglu) {
        let w = match &self.weights {
            Weights::Dense { gate_up, down } => ExpertWeights::Dense { gate_up, down },
            Weights::Mxfp4(m) => ExpertWeights::Mxfp4(m),
        };
        (w, &self.gate_up_bias, &self.down_bias, self.act)
    }

    /// The compute device and dtype (the biases', which the loader gives as it gives any dense tensor).
    pub fn device_dtype(&self) -> (&Device, DType) {
        (self.gate_up_bias.device(), self.gate_up_bias.dtype())
    }

    /// MXFP4 experts dequantized to dense weights in the compute dtype on the compute device, as a loader
    /// that does not keep them reads them; dense experts stay as they are.
    pub fn densify(&mut self) -> Result<()> {
        let Weights::Mxfp4(m) = &self.weights else { return Ok(()) };
        let (device, dtype) = self.device_dtype();
        let dense = |b: &[u8], rows: usize, k: usize| -> Result<Tensor> {
            let t = Tensor::from_vec(crate::quant::mxfp4::dequantize_ggml(b), (m.experts, rows, k), &Device::Cpu)?; // [E, rows, k]
            Ok(t.transpose(1, 2)?.contiguous()?.to_dtype(dtype)?.to_device(device)?) // [E, k, rows]
        };
        let gate_up = dense(&m.gate_up, 2 * m.inter, m.hidden)?; // [E, hidden, 2I]: gate columns then up
        let down = dense(&m.down, m.hidden, m.inter)?; // [E, I, hidden]
        self.weights = Weights::Dense { gate_up, down };
        Ok(())
    }

    /// Expert `e` on its tokens: `x: [n, hidden] -> [n, hidden]`.
    pub fn forward(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        let gu = match &self.weights {
            Weights::Dense { gate_up, .. } => x.matmul(&gate_up.i(e)?)?,
            Weights::Mxfp4(m) => mxfp4_matmul(&m.gate_up, e, 2 * m.inter, m.hidden, x)?, // [n, 2I], gate then up
        };
        let gu = gu.broadcast_add(&self.gate_up_bias.i(e)?)?; // [n, 2I]
        let inter = gu.dim(1)? / 2;
        let limit = self.act.limit;
        let gate = gu.narrow(1, 0, inter)?.minimum(limit)?; // [n, I]
        let up = gu.narrow(1, inter, inter)?.clamp(-limit, limit)?; // [n, I]
        let glu = (&gate * candle_nn::ops::sigmoid(&(&gate * self.act.alpha)?)?)?;
        let h = ((up + 1.0)? * glu)?; // [n, I]
        let y = match &self.weights {
            Weights::Dense { down, .. } => h.matmul(&down.i(e)?)?,
            Weights::Mxfp4(m) => mxfp4_matmul(&m.down, e, m.hidden, m.inter, &h)?,
        };
        Ok(y.broadcast_add(&self.down_bias.i(e)?)?)
    }
}

/// `x: [n, k]` times expert `e`'s `[rows, k]` MXFP4 matrix of `all` (experts after experts) -> `[n, rows]`
/// f32 on the CPU.
fn mxfp4_matmul(all: &[u8], e: usize, rows: usize, k: usize, x: &Tensor) -> Result<Tensor> {
    let per = rows * (k / 32) * QType::Mxfp4.block_bytes();
    let w = QMatrix::new(QType::Mxfp4, &all[e * per..(e + 1) * per], rows, k).map_err(candle_core::Error::wrap)?;
    let n = x.dim(0)?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let y = qcpu::matmul(&w, &xs, qcpu::dispatch::active()).map_err(candle_core::Error::wrap)?;
    Ok(Tensor::from_vec(y, (n, rows), x.device())?)
}

/// `[..., 2I]` with gate and up interleaved (gate = `[..., ::2]`, up = `[..., 1::2]`) -> `[..., 2I]`
/// with the gate half first.
fn deinterleave(t: &Tensor) -> Result<Tensor> {
    let last = t.rank() - 1;
    let mut pairs = t.dims().to_vec();
    pairs[last] /= 2;
    pairs.push(2);
    let pairs = t.reshape(pairs)?; // [..., I, 2]
    let half = |j: usize| pairs.narrow(last + 1, j, 1)?.squeeze(last + 1);
    // contiguous: candle concatenates along a last dim through transposes and may return a strided view
    // (strides [1, E, E * hidden] here), which CUDA's matmul refuses and the fused MoE's stacking, which
    // reads the storage as laid out, would misread.
    Ok(Tensor::cat(&[half(0)?, half(1)?], last)?.contiguous()?)
}

#[cfg(test)]
impl ClampedSwigluExperts {
    fn weights_clone(&self) -> Weights {
        match &self.weights {
            Weights::Dense { gate_up, down } => Weights::Dense { gate_up: gate_up.clone(), down: down.clone() },
            Weights::Mxfp4(m) => Weights::Mxfp4(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::deinterleave;
    use candle_core::{Device, Tensor};

    #[test]
    fn deinterleave_puts_the_even_columns_first() {
        let t = Tensor::new(&[[0f32, 1., 2., 3., 4., 5.], [6., 7., 8., 9., 10., 11.]], &Device::Cpu).unwrap();
        let d = deinterleave(&t).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(d, vec![vec![0., 2., 4., 1., 3., 5.], vec![6., 8., 10., 7., 9., 11.]]);
    }

    /// MXFP4 experts kept in 4 bits compute what their dequantized dense form computes, within the
    /// activations' ~15-bit quantization (the weights are exact either way).
    #[test]
    fn mxfp4_experts_match_their_dense_form() {
        use super::{ClampedSwigluExperts, Weights};
        use crate::model::config::ClampedSwiglu;
        use crate::model::weights::Mxfp4Experts;
        use crate::quant::mxfp4::dequantize_ggml;
        let (e, i, h, n) = (3usize, 64usize, 96usize, 5usize);
        let mut seed = 9u64;
        let mut byte = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        let mut blocks = |rows: usize, k: usize| -> Vec<u8> {
            let mut b: Vec<u8> = (0..rows * k / 32 * 17).map(|_| byte()).collect();
            for blk in b.chunks_mut(17) {
                blk[0] = 120 + blk[0] % 6; // scales 2^-7 .. 2^-2
            }
            b
        };
        let m = Mxfp4Experts { experts: e, inter: i, hidden: h, gate_up: blocks(e * 2 * i, h), down: blocks(e * h, i) };
        let dev = Device::Cpu;
        let dense = |b: &[u8], rows: usize, k: usize| Tensor::from_vec(dequantize_ggml(b), (e, rows, k), &dev).unwrap(); // [E, rows, k]
        let gate_up = dense(&m.gate_up, 2 * i, h).transpose(1, 2).unwrap().contiguous().unwrap(); // [E, h, 2I]
        let down = dense(&m.down, h, i).transpose(1, 2).unwrap().contiguous().unwrap(); // [E, I, h]
        let bias = |d: usize| Tensor::arange(0f32, (e * d) as f32, &dev).unwrap().affine(0.01, -0.3).unwrap().reshape((e, d)).unwrap();
        let act = ClampedSwiglu { alpha: 1.702, limit: 7.0 };
        let q = ClampedSwigluExperts { weights: Weights::Mxfp4(m), gate_up_bias: bias(2 * i), down_bias: bias(h), act };
        let f = ClampedSwigluExperts { weights: Weights::Dense { gate_up, down }, gate_up_bias: bias(2 * i), down_bias: bias(h), act };
        let x = Tensor::arange(0f32, (n * h) as f32, &dev).unwrap().affine(0.37, 0.0).unwrap().sin().unwrap().reshape((n, h)).unwrap();
        for ex in 0..e {
            let (a, b) = (q.forward(ex, &x).unwrap(), f.forward(ex, &x).unwrap());
            let err = (a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= 1e-3 * scale, "expert {ex}: max error {err} of {scale}");
        }
    }

    /// MXFP4 experts made dense (the CUDA fallback) compute what they computed kept in 4 bits.
    #[test]
    fn densified_mxfp4_experts_compute_the_same() {
        use super::{ClampedSwigluExperts, Weights};
        use crate::model::config::ClampedSwiglu;
        use crate::model::weights::Mxfp4Experts;
        let (e, i, h) = (2usize, 32usize, 64usize);
        let blocks = |rows: usize, k: usize| -> Vec<u8> {
            let mut b: Vec<u8> = (0..rows * k / 32 * 17).map(|j| (j * 89 + 7) as u8).collect();
            b.chunks_mut(17).for_each(|blk| blk[0] = 121 + blk[0] % 4);
            b
        };
        let m = Mxfp4Experts { experts: e, inter: i, hidden: h, gate_up: blocks(e * 2 * i, h), down: blocks(e * h, i) };
        let dev = Device::Cpu;
        let bias = |d: usize| Tensor::arange(0f32, (e * d) as f32, &dev).unwrap().affine(0.01, -0.2).unwrap().reshape((e, d)).unwrap();
        let act = ClampedSwiglu { alpha: 1.702, limit: 7.0 };
        let q = ClampedSwigluExperts { weights: Weights::Mxfp4(m), gate_up_bias: bias(2 * i), down_bias: bias(h), act };
        let mut d = ClampedSwigluExperts { weights: q.weights_clone(), gate_up_bias: bias(2 * i), down_bias: bias(h), act };
        d.densify().unwrap();
        assert!(matches!(d.weights, Weights::Dense { .. }));
        let x = Tensor::arange(0f32, (3 * h) as f32, &dev).unwrap().affine(0.21, 0.0).unwrap().cos().unwrap().reshape((3, h)).unwrap();
        for ex in 0..e {
            let (a, b) = (q.forward(ex, &x).unwrap(), d.forward(ex, &x).unwrap());
            let err = (a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= 1e-3 * scale, "expert {ex}: max error {err} of {scale}");
        }
    }

    /// Stacked experts `[E, hidden, 2I]` come out contiguous, each expert's matrix too (CUDA's matmul
    /// refuses the strided view candle's last-dim concatenation can return).
    #[test]
    fn deinterleaved_experts_are_contiguous() {
        let t = Tensor::arange(0f32, 4. * 8. * 6., &Device::Cpu).unwrap().reshape((4, 8, 6)).unwrap();
        let d = deinterleave(&t).unwrap();
        assert!(d.is_contiguous() && d.get(2).unwrap().is_contiguous());
        assert_eq!(d.get(2).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap(), vec![102., 104., 106., 103., 105., 107.]);
    }
}
