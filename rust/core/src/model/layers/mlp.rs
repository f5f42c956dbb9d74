//! The gated MLP: `down(act(gate(x)) * up(x))`, gate and up stacked into one matmul.

use crate::error::Result;
use crate::model::config::{Activation, ModelConfig};
use crate::model::linear::{Linear, StackedLinear};
use crate::model::weights::WeightSource;
use crate::profile::{span, Part};
use candle_core::Tensor;

pub struct GatedMlp {
    /// gate, up stacked: `[T, hidden] -> [T, 2 * intermediate]` (gate columns first).
    gate_up: StackedLinear,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    /// The MLP at `p` (`model.layers.3.mlp`): `gate_proj` + `up_proj`, or one `gate_up_proj` where the
    /// checkpoint fuses them (Phi-3).
    pub fn load(cfg: &ModelConfig, w: &dyn WeightSource, p: &str) -> Result<Self> {
        let gate_up = if cfg.fused_projections {
            StackedLinear::new(vec![w.linear(&format!("{p}.gate_up_proj"), false)?])?
        } else {
            StackedLinear::new(vec![w.linear(&format!("{p}.gate_proj"), false)?, w.linear(&format!("{p}.up_proj"), false)?])?
        };
        Ok(GatedMlp { gate_up, down: w.linear(&format!("{p}.down_proj"), false)?, act: cfg.activation })
    }

    /// The MLP whose gate, up and down projections sit at the three given prefixes (Mixtral's experts:
    /// `w1`, `w3`, `w2`).
    pub fn load_parts(cfg: &ModelConfig, w: &dyn WeightSource, gate: &str, up: &str, down: &str) -> Result<Self> {
        let gate_up = StackedLinear::new(vec![w.linear(gate, false)?, w.linear(up, false)?])?;
        Ok(GatedMlp { gate_up, down: w.linear(down, false)?, act: cfg.activation })
    }

    /// The stacked gate/up projection, the down projection and the activation (the fused MoE stacks its
    /// experts' weights from them).
    #[cfg(feature = "cuda")]
    pub(crate) fn parts(&self) -> (&StackedLinear, &Linear, Activation) {
        (&self.gate_up, &self.down, self.act)
    }

    /// `x: [T, hidden] -> [T, hidden]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let act = match self.act {
            // silu: fused into one kernel (or into the Q4 GEMV's epilogue) on CUDA.
            Activation::Silu if !crate::profile::on() => self.gate_up.forward_silu_mul(x)?,
            // Profiled: the matmul and the activation apart (the same ops on the CPU).
            Activation::Silu => {
                let gu = {
                    let _s = span(Part::GateUp);
                    self.gate_up.forward(x)?
                };
                let _s = span(Part::Act);
                crate::model::fused::silu_mul(&gu)?
            }
            Activation::GeluTanh | Activation::Gelu => {
                let gu = self.gate_up.forward(x)?; // [T, 2 * intermediate]
                let f = gu.dim(1)? / 2;
                let gate = gu.narrow(1, 0, f)?;
                let gate = if self.act == Activation::Gelu { gate.gelu_erf()? } else { gate.gelu()? };
                (gate * gu.narrow(1, f, f)?)?
            }
        }; // [T, intermediate]
        let _s = span(Part::Down);
        Ok(self.down.forward(&act)?)
    }
}
