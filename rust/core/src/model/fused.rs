//! Fused ops of the decoder layer: on CUDA one launch of our kernels (`mlc_kernels`' fused.cu) each,
//! elsewhere their reference made of candle ops, which is what the CPU runs:
//!
//! * [`silu_mul`]: `silu(gate) * up` from the stacked gate/up projection, `[T, 2F] -> [T, F]`;
//! * [`add_rms_norm`]: `x + residual` (the next residual) and its RMSNorm;
//! * [`rope_qkv`]: from the stacked q/k/v projection, q/k RMSNorm per head (Qwen3), rotary embedding of
//!   q and k, q out as `[T, heads, head_dim]` and k and v written straight into their paged-cache slots
//!   (so the step needs no separate KV write).
//!
//! The kernels compute in f32 and round to the element type where the reference's ops round their
//! outputs, so the two agree up to f32 arithmetic order (see `fused_check`).

use super::rope::RopeStyle;
use crate::attention::{PagedKvCache, StepAttention};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use candle_nn::ops::rms_norm;

/// Head layout of the stacked q/k/v projection's output `[T, (num_heads + 2 num_kv_heads) * head_dim]`
/// (q heads, then k heads, then v heads) and how to rotate it.
#[derive(Debug, Clone, Copy)]
pub struct QkvSpec {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub style: RopeStyle,
    /// Epsilon of the q/k norm.
    pub eps: f32,
}

impl QkvSpec {
    pub fn width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
}

/// Per-head RMSNorm weights of q and k (Qwen3), `[head_dim]` each.
#[derive(Debug, Clone, Copy)]
pub struct QkNorm<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
}

// ------------------------------------------------------------------------------------------------
// Entry points: the CUDA op on CUDA tensors, the reference elsewhere.

/// `gate_up: [T, 2F]` (gate columns first) -> `silu(gate) * up: [T, F]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    if gate_up.device().is_cuda() || (gate_up.dtype() == candle_core::DType::F32 && gate_up.is_contiguous()) {
        gate_up.apply_op1_no_bwd(&SiluMul)
    } else {
        silu_mul_reference(gate_up)
    }
}

/// `x, residual: [T, H]`, `weight: [H]` -> `(x + residual, rms_norm(x + residual) * weight)`.
pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    if x.device().is_cuda() {
        let out = x.apply_op3_no_bwd(residual, weight, &AddRmsNorm { eps })?; // [2, T, H]
        Ok((out.get(0)?, out.get(1)?))
    } else {
        add_rms_norm_reference(x, residual, weight, eps)
    }
}

/// Rotary embedding (and q/k norm) of the stacked projection `qkv: [T, spec.width()]` at `positions`
/// (`[T]` u32) with the tables `cos_table`, `sin_table: [max_positions, head_dim / 2]`; writes k and v
/// into layer `layer` of `kv` at the step's slots and returns q `[T, num_heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    qkv: &Tensor,
    positions: &Tensor,
    cos_table: &Tensor,
    sin_table: &Tensor,
    spec: &QkvSpec,
    norm: Option<QkNorm<'_>>,
    kv: &PagedKvCache,
    layer: usize,
    step: &StepAttention,
) -> Result<Tensor> {
    // An FP8 cache takes the unfused ops on CUDA too: the fused kernel writes rows of qkv's dtype, and the
    // cache write quantizes (kv_write.cu).
    if !qkv.device().is_cuda() || !kv.fp8_scales.is_empty() {
        let (cos, sin) = gather_rope(cos_table, sin_table, positions)?;
        return rope_qkv_reference(qkv, &cos, &sin, spec, norm, kv, layer, step);
    }
    let Some(cache) = kv.layers.get(layer) else { bail!("kv cache has no layer {layer}") };
    let n = qkv.dim(0)?;
    if n == 0 {
        return Tensor::zeros((0, spec.num_heads, spec.head_dim), qkv.dtype(), qkv.device());
    }
    let op = RopeQkv { spec: *spec, positions, norm, k_cache: &cache.k, v_cache: &cache.v, step };
    qkv.apply_op3_no_bwd(cos_table, sin_table, &op)
}

// ------------------------------------------------------------------------------------------------
// References: the unfused candle ops.

/// [`silu_mul`] as candle ops.
pub fn silu_mul_reference(gate_up: &Tensor) -> Result<Tensor> {
    let f = gate_up.dim(1)? / 2;
    let gate = candle_nn::ops::silu(&gate_up.narrow(1, 0, f)?)?;
    gate * gate_up.narrow(1, f, f)?
}

/// [`add_rms_norm`] as candle ops.
pub fn add_rms_norm_reference(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let sum = (residual + x)?;
    let normed = rms_norm(&sum, weight, eps)?;
    Ok((sum, normed))
}

/// The rows of the rope tables at `positions`, as `[T, 1, head_dim / 2]` (one rotation per token).
pub fn gather_rope(cos_table: &Tensor, sin_table: &Tensor, positions: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = positions.dim(0)?;
    let half = cos_table.dim(1)?;
    let cos = cos_table.index_select(positions, 0)?.reshape((n, 1, half))?;
    let sin = sin_table.index_select(positions, 0)?.reshape((n, 1, half))?;
    Ok((cos, sin))
}

/// [`rope_qkv`] as candle ops, with the rope rows already gathered ([`gather_rope`]): split q/k/v,
/// q/k norm, rope, the cache's KV write.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv_reference(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    spec: &QkvSpec,
    norm: Option<QkNorm<'_>>,
    kv: &PagedKvCache,
    layer: usize,
    step: &StepAttention,
) -> Result<Tensor> {
    let n = qkv.dim(0)?;
    let (nh, nkv, hd) = (spec.num_heads, spec.num_kv_heads, spec.head_dim);
    if qkv.dim(1)? != spec.width() {
        bail!("rope-qkv: qkv {:?} does not hold {nh} + 2 x {nkv} heads of {hd}", qkv.shape());
    }
    let q = qkv.narrow(1, 0, nh * hd)?.reshape((n, nh, hd))?; // [num_tokens, heads, head_dim]
    let k = qkv.narrow(1, nh * hd, nkv * hd)?.reshape((n, nkv, hd))?; // [num_tokens, kv_heads, head_dim]
    let v = qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?.reshape((n, nkv, hd))?.contiguous()?;
    let (q, k) = match norm {
        Some(w) => (rms_norm(&q.contiguous()?, w.q, spec.eps)?, rms_norm(&k.contiguous()?, w.k, spec.eps)?),
        None => (q, k),
    };
    let q = rope_reference(&q, cos, sin, spec.style)?;
    let k = rope_reference(&k, cos, sin, spec.style)?;
    kv.write(layer, &k, &v, step)?;
    Ok(q)
}

/// Whether the fused rope kernel takes heads of `head_dim` rotated over `rotary_dim` leading dimensions
/// (it rotates whole heads only, up to a width).
pub fn rope_kernel_fits(head_dim: usize, rotary_dim: usize) -> bool {
    #[cfg(feature = "cuda")]
    {
        rotary_dim == head_dim && head_dim % 2 == 0 && head_dim <= mlc_kernels::ROPE_MAX_HEAD_DIM
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (head_dim, rotary_dim);
        false
    }
}

/// `x: [num_tokens, heads, head_dim]`, `cos`/`sin`: `[num_tokens, 1, rotary_dim / 2]`: the leading
/// `rotary_dim` dimensions of each head rotate, the rest pass unchanged (partial rotary).
fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (n, h, d) = x.dims3()?;
    let rot = 2 * cos.dim(2)?;
    if rot < d {
        let rotated = rope_reference(&x.narrow(2, 0, rot)?, cos, sin, style)?;
        return Tensor::cat(&[&rotated, &x.narrow(2, rot, d - rot)?], 2);
    }
    // Seen by candle's rope as batch = token, one position each: positions differ per token.
    let x4 = x.contiguous()?.reshape((n, h, 1, d))?;
    let y = match style {
        RopeStyle::Half => candle_nn::rotary_emb::rope(&x4, cos, sin)?,
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x4, cos, sin)?,
    };
    y.reshape((n, h, d))
}

// ------------------------------------------------------------------------------------------------
// The candle ops. Their CPU forward is not used (the entry points run the reference there), except
// silu-mul's in f32 (fused_cpu.rs).

fn cpu_unused(op: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{op}: the CPU runs the reference ops, not this CUDA op")
}

struct SiluMul;

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    /// f32 only (the entry point sends other dtypes to the reference): the reference's bits, threaded.
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (t, two_f) = l.shape().dims2()?;
        let (CpuStorage::F32(v), Some((start, end))) = (s, l.contiguous_offsets()) else { return cpu_unused(self.name()) };
        let f = two_f / 2;
        Ok((CpuStorage::F32(super::fused_cpu::silu_mul(&v[start..end], t, f)), Shape::from((t, f))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::silu_mul(s, l)
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unused(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        r: &candle_core::CudaStorage,
        rl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::add_rms_norm(self.eps, x, xl, r, rl, w, wl)
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct RopeQkv<'a> {
    spec: QkvSpec,
    positions: &'a Tensor,
    norm: Option<QkNorm<'a>>,
    k_cache: &'a Tensor,
    v_cache: &'a Tensor,
    step: &'a StepAttention,
}

impl CustomOp3 for RopeQkv<'_> {
    fn name(&self) -> &'static str {
        "rope-qkv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unused(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qkv: &candle_core::CudaStorage,
        ql: &Layout,
        cos: &candle_core::CudaStorage,
        cl: &Layout,
        sin: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::rope_qkv(self, qkv, ql, cos, cl, sin, sl)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Shape and dtype checks (errors, never panics), then one launch on candle's stream.

    use super::{QkvSpec, RopeQkv};
    use crate::model::rope::RopeStyle;
    use candle_core::backend::{BackendDevice, BackendStorage};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchConfig, SyncOnDrop,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
    use mlc_kernels::{self as kernels, FusedOp, KernelDType};
    use std::ops::Range;
    use crate::cuda_args::{contiguous, kernel_dtype, to_u32, view};
    use std::sync::Arc;





    /// The kernel `op` for `dtype`, loaded once per device.
    macro_rules! func {
        ($dev:expr, $op:expr, $dtype:expr) => {
            crate::cuda_kernels::func(&$dev, kernels::fused_name($op, $dtype), &kernels::modules::FUSED)
        };
    }

    fn config(blocks: u32, threads: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
    }

    // ---- silu(gate) * up

    pub fn silu_mul(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (t, two_f) = l.shape().dims2()?;
        if two_f % 2 != 0 {
            bail!("silu-mul: gate/up {:?} has an odd number of columns", l.shape());
        }
        let f = two_f / 2;
        let src = contiguous(l, "gate/up")?;
        let dtype = kernel_dtype(s.dtype(), "silu-mul")?;
        let storage = match dtype {
            KernelDType::F32 => launch_silu_mul::<f32>(s, src, t, f, dtype)?,
            KernelDType::BF16 => launch_silu_mul::<half::bf16>(s, src, t, f, dtype)?,
            KernelDType::F16 => launch_silu_mul::<half::f16>(s, src, t, f, dtype)?,
        };
        Ok((storage, Shape::from((t, f))))
    }

    fn launch_silu_mul<T: CudaDType + DeviceRepr>(
        s: &CudaStorage,
        src: Range<usize>,
        t: usize,
        f: usize,
        dtype: KernelDType,
    ) -> Result<CudaStorage> {
        let dev = s.device().clone();
        let n = t * f;
        // SAFETY: every element is written by the launch below (grid-stride over all n).
        let mut out = unsafe { dev.alloc::<T>(n.max(1)) }?;
        if n > 0 {
            let func = func!(dev, FusedOp::SiluMul, dtype)?;
            let src = view(s.as_cuda_slice::<T>()?, src, "gate/up")?;
            let (t32, f32_) = (to_u32(t, "tokens")?, to_u32(f, "ffn")?);
            let blocks = n.div_ceil(kernels::FUSED_THREADS as usize).min(65_535) as u32;
            let mut b = crate::cuda_pdl::PdlArgs::new(&func, &dev);
            b.arg(&mut out);
            b.arg(&src);
            b.arg(&t32);
            b.arg(&f32_);
            // SAFETY: matches silu_mul_* in fused.cu; src holds t * 2f elements.
            unsafe { b.launch(config(blocks, kernels::FUSED_THREADS)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    // ---- x + residual and its RMSNorm

    pub fn add_rms_norm(
        eps: f32,
        x: &CudaStorage,
        xl: &Layout,
        r: &CudaStorage,
        rl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (t, h) = xl.shape().dims2()?;
        if rl.shape() != xl.shape() || wl.shape().dims1()? != h {
            bail!("add-rms-norm: x {:?}, residual {:?} and weight {:?} do not match", xl.shape(), rl.shape(), wl.shape());
        }
        if x.dtype() != r.dtype() || x.dtype() != w.dtype() {
            bail!("add-rms-norm: x {:?}, residual {:?}, weight {:?} must share one dtype", x.dtype(), r.dtype(), w.dtype());
        }
        let dtype = kernel_dtype(x.dtype(), "add-rms-norm")?;
        let ranges = [contiguous(xl, "x")?, contiguous(rl, "residual")?, contiguous(wl, "rms weight")?];
        let storage = match dtype {
            KernelDType::F32 => launch_add_rms_norm::<f32>(eps, x, r, w, ranges, t, h, dtype)?,
            KernelDType::BF16 => launch_add_rms_norm::<half::bf16>(eps, x, r, w, ranges, t, h, dtype)?,
            KernelDType::F16 => launch_add_rms_norm::<half::f16>(eps, x, r, w, ranges, t, h, dtype)?,
        };
        Ok((storage, Shape::from((2, t, h))))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_add_rms_norm<T: CudaDType + DeviceRepr>(
        eps: f32,
        x: &CudaStorage,
        r: &CudaStorage,
        w: &CudaStorage,
        [xr, rr, wr]: [Range<usize>; 3],
        t: usize,
        h: usize,
        dtype: KernelDType,
    ) -> Result<CudaStorage> {
        let dev = x.device().clone();
        // SAFETY: one block per token writes both halves of its rows.
        let mut out = unsafe { dev.alloc::<T>((2 * t * h).max(1)) }?;
        if t > 0 && h > 0 {
            let func = func!(dev, FusedOp::AddRmsNorm, dtype)?;
            let xv = view(x.as_cuda_slice::<T>()?, xr, "x")?;
            let rv = view(r.as_cuda_slice::<T>()?, rr, "residual")?;
            let wv = view(w.as_cuda_slice::<T>()?, wr, "rms weight")?;
            let (t32, h32) = (to_u32(t, "tokens")?, to_u32(h, "hidden")?);
            let mut b = crate::cuda_pdl::PdlArgs::new(&func, &dev);
            b.arg(&mut out);
            b.arg(&xv);
            b.arg(&rv);
            b.arg(&wv);
            b.arg(&t32);
            b.arg(&h32);
            b.arg(&eps);
            // SAFETY: matches add_rms_norm_* in fused.cu; x and residual hold t * h elements, w h.
            unsafe { b.launch(config(t32, kernels::FUSED_THREADS)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    // ---- rope of q and k, k and v into the cache

    /// A tensor's CUDA storage, read-locked, with its layout.
    struct Held<'a> {
        guard: std::sync::RwLockReadGuard<'a, Storage>,
        layout: &'a Layout,
    }

    impl<'a> Held<'a> {
        fn new(t: &'a Tensor, dev: &CudaDevice, what: &str) -> Result<Self> {
            let (guard, layout) = t.storage_and_layout();
            match &*guard {
                Storage::Cuda(cs) if cs.device().same_device(dev) => {}
                Storage::Cuda(_) => bail!("rope-qkv: {what} lives on another CUDA device"),
                _ => bail!("rope-qkv: {what} is not on a CUDA device"),
            }
            Ok(Held { guard, layout })
        }

        fn storage(&self) -> &CudaStorage {
            match &*self.guard {
                Storage::Cuda(cs) => cs,
                _ => unreachable!("checked in Held::new"),
            }
        }
    }

    struct RopeArgs {
        t: u32,
        h: u32,
        kvh: u32,
        d: u32,
        max_pos: u32,
        num_slots: u32,
        interleaved: u32,
        eps: f32,
    }

    pub fn rope_qkv(
        op: &RopeQkv<'_>,
        qkv: &CudaStorage,
        ql: &Layout,
        cos: &CudaStorage,
        cl: &Layout,
        sin: &CudaStorage,
        sl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let QkvSpec { num_heads: h, num_kv_heads: kvh, head_dim: d, style, eps } = op.spec;
        let (t, width) = ql.shape().dims2()?;
        if width != op.spec.width() || h == 0 || kvh == 0 {
            bail!("rope-qkv: qkv {:?} does not hold {h} + 2 x {kvh} heads of {d}", ql.shape());
        }
        if d == 0 || d % 2 != 0 || d > kernels::ROPE_MAX_HEAD_DIM {
            bail!("rope-qkv: head_dim {d} must be even and at most {}", kernels::ROPE_MAX_HEAD_DIM);
        }
        let (max_pos, half) = cl.shape().dims2()?;
        if half != d / 2 || sl.shape() != cl.shape() || max_pos == 0 {
            bail!("rope-qkv: rope tables {:?} / {:?} do not fit head_dim {d}", cl.shape(), sl.shape());
        }
        if cos.dtype() != qkv.dtype() || sin.dtype() != qkv.dtype() {
            bail!("rope-qkv: rope tables are {:?}, qkv {:?}", cos.dtype(), qkv.dtype());
        }
        let dtype = kernel_dtype(qkv.dtype(), "rope-qkv")?;
        let step = op.step.device()?;
        if t != step.plan.num_tokens {
            bail!("rope-qkv: qkv has {t} tokens, the step {}", step.plan.num_tokens);
        }
        // Every position is below the largest context of the step (validated in `prepare`).
        let max_ctx = op.step.meta().seqs.iter().map(|s| s.context_len).max().unwrap_or(0);
        if max_ctx > max_pos {
            bail!("rope-qkv: the step reaches position {}, the rope tables hold {max_pos}", max_ctx - 1);
        }
        let dev = qkv.device().clone();
        let (kc, vc) = (Held::new(op.k_cache, &dev, "k cache")?, Held::new(op.v_cache, &dev, "v cache")?);
        for c in [&kc, &vc] {
            let dims = c.layout.shape().dims4()?;
            if dims != (step.num_blocks, step.block_size, kvh, d) {
                bail!("rope-qkv: cache {:?} does not match the step ({} blocks of {}) and {kvh} kv heads of {d}", c.layout.shape(), step.num_blocks, step.block_size);
            }
            if c.storage().dtype() != qkv.dtype() {
                bail!("rope-qkv: cache is {:?}, qkv {:?}", c.storage().dtype(), qkv.dtype());
            }
        }
        let pos = Held::new(op.positions, &dev, "positions")?;
        if pos.storage().dtype() != DType::U32 || pos.layout.shape().dims1()? != t {
            bail!("rope-qkv: positions must be [{t}] u32, got {:?} {:?}", pos.layout.shape(), pos.storage().dtype());
        }
        let norms = match op.norm {
            Some(n) => {
                let (q, k) = (Held::new(n.q, &dev, "q norm")?, Held::new(n.k, &dev, "k norm")?);
                for w in [&q, &k] {
                    if w.layout.shape().dims1()? != d || w.storage().dtype() != qkv.dtype() {
                        bail!("rope-qkv: q/k norm weight must be [{d}] {:?}, got {:?}", qkv.dtype(), w.layout.shape());
                    }
                }
                Some((q, k))
            }
            None => None,
        };
        let packed = Held::new(&step.packed, &dev, "step metadata")?;
        let args = RopeArgs {
            t: to_u32(t, "tokens")?,
            h: to_u32(h, "heads")?,
            kvh: to_u32(kvh, "kv heads")?,
            d: to_u32(d, "head_dim")?,
            max_pos: to_u32(max_pos, "rope positions")?,
            num_slots: to_u32(step.num_blocks * step.block_size, "cache slots")?,
            interleaved: u32::from(style == RopeStyle::Interleaved),
            eps,
        };
        let ins = RopeInputs { qkv, ql, cos, cl, sin, sl, kc: &kc, vc: &vc, pos: &pos, norms: norms.as_ref(), packed: &packed, slots: step.plan.slot_mapping };
        let storage = match dtype {
            KernelDType::F32 => launch_rope::<f32>(&dev, dtype, &ins, &args)?,
            KernelDType::BF16 => launch_rope::<half::bf16>(&dev, dtype, &ins, &args)?,
            KernelDType::F16 => launch_rope::<half::f16>(&dev, dtype, &ins, &args)?,
        };
        Ok((storage, Shape::from((t, h, d))))
    }

    struct RopeInputs<'a> {
        qkv: &'a CudaStorage,
        ql: &'a Layout,
        cos: &'a CudaStorage,
        cl: &'a Layout,
        sin: &'a CudaStorage,
        sl: &'a Layout,
        kc: &'a Held<'a>,
        vc: &'a Held<'a>,
        pos: &'a Held<'a>,
        norms: Option<&'a (Held<'a>, Held<'a>)>,
        packed: &'a Held<'a>,
        slots: crate::attention::plan::Span,
    }

    /// The device address of a cache's first element (with the guard that orders its use on `stream`).
    fn cache_ptr<'a, T: CudaDType + 'static>(c: &'a Held<'a>, stream: &'a Arc<CudaStream>, what: &str) -> Result<(u64, SyncOnDrop<'a>)> {
        let range = contiguous(c.layout, what)?;
        let s = c.storage().as_cuda_slice::<T>()?;
        if range.end > s.len() {
            bail!("rope-qkv: {what} range {range:?} outside a buffer of {}", s.len());
        }
        let (ptr, sync) = s.device_ptr(stream);
        Ok((ptr + (range.start * std::mem::size_of::<T>()) as u64, sync))
    }

    fn launch_rope<T: CudaDType + DeviceRepr + 'static>(dev: &CudaDevice, dtype: KernelDType, i: &RopeInputs<'_>, a: &RopeArgs) -> Result<CudaStorage> {
        let (t, h, d) = (a.t as usize, a.h as usize, a.d as usize);
        let func = func!(dev, FusedOp::RopeQkv, dtype)?;
        // SAFETY: one warp per (token, q head) writes every element of its q row.
        let mut q_out = unsafe { dev.alloc::<T>((t * h * d).max(1)) }?;
        let qkv = view(i.qkv.as_cuda_slice::<T>()?, contiguous(i.ql, "qkv")?, "qkv")?;
        let cos = view(i.cos.as_cuda_slice::<T>()?, contiguous(i.cl, "cos table")?, "cos table")?;
        let sin = view(i.sin.as_cuda_slice::<T>()?, contiguous(i.sl, "sin table")?, "sin table")?;
        let pos = view(i.pos.storage().as_cuda_slice::<u32>()?, contiguous(i.pos.layout, "positions")?, "positions")?;
        // The packed step metadata is one buffer from offset 0 (as uploaded in `prepare`).
        if i.packed.layout.start_offset() != 0 || !i.packed.layout.is_contiguous() {
            bail!("rope-qkv: attention step metadata must be one contiguous buffer");
        }
        let slots = view(i.packed.storage().as_cuda_slice::<u32>()?, i.slots.start..i.slots.start + i.slots.len, "slot mapping")?;
        // Without q/k norm the weight pointers are never read; any valid pointer stands in.
        let (qn, kn, has_norm) = match i.norms {
            Some((q, k)) => (
                view(q.storage().as_cuda_slice::<T>()?, contiguous(q.layout, "q norm")?, "q norm")?,
                view(k.storage().as_cuda_slice::<T>()?, contiguous(k.layout, "k norm")?, "k norm")?,
                1u32,
            ),
            None => {
                let stand_in = || -> Result<CudaView<'_, T>> { view(i.cos.as_cuda_slice::<T>()?, 0..1, "cos table") };
                (stand_in()?, stand_in()?, 0u32)
            }
        };
        // The caches are written through their device addresses: candle hands out only shared access
        // to tensors other than an op's output, and the cache's memory is touched only by kernels
        // ordered on this one stream (the step's attention reads it after this launch).
        let stream = dev.cuda_stream();
        let (k_ptr, _k_sync) = cache_ptr::<T>(i.kc, &stream, "k cache")?;
        let (v_ptr, _v_sync) = cache_ptr::<T>(i.vc, &stream, "v cache")?;
        let units = t * (h + 2 * a.kvh as usize);
        let blocks = to_u32(units.div_ceil(kernels::ROPE_WARPS as usize), "rope blocks")?;
        let mut b = crate::cuda_pdl::PdlArgs::new(&func, dev);
        b.arg(&mut q_out);
        b.arg(&k_ptr);
        b.arg(&v_ptr);
        b.arg(&qkv);
        b.arg(&pos);
        b.arg(&cos);
        b.arg(&sin);
        b.arg(&qn);
        b.arg(&kn);
        b.arg(&slots);
        b.arg(&a.t);
        b.arg(&a.h);
        b.arg(&a.kvh);
        b.arg(&a.d);
        b.arg(&a.max_pos);
        b.arg(&a.num_slots);
        b.arg(&a.interleaved);
        b.arg(&has_norm);
        b.arg(&a.eps);
        // SAFETY: matches rope_qkv_* in fused.cu. Shapes were checked above: qkv holds t rows of
        // (h + 2 kvh) * d, the caches num_slots rows of kvh * d, the tables max_pos rows of d / 2; every
        // slot was validated against the cache in `prepare` (the kernel also skips any outside it) and
        // positions are clamped below max_pos.
        unsafe { b.launch(config(blocks, 32 * kernels::ROPE_WARPS)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(q_out, dev.clone()))
    }
}
