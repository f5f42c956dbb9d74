//! The CPU quantized matmul as a candle op: `x: [..., k] f32 -> [..., n] f32` against a GGUF weight in
//! candle's `QTensor`. Q4_K / Q6_K weights (and Q4_0 / Q4_1 / Q8_0 above the scalar level) are repacked
//! ([`kpack`](super::kpack)) the first time they are multiplied and the copy is kept beside the tensor
//! for as long as it lives ([`packed`]); other blocks are read in place. The weight is a CPU tensor, so there is only a `cpu_fwd`; CUDA
//! weights take `model::q4` / candle's kernels.

use super::kpack::PackedK;
use super::{dispatch, matmul, matmul_packed, Isa, QMatrix, QType};
use candle_core::quantized::QTensor;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

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
pub fn forward(w: &Arc<QTensor>, x: &Tensor) -> Result<Tensor> {
    let Some(qtype) = QType::from_ggml(w.dtype()) else { bail!("cpu qmatmul: no kernels for {:?}", w.dtype()) };
    let isa = dispatch::active();
    let packed = if PackedK::repacks(qtype, isa) { packed(w, isa)? } else { None };
    let x = x.contiguous()?;
    x.apply_op1_no_bwd(&CpuQMatMul { w: w.as_ref(), qtype, packed, isa })
}

/// Repacked copies keyed by the weight's `Arc` allocation (`None`: a weight [`PackedK::for_matmul`]
/// leaves in place). The `Weak` keeps that allocation from being reused while its entry exists, so an
/// address names one weight; entries of dropped weights go at the next insertion.
type PackedMap = HashMap<usize, (Weak<QTensor>, Option<Arc<PackedK>>)>;

/// `w` in the interleaved layout for `isa`, packed at its first use (once per weight and process).
fn packed(w: &Arc<QTensor>, isa: Isa) -> Result<Option<Arc<PackedK>>> {
    static CACHE: OnceLock<Mutex<PackedMap>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let key = Arc::as_ptr(w) as usize;
    if let Some((_, p)) = cache.get(&key) {
        return Ok(p.clone());
    }
    cache.retain(|_, (weak, _)| weak.strong_count() > 0);
    let Some(qtype) = QType::from_ggml(w.dtype()) else { bail!("cpu qmatmul: no kernels for {:?}", w.dtype()) };
    let (n, k) = w.shape().dims2()?;
    let data = w.data()?;
    let m = QMatrix::new(qtype, &data, n, k).map_err(candle_core::Error::wrap)?;
    let p = PackedK::for_matmul(&m, isa).map(Arc::new);
    cache.insert(key, (Arc::downgrade(w), p.clone()));
    Ok(p)
}

struct CpuQMatMul<'a> {
    w: &'a QTensor,
    qtype: QType,
    packed: Option<Arc<PackedK>>,
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
        let xs = &xs[start..end];
        if xs.len() % k != 0 {
            bail!("cpu qmatmul: {} activations are not rows of {k}", xs.len());
        }
        let y = match &self.packed {
            Some(p) => matmul_packed(p, xs, self.isa), // [t, n]
            None => {
                let data = self.w.data()?;
                let w = QMatrix::new(self.qtype, &data, n, k).map_err(candle_core::Error::wrap)?;
                matmul(&w, xs, self.isa).map_err(candle_core::Error::wrap)? // [t, n]
            }
        };
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}
