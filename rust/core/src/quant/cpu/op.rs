//! The CPU quantized matmul as a candle op: `x: [..., k] f32 -> [..., n] f32` against a GGUF weight in
//! candle's `QTensor`, whose blocks are read in place (no copy, no repacking at load). The weight is a
//! CPU tensor, so there is only a `cpu_fwd`; CUDA weights take `model::q4` / candle's kernels.

use super::{dispatch, matmul, Isa, QMatrix, QType};
use candle_core::quantized::QTensor;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Whether [`forward`] multiplies this weight by `x`: a 2-D CPU weight of a type we have kernels for,
/// and f32 activations (the CPU's compute dtype; others stay on candle's quantized matmul).
pub fn supports(w: &QTensor, x: &Tensor) -> bool {
    w.device().is_cpu()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && QType::from_ggml(w.dtype()).is_some()
        && w.shape().dims2().is_ok_and(|(_, k)| QType::from_ggml(w.dtype()).is_some_and(|q| k % q.block_values() == 0))
}

/// `x: [..., k] -> [..., n]` for a `[n, k]` weight, at the instruction set [`dispatch::active`] picks.
pub fn forward(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let Some(qtype) = QType::from_ggml(w.dtype()) else { bail!("cpu qmatmul: no kernels for {:?}", w.dtype()) };
    let x = x.contiguous()?;
    x.apply_op1_no_bwd(&CpuQMatMul { w, qtype, isa: dispatch::active() })
}

struct CpuQMatMul<'a> {
    w: &'a QTensor,
    qtype: QType,
    isa: Isa,
}

impl CustomOp1 for CpuQMatMul<'_> {
    fn name(&self) -> &'static str {
        "cpu-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(xs) = storage else { bail!("cpu qmatmul: activations are {:?}, not f32", storage.dtype()) };
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("cpu qmatmul: activations are not contiguous") };
        let (n, k) = self.w.shape().dims2()?;
        let mut dims = layout.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == k => *last = n,
            _ => bail!("cpu qmatmul: x {:?} does not end in the weight's {k} inputs", layout.dims()),
        }
        let data = self.w.data()?;
        let w = QMatrix::new(self.qtype, &data, n, k).map_err(candle_core::Error::wrap)?;
        let y = matmul(&w, &xs[start..end], self.isa).map_err(candle_core::Error::wrap)?; // [t, n]
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}
