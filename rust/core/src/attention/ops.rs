//! The candle ops behind [`super::PagedKvCache::write`] and [`super::PagedKvCache::attend`]: one op per
//! operation, dispatching to the CPU implementation (`cpu.rs`, also the reference) or our CUDA kernels
//! (`cuda.rs`, feature `cuda`).

use super::{cpu, AttnParams, StepAttention};
use candle_core::{bail, CpuStorage, CustomOp3, InplaceOp1, InplaceOp2, Layout, Result, Shape, Tensor};

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

/// An FP8 e4m3 cache's new rows (`scales` false: the op runs on the cache) or their row scales (true: on
/// the scale cache), quantized from the step's new K or V rows on the device; CUDA only (the CPU cache
/// quantizes with candle ops in [`super::PagedKvCache::write`]).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct KvWriteFp8<'a> {
    pub step: &'a StepAttention,
    pub scales: bool,
}

impl InplaceOp2 for KvWriteFp8<'_> {
    fn name(&self) -> &'static str {
        "kv-write-fp8"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("kv-write-fp8 runs on CUDA; the CPU cache quantizes through candle ops")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        new: &candle_core::CudaStorage,
        nl: &Layout,
    ) -> Result<()> {
        super::cuda::kv_write_fp8(self.step.device()?, dst, dl, new, nl, self.scales)
    }
}

/// Attention of each query token over positions `window_start(pos)..=pos` of its own sequence.
pub struct PagedAttention<'a> {
    pub step: &'a StepAttention,
    pub params: AttnParams,
    /// gpt-oss: one logit per query head joining that head's softmax (max and denominator), `[num_heads]`
    /// f32 on the cache's device: uploaded once at load, so a captured CUDA graph reads it in place.
    pub sinks: Option<&'a Tensor>,
    /// An FP8 cache's K and V row scales (`[num_blocks, block_size, num_kv_heads, 1]` f32).
    pub fp8_scales: Option<(&'a Tensor, &'a Tensor)>,
}

/// The f32 values of a CPU tensor held in its storage guard; `what` names it in the error.
fn with_cpu_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => f(&v[start..end]),
        _ => bail!("{what} must be contiguous f32 on the cpu"),
    }
}

/// [`with_cpu_f32`] of an optional tensor.
fn with_cpu_f32_opt<R>(t: Option<&Tensor>, what: &str, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
    match t {
        Some(t) => with_cpu_f32(t, what, |v| f(Some(v))),
        None => f(None),
    }
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
        with_cpu_f32_opt(self.sinks, "attention sinks", |sinks| match self.fp8_scales {
            None => cpu::paged_attention(&self.step.meta, &self.params, sinks, None, q, ql, k, kl, v, vl),
            Some((ks, vs)) => with_cpu_f32(ks, "FP8 KV scales", |ks| {
                with_cpu_f32(vs, "FP8 KV scales", |vs| cpu::paged_attention(&self.step.meta, &self.params, sinks, Some((ks, vs)), q, ql, k, kl, v, vl))
            }),
        })
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
        super::cuda::paged_attention(self.step.device()?, &self.params, self.sinks, self.fp8_scales, q, ql, k, kl, v, vl)
    }
}

/// Copies host `u32`s into the start of an existing contiguous `u32` buffer (one host-to-device copy on
/// CUDA): the fixed-address step buffer that captured CUDA graphs read.
pub struct UploadU32<'a> {
    pub data: &'a [u32],
}

impl UploadU32<'_> {
    fn range(&self, l: &Layout, capacity: usize) -> Result<std::ops::Range<usize>> {
        let Some((start, end)) = l.contiguous_offsets() else { bail!("upload: the step buffer must be contiguous") };
        if end - start < self.data.len() || end > capacity {
            bail!("upload: {} values do not fit a step buffer of {}", self.data.len(), end - start);
        }
        Ok(start..start + self.data.len())
    }
}

impl InplaceOp1 for UploadU32<'_> {
    fn name(&self) -> &'static str {
        "upload-u32"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::U32(dst) = s else { bail!("upload: the step buffer must be u32") };
        let r = self.range(l, dst.len())?;
        dst[r].copy_from_slice(self.data);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::WrapErr;
        let dev = s.device().clone();
        let dst = s.as_cuda_slice_mut::<u32>()?;
        let r = self.range(l, dst.len())?;
        let Some(mut view) = dst.try_slice_mut(r) else { bail!("upload: range outside the step buffer") };
        dev.cuda_stream().memcpy_htod(self.data, &mut view).w()
    }
}
