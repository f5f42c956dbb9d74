//! The candle ops behind [`super::PagedKvCache::write`] and [`super::PagedKvCache::attend`]: one op per
//! operation, dispatching to the CPU implementation (`cpu.rs`, also the reference) or our CUDA kernels
//! (`cuda.rs`, feature `cuda`).

use super::{cpu, StepAttention};
use candle_core::{CpuStorage, CustomOp3, InplaceOp2, Layout, Result, Shape};

/// Copies the step's new K or V rows into their cache slots: `cache[slot_mapping[t]] = new[t]`.
pub struct KvWrite<'a> {
    pub step: &'a StepAttention,
}

impl InplaceOp2 for KvWrite<'_> {
    fn name(&self) -> &'static str {
        "kv-write"
    }

    fn cpu_fwd(&self, cache: &mut CpuStorage, cl: &Layout, new: &CpuStorage, nl: &Layout) -> Result<()> {
        cpu::kv_write(&self.step.meta.slot_mapping, cache, cl, new, nl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cl: &Layout,
        new: &candle_core::CudaStorage,
        nl: &Layout,
    ) -> Result<()> {
        super::cuda::kv_write(self.step.device()?, cache, cl, new, nl)
    }
}

/// Causal attention of each query token over positions `0..=pos` of its own sequence.
pub struct PagedAttention<'a> {
    pub step: &'a StepAttention,
    pub scale: f32,
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::paged_attention(&self.step.meta, self.scale, q, ql, k, kl, v, vl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::paged_attention(self.step.device()?, self.scale, q, ql, k, kl, v, vl)
    }
}
