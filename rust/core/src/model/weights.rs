//! Where a model's weights come from, by their Hugging Face names: the loaders (safetensors, GGUF, MLC
//! tensor cache) implement this, so models never depend on a file format.

use super::linear::Linear;
use crate::error::{EngineError, Result};
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

impl Mxfp4Experts {
    /// The bytes against the shapes: `experts x 2 inter` rows of `hidden / 32` blocks and `experts x hidden`
    /// rows of `inter / 32` (17 bytes each), so a kernel that reads them by shape stays inside them.
    pub fn check_sizes(&self) -> Result<()> {
        let rows = |rows: usize, k: usize| if k % 32 == 0 { Some(self.experts * rows * (k / 32) * crate::quant::mxfp4::GGML_BLOCK_BYTES) } else { None };
        let (want_gu, want_dn) = (rows(2 * self.inter, self.hidden), rows(self.hidden, self.inter));
        if want_gu != Some(self.gate_up.len()) || want_dn != Some(self.down.len()) {
            let what = format!("{} experts of hidden {} and inter {}", self.experts, self.hidden, self.inter);
            return Err(EngineError::model_load("mxfp4 experts", format!("{} / {} bytes do not hold {what} in 17-byte blocks of 32", self.gate_up.len(), self.down.len())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Mxfp4Experts;

    #[test]
    fn mxfp4_expert_sizes_are_checked_against_the_shapes() {
        let m = |gu: usize, dn: usize, hidden: usize| Mxfp4Experts { experts: 2, inter: 64, hidden, gate_up: vec![0; gu], down: vec![0; dn] };
        // gate/up: 2 experts x 128 rows x 3 blocks; down: 2 x 96 rows x 2 blocks.
        assert!(m(2 * 128 * 3 * 17, 2 * 96 * 2 * 17, 96).check_sizes().is_ok());
        assert!(m(2 * 128 * 3 * 17 - 1, 2 * 96 * 2 * 17, 96).check_sizes().is_err());
        assert!(m(2 * 128 * 3 * 17, 2 * 96 * 2 * 17 + 17, 96).check_sizes().is_err());
        // a hidden size that is not whole blocks
        assert!(m(2 * 128 * 3 * 17, 2 * 100 * 2 * 17, 100).check_sizes().is_err());
    }
}
