//! gpt-oss's experts: every expert of a layer in fused 3D tensors with biases, each a clamped SwiGLU
//! MLP, as transformers' `GptOssExperts` computes one expert:
//! `gu = x @ gate_up_proj[e] + gate_up_proj_bias[e]`, `gate = gu[..., ::2].clamp(max = limit)`,
//! `up = gu[..., 1::2].clamp(-limit, limit)`, `h = (up + 1) * gate * sigmoid(gate * alpha)`,
//! `out = h @ down_proj[e] + down_proj_bias[e]`, every step in the weights' dtype.

use crate::error::Result;
use crate::model::config::ClampedSwiglu;
use crate::model::weights::WeightSource;
use candle_core::{IndexOp, Tensor};

pub struct ClampedSwigluExperts {
    /// `[E, hidden, 2I]`: per expert, the gate columns then the up columns (the checkpoint interleaves
    /// them; split once at load so each forward takes two plain halves).
    gate_up: Tensor,
    /// `[E, 2I]`, gate then up as `gate_up`.
    gate_up_bias: Tensor,
    /// `[E, I, hidden]`
    down: Tensor,
    /// `[E, hidden]`
    down_bias: Tensor,
    act: ClampedSwiglu,
}

impl ClampedSwigluExperts {
    /// The experts at `p` (`model.layers.3.mlp.experts`).
    pub fn load(w: &dyn WeightSource, p: &str, act: ClampedSwiglu) -> Result<Self> {
        let t = |name: &str| w.tensor(&format!("{p}.{name}"));
        Ok(ClampedSwigluExperts {
            gate_up: deinterleave(&t("gate_up_proj")?)?,
            gate_up_bias: deinterleave(&t("gate_up_proj_bias")?)?,
            down: t("down_proj")?,
            down_bias: t("down_proj_bias")?,
            act,
        })
    }

    /// gate_up `[E, hidden, 2I]`, its bias `[E, 2I]`, down `[E, I, hidden]`, its bias `[E, hidden]` and the
    /// activation's constants (the fused MoE on CUDA stacks them transposed).
    #[cfg(feature = "cuda")]
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, &Tensor, &Tensor, ClampedSwiglu) {
        (&self.gate_up, &self.gate_up_bias, &self.down, &self.down_bias, self.act)
    }

    /// Expert `e` on its tokens: `x: [n, hidden] -> [n, hidden]`.
    pub fn forward(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        let gu = x.matmul(&self.gate_up.i(e)?)?.broadcast_add(&self.gate_up_bias.i(e)?)?; // [n, 2I]
        let inter = gu.dim(1)? / 2;
        let limit = self.act.limit;
        let gate = gu.narrow(1, 0, inter)?.minimum(limit)?; // [n, I]
        let up = gu.narrow(1, inter, inter)?.clamp(-limit, limit)?; // [n, I]
        let glu = (&gate * candle_nn::ops::sigmoid(&(&gate * self.act.alpha)?)?)?;
        let h = ((up + 1.0)? * glu)?; // [n, I]
        Ok(h.matmul(&self.down.i(e)?)?.broadcast_add(&self.down_bias.i(e)?)?)
    }
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
mod tests {
    use super::deinterleave;
    use candle_core::{Device, Tensor};

    #[test]
    fn deinterleave_puts_the_even_columns_first() {
        let t = Tensor::new(&[[0f32, 1., 2., 3., 4., 5.], [6., 7., 8., 9., 10., 11.]], &Device::Cpu).unwrap();
        let d = deinterleave(&t).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(d, vec![vec![0., 2., 4., 1., 3., 5.], vec![6., 8., 10., 7., 9., 11.]]);
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
