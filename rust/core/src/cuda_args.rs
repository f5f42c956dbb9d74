//! Argument checks shared by the launches of our CUDA kernels (attention, fused decoder ops, 4-bit
//! matmul): the kernel instance of a dtype, contiguous element ranges, `u32` launch values and views of
//! device buffers, each failing with a typed error instead of a panic or an out-of-bounds launch.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::{bail, DType, Layout, Result};
use mlc_kernels::KernelDType;
use std::ops::Range;

/// The kernel instance for `dtype` (f32, bf16, f16); `op` names the operation in the error.
pub(crate) fn kernel_dtype(dtype: DType, op: &str) -> Result<KernelDType> {
    match dtype {
        DType::F32 => Ok(KernelDType::F32),
        DType::BF16 => Ok(KernelDType::BF16),
        DType::F16 => Ok(KernelDType::F16),
        other => bail!("{op}: no CUDA kernel for {other:?} (f32, bf16, f16 only)"),
    }
}

/// The element range of a contiguous layout.
pub(crate) fn contiguous(layout: &Layout, what: &str) -> Result<Range<usize>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => bail!("{what} must be contiguous"),
    }
}

pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} does not fit u32")))
}

/// `s[range]`, or an error naming `what` when the range lies outside the buffer.
pub(crate) fn view<'a, T>(s: &'a CudaSlice<T>, range: Range<usize>, what: &str) -> Result<CudaView<'a, T>> {
    let len = s.len();
    s.try_slice(range.clone())
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: range {range:?} outside a buffer of {len}")))
}
