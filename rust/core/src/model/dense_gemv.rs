//! 16-bit dense projections of decode-sized batches on CUDA by our own GEMV (`mlc_kernels`'
//! dense_gemv.cu) instead of cuBLAS: one kernel per projection (cuBLAS splits K over two kernels for
//! some 8B shapes at one token), a gate/up projection with silu(gate) * up as its epilogue, and launches
//! with programmatic dependent launch, so each projection streams its first weights while the kernel
//! before it finishes. Larger batches, f32 and shapes the kernel does not take stay on cuBLAS.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Largest batch the GEMV takes by default. Measured on an H100 (Llama-3-8B shapes, bf16, back-to-back
/// calls, tests/gpu/test_fused.py timings; cuBLAS with `MLC_DENSE_GEMV_MAX_TOKENS=0`): at one token q/k/v
/// 18.7 us against cuBLAS's 22.0, o_proj 11.5 against 24.5, gate/up with silu 77.3 against 81.5 (GEMV
/// then silu_mul), down 43.7 against 44.4 (the cuBLAS process ran first, at 15-35 % slower short kernels:
/// only o_proj's gap stands out of that), and batch-1 greedy decode 165.9 against 160.9 tok/s in
/// alternating runs; at four tokens (the 4-token tile, f32 FMAs on the CUDA cores) o_proj 20.2 against
/// 24.7 but down 72.9 against 44.4. So one token by default; the 4-token instances stay for
/// `MLC_DENSE_GEMV_MAX_TOKENS` up to 4.
pub const MAX_TOKENS: usize = 1;

/// [`MAX_TOKENS`], or `MLC_DENSE_GEMV_MAX_TOKENS` when set (read once, capped at 4; 0 sends every batch
/// to cuBLAS, for measuring one against the other).
pub fn max_tokens() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        crate::switches::number("MLC_DENSE_GEMV_MAX_TOKENS").map_or(MAX_TOKENS, |v| v.min(4))
    })
}

/// Most tokens the tensor-core variant (`dense_gemv_mma_*`, 2 to 16 tokens, K a multiple of 32) takes:
/// `MLC_DENSE_GEMV_MMA_MAX_TOKENS` (read once, capped at 16); 0, the default, leaves 2-16 tokens to
/// [`max_tokens`]'s kernels and cuBLAS until the variant is measured against cuBLAS on a GPU (checked in
/// the CPU emulation only so far).
pub fn mma_max_tokens() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        crate::switches::number("MLC_DENSE_GEMV_MMA_MAX_TOKENS").map_or(0, |v| v.min(mlc_kernels::DENSE_GEMV_MMA_MAX_TOKENS))
    })
}

/// Whether the tensor-core variant takes `t` tokens of `k` inputs.
fn mma_takes(t: usize, k: usize) -> bool {
    (2..=mma_max_tokens()).contains(&t) && k % mlc_kernels::DENSE_GEMV_MMA_K_MULTIPLE == 0
}

/// Whether `x: [t, k]` times `w: [n, k]` (`silu`: a stacked gate/up weight, `n` even) runs the GEMV:
/// both on CUDA in bf16 or f16, 1 to [`max_tokens`] tokens (or what the tensor-core variant takes), K a
/// multiple of 8, both contiguous and 16-byte aligned (the kernels read 16-byte chunks), and few enough
/// rows for one grid.
pub fn takes(x: &Tensor, w: &Tensor, silu: bool) -> bool {
    let (Ok((t, k)), Ok((n, wk))) = (x.dims2(), w.dims2()) else { return false };
    let outs = if silu { n / 2 } else { n };
    let aligned = |a: &Tensor| a.is_contiguous() && (a.layout().start_offset() * a.dtype().size_in_bytes()) % 16 == 0;
    x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && w.dtype() == x.dtype()
        && ((1..=max_tokens()).contains(&t) || mma_takes(t, k))
        && k == wk
        && k % mlc_kernels::DENSE_GEMV_K_MULTIPLE == 0
        && (!silu || n % 2 == 0)
        && outs.div_ceil(mlc_kernels::DENSE_GEMV_ROWS) <= 65_535
        && aligned(x)
        && aligned(w)
}

/// `x: [t, k]`, `w: [n, k]` -> `[t, n]` (callers check [`takes`] first).
pub fn forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &DenseGemv { silu: false })
}

/// `x: [t, k]`, a stacked gate/up `w: [2 f, k]` -> `[t, f]` silu(x . gate^T) * (x . up^T), equal to
/// `silu_mul(forward(x, w))`.
pub fn forward_silu_mul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &DenseGemv { silu: true })
}

struct DenseGemv {
    silu: bool,
}

impl CustomOp2 for DenseGemv {
    fn name(&self) -> &'static str {
        "dense-gemv"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("dense-gemv: a CUDA kernel; dense weights on the CPU use candle's matmul")
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gemv(self.silu, x, xl, w, wl)
    }
}

mod cuda {
    //! Shape, dtype and alignment checks (errors, never panics), then one launch on candle's stream.

    use crate::cuda_args::{contiguous, kernel_dtype, to_u32, view};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result, Shape};
    use mlc_kernels::{self as kernels, KernelDType};
    use std::ops::Range;

    pub fn gemv(silu: bool, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (t, k) = xl.shape().dims2()?; // [num_tokens, k]
        let (n, wk) = wl.shape().dims2()?; // [rows, k]
        if wk != k || k % kernels::DENSE_GEMV_K_MULTIPLE != 0 {
            bail!("dense-gemv: x {:?} and w {:?} need equal inputs, a multiple of 8", xl.shape(), wl.shape());
        }
        if silu && n % 2 != 0 {
            bail!("dense-gemv: a stacked gate/up weight needs an even number of rows, got {n}");
        }
        if x.dtype() != w.dtype() {
            bail!("dense-gemv: x is {:?}, w {:?}", x.dtype(), w.dtype());
        }
        let dtype = kernel_dtype(x.dtype(), "dense-gemv")?;
        let (xr, wr) = (contiguous(xl, "x")?, contiguous(wl, "w")?);
        // 16-byte chunks: both starts 16-byte aligned (allocations are 256-byte aligned, the offset decides).
        if xr.start % 8 != 0 || wr.start % 8 != 0 {
            bail!("dense-gemv: x and w must start 16-byte aligned (offsets {} and {} elements)", xr.start, wr.start);
        }
        let outs = if silu { n / 2 } else { n };
        let g = Gemv { t, outs, k, silu, dtype };
        let storage = match dtype {
            KernelDType::BF16 => launch::<half::bf16>(x, xr, w, wr, &g)?,
            KernelDType::F16 => launch::<half::f16>(x, xr, w, wr, &g)?,
            KernelDType::F32 => bail!("dense-gemv: no f32 kernel (f32 projections use cuBLAS)"),
        };
        Ok((storage, Shape::from((t, outs))))
    }

    /// One launch: `t` tokens, `outs` outputs (weight rows, or gate/up row pairs with `silu`), `k` inputs.
    struct Gemv {
        t: usize,
        outs: usize,
        k: usize,
        silu: bool,
        dtype: KernelDType,
    }

    fn launch<T: CudaDType + DeviceRepr>(x: &CudaStorage, xr: Range<usize>, w: &CudaStorage, wr: Range<usize>, g: &Gemv) -> Result<CudaStorage> {
        let Gemv { t, outs, k, silu, dtype } = *g;
        let dev = x.device().clone();
        // SAFETY: every (token, output) of the output is written by the launch below.
        let mut out = unsafe { dev.alloc::<T>((t * outs).max(1)) }?;
        if t == 0 || outs == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev));
        }
        // One token: the single-token instance; 2-16 the tensor-core variant where enabled (1 or 2 tiles of
        // 8 tokens a block, 16 weight rows: 8 outputs with silu); else tiles of 4.
        let (name, block_tokens, rows) = if super::mma_takes(t, k) {
            let tiles = t.div_ceil(8).min(2);
            let rows = if silu { kernels::DENSE_GEMV_MMA_ROWS / 2 } else { kernels::DENSE_GEMV_MMA_ROWS };
            (kernels::dense_gemv_mma_name(silu, dtype, tiles), 8 * tiles, rows)
        } else {
            let tile = if t == 1 { 1 } else { kernels::DENSE_GEMV_TILES[1] };
            (kernels::dense_gemv_name(silu, dtype, tile), tile, kernels::DENSE_GEMV_ROWS)
        };
        let Some(name) = name else {
            bail!("dense-gemv: no kernel for {dtype:?}");
        };
        let func = crate::cuda_kernels::func(&dev, name, &kernels::modules::DENSE_GEMV)?;
        let xv = view(x.as_cuda_slice::<T>()?, xr, "x")?;
        let wv = view(w.as_cuda_slice::<T>()?, wr, "w")?;
        let (t32, outs32, k32) = (to_u32(t, "tokens")?, to_u32(outs, "outputs")?, to_u32(k, "inputs")?);
        let grid = (to_u32(t.div_ceil(block_tokens), "token tiles")?, to_u32(outs.div_ceil(rows), "row tiles")?);
        if grid.1 > 65_535 {
            bail!("dense-gemv: {outs} outputs need {} row tiles, more than a grid's 65535", grid.1);
        }
        let cfg = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (kernels::DENSE_GEMV_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches dense_gemv[_mma][_silu]_<dtype>_t<tile> in dense_gemv.cu; x holds t * k elements
        // and w outs (2 outs with silu) rows of k, both 16-byte aligned (checked above; K % 32 == 0 for the
        // tensor-core variant, mma_takes); out holds t * outs.
        unsafe { crate::cuda_pdl::launch_gemv(&func, &dev, (&mut out, &wv, &xv), [t32, outs32, k32], cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
