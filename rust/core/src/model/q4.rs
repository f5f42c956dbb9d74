//! GGUF Q4_0 weights on a CUDA device, multiplied by our own kernels (`mlc_kernels`' q4_gemm.cu) instead
//! of candle's quantized matmul (which converts the activations to f32 and quantizes them to 8 bits on
//! every call, several launches per projection).
//!
//! The weight is the GGUF tensor's raw Q4_0 blocks (18 bytes per 32 weights, rows of `K / 32` blocks)
//! uploaded once at load as a u8 tensor; `[N, K]` is recorded beside it. Batches of up to
//! [`GEMV_MAX_TOKENS`] tokens run the GEMV kernel (the weights leave DRAM once); larger ones (decode
//! batches of dozens of sequences) run the tensor-core GEMM (q4_gemm_tc.cu), which dequantizes each weight
//! once per 64 tokens in registers. Larger batches (prefill chunks) and what neither kernel takes (f32
//! activations, K not a multiple of 256) dequantize slices of rows to the activations' dtype and use
//! candle's matmul (cuBLAS).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use mlc_kernels::{Q4_BLOCK_BYTES, Q4_BLOCK_WEIGHTS};

/// Largest batch the GEMV kernel takes. Per weight it moves 0.56 bytes from DRAM plus one L2 re-read and
/// one dequantization per further tile of 8 tokens (the tiles of one row tile run side by side), so past a
/// few tiles the tensor-core GEMM, which dequantizes once per 64 tokens, wins. Measured on an H100 (bf16,
/// Llama-3-8B Q4_0 decode through the engine, two alternated rounds, benches/results/
/// gpu_q4_gemv_crossover_h100_2026-12-07.json): with the GEMV up to 16 / 24 tokens, 20 sequences 2 880 /
/// 2 202 tok/s and 24 sequences 3 439 / 2 613 (16 and 32 equal: same kernels). Kernel timings of the same
/// call (q/k/v, gate/up, down at 24 tokens: GEMV 29.1 / 109.8 / 66.4 us, GEMM 24.4 / 94.2 / 48.5) agree.
pub const GEMV_MAX_TOKENS: usize = 16;

/// [`GEMV_MAX_TOKENS`], or `MLC_Q4_GEMV_MAX_TOKENS` when set (read once; for measuring where the GEMV
/// stops paying off; 0 sends every batch to the GEMM).
pub fn gemv_max_tokens() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        crate::switches::number("MLC_Q4_GEMV_MAX_TOKENS").unwrap_or(GEMV_MAX_TOKENS)
    })
}

/// Most token tiles (of 8) one tensor-core GEMV block takes: 1 (one block per 8 tokens, the tiles of one
/// row tile side by side re-reading the weights from L2), or `MLC_Q4_GEMV_MAX_TILES` when set (read once;
/// 1, 2, 3, 4 or 8, other values round down to one of these). More tiles a block dequantize each weight
/// once for up to 64 tokens. Measured on an H100 with the kernel as it is now (tests/gpu/test_q4_gpu.py
/// timings, bf16; gpu_q4_gemv_crossover_h100_2026-12-07.json): at 16 tokens 2 tiles beat 1 (q/k/v 15.7
/// against 21.0 us, gate/up 83.2 against 95.8, down equal), at 32 tokens and more they lose to the GEMM
/// and at 40-64 take up to 3x the GEMM's time (the block's accumulators grow with the tiles: 127-166
/// registers for 4-8 tiles against 56 for one). The engine's decode with 2 tiles at 9-16 sequences is not
/// measured yet (an earlier engine A/B, with the x loads placed after the dequantization, had 2 tiles
/// slower: 16 sequences 1 915 against 2 127 tok/s), so 1 stays the default until it is.
pub fn gemv_max_tiles() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        match crate::switches::number("MLC_Q4_GEMV_MAX_TILES") {
            None | Some(0..=1) => 1,
            Some(v @ 2..=4) => v,
            Some(5..=7) => 4,
            Some(_) => 8,
        }
    })
}

/// Largest batch the tensor-core GEMM takes; larger ones (prefill chunks, decode batches past 128)
/// dequantize the weight in slices and use cuBLAS, which from about 150 tokens per step outruns our
/// mma.sync kernel (about 210 TFLOPS at best) by more than the dequantization costs. Measured on an H100
/// (f16, q/k/v + gate/up + down of Llama-3-8B, tests/gpu/test_q4_gpu.py::test_q4_path_timing): at 64 tokens
/// 34 + 103 + 66 us against 47 + 243 + 130 dequantized, at 128 tokens 68 + 197 + 107 against 64 + 251 +
/// 131, at 192 tokens 105 + 283 + 163 against 52 + 238 + 139.
pub const GEMM_MAX_TOKENS: usize = 128;

/// [`GEMM_MAX_TOKENS`], or `MLC_Q4_GEMM_MAX_TOKENS` when set (read once; 0 turns the GEMM off, for
/// measuring it against the dequantize path in one process).
pub fn gemm_max_tokens() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| crate::switches::number("MLC_Q4_GEMM_MAX_TOKENS").unwrap_or(GEMM_MAX_TOKENS))
}

/// How one Q4_0 matmul runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Path {
    /// The GEMV kernels (tensor-core for bf16 / f16 with K % 256 == 0, scalar otherwise).
    Gemv,
    /// The tensor-core GEMM (bf16 / f16, K % 256 == 0, 16-byte aligned operands).
    Gemm,
    /// Dequantized slices of rows and candle's matmul.
    Dequant,
}

/// Dequantized rows per slice on the large-batch path: at most this many bytes of dequantized weight
/// exist at a time (an 8B model's output projection would otherwise need a 1 GiB temporary). Large enough
/// for Llama-3-8B's stacked gate/up (235 MB in f16) and down projection in one slice each: every further
/// slice costs a cuBLAS call on a narrower matrix and a concatenation of the outputs (on an H100 the
/// 2048-token q4f16_1 prefill took 89 ms with 64 MiB slices, 61 ms with these; bf16 55 ms).
const DEQUANT_SLICE_BYTES: usize = 256 << 20;

/// Q4_0 blocks of an `[n, k]` weight on a CUDA device.
#[derive(Debug, Clone)]
pub struct Q4Weight {
    /// `[n * k / 32 * 18]` u8: the raw blocks, row after row.
    blocks: Tensor,
    n: usize,
    k: usize,
}

impl Q4Weight {
    /// Uploads the raw blocks (`QTensor::data()` of a Q4_0 tensor of shape `[n, k]`) to `device`.
    pub fn from_blocks(raw: &[u8], n: usize, k: usize, device: &Device) -> Result<Self> {
        if !device.is_cuda() {
            bail!("q4 weight: {device:?} is not a CUDA device");
        }
        check_shape(raw.len(), n, k)?;
        let blocks = Tensor::from_slice(raw, raw.len(), device)?;
        Ok(Q4Weight { blocks, n, k })
    }

    /// `[n * k / 32 * 18]` u8: the raw blocks, row after row.
    pub fn blocks(&self) -> &Tensor {
        &self.blocks
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The parts' rows one after the other (`[sum of n, k]`): raw rows concatenate, so each output is
    /// computed exactly as by its part. `None` when the parts differ in `k` or there are none.
    pub fn stack(parts: &[&Q4Weight]) -> Result<Option<Q4Weight>> {
        let Some(first) = parts.first() else { return Ok(None) };
        if parts.iter().any(|p| p.k != first.k) {
            return Ok(None);
        }
        let blocks = Tensor::cat(&parts.iter().map(|p| &p.blocks).collect::<Vec<_>>(), 0)?;
        let n = parts.iter().map(|p| p.n).sum();
        Ok(Some(Q4Weight { blocks, n, k: first.k }))
    }

    /// `x: [..., k] -> [..., n]` in x's dtype (f32, bf16 or f16), accumulated in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&k, lead)) = dims.split_last() else { bail!("q4 matmul: x is a scalar") };
        if k != self.k {
            bail!("q4 matmul: x {:?} does not end in the weight's {} inputs", x.shape(), self.k);
        }
        let t: usize = lead.iter().product();
        let x2 = x.reshape((t, k))?.contiguous()?; // [num_tokens, k]
        let path = self.path_for(&x2);
        let y = self.forward_with(&x2, path)?; // [num_tokens, n]
        let mut out = lead.to_vec();
        out.push(self.n);
        y.reshape(out)
    }

    /// The path [`Self::forward`] takes for `x: [t, k]`.
    pub fn path_for(&self, x: &Tensor) -> Q4Path {
        let t = x.elem_count() / self.k.max(1);
        if t <= gemv_max_tokens() {
            Q4Path::Gemv
        } else if t <= gemm_max_tokens() && self.gemm_fits(x) {
            Q4Path::Gemm
        } else {
            Q4Path::Dequant
        }
    }

    /// Whether the tensor-core GEMM takes `x` (its copies are 16-byte cp.async of rows of 256 inputs).
    fn gemm_fits(&self, x: &Tensor) -> bool {
        matches!(x.dtype(), DType::BF16 | DType::F16)
            && self.k % mlc_kernels::Q4_MMA_K_MULTIPLE == 0
            && x.is_contiguous()
            && (x.layout().start_offset() * x.dtype().size_in_bytes()) % 16 == 0
            && self.blocks.layout().start_offset() % 16 == 0
    }

    /// `x: [t, k] -> [t, n]` on the given path (the GEMM path falls back to the dequantized one where
    /// the GEMM does not fit `x`).
    pub fn forward_with(&self, x: &Tensor, path: Q4Path) -> Result<Tensor> {
        let x = x.contiguous()?;
        match path {
            Q4Path::Gemv => self.gemv_with_tiles(&x, gemv_max_tiles()),
            Q4Path::Gemm if self.gemm_fits(&x) => x.apply_op2_no_bwd(&self.blocks, &Q4GemmTc { n: self.n, k: self.k }),
            Q4Path::Gemm | Q4Path::Dequant => self.matmul_dequantized(&x),
        }
    }

    /// `x: [t, k] -> [t, n]` on the GEMV with at most `max_tiles` token tiles a block (1, 2, 3, 4 or 8;
    /// [`gemv_max_tiles`] is what [`Self::forward`] uses): the GPU tests reach every tile count this way.
    pub fn gemv_with_tiles(&self, x: &Tensor, max_tiles: usize) -> Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&self.blocks, &Q4Gemv { n: self.n, k: self.k, silu: false, max_tiles })
    }

    /// For a stacked gate/up weight (`[2 f, k]`, gate rows then up rows): `x: [t, k] -> [t, f]`
    /// silu(x . gate^T) * (x . up^T), equal to `silu_mul(self.forward(x))`; decode-sized batches on the
    /// tensor-core GEMV compute it in the GEMV's epilogue (no `[t, 2 f]` intermediate, one launch
    /// fewer), every other case runs `forward` then `silu_mul`.
    pub fn forward_silu_mul(&self, x: &Tensor) -> Result<Tensor> {
        let (t, k) = x.dims2()?;
        let fused = t <= gemv_max_tokens()
            && self.n % 2 == 0
            && k == self.k
            && matches!(x.dtype(), DType::BF16 | DType::F16)
            && k % mlc_kernels::Q4_MMA_K_MULTIPLE == 0
            && x.is_contiguous()
            && (x.layout().start_offset() * x.dtype().size_in_bytes()) % 8 == 0
            && self.blocks.layout().start_offset() % 16 == 0;
        if fused {
            return x.apply_op2_no_bwd(&self.blocks, &Q4Gemv { n: self.n, k: self.k, silu: true, max_tiles: gemv_max_tiles() });
        }
        super::fused::silu_mul(&self.forward(x)?)
    }

    /// The weight as `[n, k]` in `dtype`.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        self.dequantize_rows(0, self.n, dtype)
    }

    /// Rows `start..start + rows` as `[rows, k]` in `dtype`.
    fn dequantize_rows(&self, start: usize, rows: usize, dtype: DType) -> Result<Tensor> {
        let row_bytes = self.k / Q4_BLOCK_WEIGHTS * Q4_BLOCK_BYTES;
        let part = self.blocks.narrow(0, start * row_bytes, rows * row_bytes)?;
        part.apply_op1_no_bwd(&Q4Dequant { n: rows, k: self.k, dtype })
    }

    /// `x: [t, k] -> [t, n]` through dequantized slices of rows and candle's matmul.
    fn matmul_dequantized(&self, x: &Tensor) -> Result<Tensor> {
        let rows_per_slice = (DEQUANT_SLICE_BYTES / (self.k * x.dtype().size_in_bytes())).max(1);
        let mut ys = Vec::with_capacity(self.n.div_ceil(rows_per_slice));
        let mut start = 0;
        while start < self.n {
            let rows = rows_per_slice.min(self.n - start);
            let w = self.dequantize_rows(start, rows, x.dtype())?; // [rows, k]
            ys.push(x.matmul(&w.t()?)?); // [t, rows]
            start += rows;
        }
        if ys.len() == 1 {
            return Ok(ys.remove(0));
        }
        Tensor::cat(&ys, 1)
    }
}

fn check_shape(bytes: usize, n: usize, k: usize) -> Result<()> {
    if n == 0 || k == 0 || k % Q4_BLOCK_WEIGHTS != 0 {
        bail!("q4 weight: [{n}, {k}] needs rows and a multiple of {Q4_BLOCK_WEIGHTS} inputs");
    }
    let want = n * (k / Q4_BLOCK_WEIGHTS) * Q4_BLOCK_BYTES;
    if bytes != want {
        bail!("q4 weight: [{n}, {k}] holds {want} bytes of Q4_0 blocks, got {bytes}");
    }
    Ok(())
}

fn cpu_unused(op: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{op}: Q4_0 weights on the CPU go through candle's quantized matmul, not this CUDA op")
}

/// `x: [t, k]` (arg 1) times the blocks (arg 2) -> `[t, n]`, or with `silu` (a stacked gate/up weight)
/// `[t, n / 2]` silu(gate) * up.
struct Q4Gemv {
    n: usize,
    k: usize,
    silu: bool,
    /// Most token tiles (of 8) a tensor-core block takes.
    max_tiles: usize,
}

impl CustomOp2 for Q4Gemv {
    fn name(&self) -> &'static str {
        "q4-gemv"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unused(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gemv(self.n, self.k, self.silu, self.max_tiles, x, xl, w, wl)
    }
}

/// `x: [t, k]` (arg 1) times the blocks (arg 2) -> `[t, n]` on the tensor-core GEMM.
struct Q4GemmTc {
    n: usize,
    k: usize,
}

impl CustomOp2 for Q4GemmTc {
    fn name(&self) -> &'static str {
        "q4-gemm-tc"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unused(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gemm_tc(self.n, self.k, x, xl, w, wl)
    }
}

/// The blocks of `n` rows -> `[n, k]` in `dtype`.
struct Q4Dequant {
    n: usize,
    k: usize,
    dtype: DType,
}

impl CustomOp1 for Q4Dequant {
    fn name(&self) -> &'static str {
        "q4-dequant"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unused(self.name())
    }

    fn cuda_fwd(&self, w: &candle_core::CudaStorage, wl: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::dequant(self.n, self.k, self.dtype, w, wl)
    }
}

mod cuda {
    //! Shape, dtype and alignment checks (errors, never panics), then one launch on candle's stream.

    use super::check_shape;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape};
    use mlc_kernels::{self as kernels, KernelDType, Q4Kernel};
    use std::ops::Range;
    use crate::cuda_args::{contiguous, kernel_dtype, to_u32, view};

    // candle does not export the type of a loaded function, so callers load it themselves by this name.
    fn func_name(kernel: Q4Kernel, dtype: KernelDType) -> Result<&'static str> {
        match kernels::q4_name(kernel, dtype) {
            Some(name) => Ok(name),
            None => bail!("q4: no {kernel:?} kernel for {dtype:?}"),
        }
    }

    // ---- y = x . W^T

    pub fn gemv(n: usize, k: usize, silu: bool, max_tiles: usize, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (t, xk) = xl.shape().dims2()?; // [num_tokens, k]
        if xk != k {
            bail!("q4-gemv: x {:?} does not have the weight's {k} inputs", xl.shape());
        }
        let wr = contiguous(wl, "q4 blocks")?;
        check_shape(wr.len(), n, k)?;
        if w.dtype() != DType::U8 {
            bail!("q4-gemv: blocks must be u8, got {:?}", w.dtype());
        }
        let dtype = kernel_dtype(x.dtype(), "q4-gemv")?;
        let xr = contiguous(xl, "x")?;
        if silu && n % 2 != 0 {
            bail!("q4-gemv: a stacked gate/up weight needs an even number of rows, got {n}");
        }
        let g = Gemv { t, n, k, silu, max_tiles, dtype };
        let storage = match dtype {
            KernelDType::F32 => launch_gemv::<f32>(x, xr, w, wr, &g)?,
            KernelDType::BF16 => launch_gemv::<half::bf16>(x, xr, w, wr, &g)?,
            KernelDType::F16 => launch_gemv::<half::f16>(x, xr, w, wr, &g)?,
        };
        Ok((storage, Shape::from((t, if silu { n / 2 } else { n }))))
    }

    /// One GEMV launch: `t` tokens, `n` weight rows (`n / 2` outputs with `silu`), `k` inputs.
    struct Gemv {
        t: usize,
        n: usize,
        k: usize,
        silu: bool,
        max_tiles: usize,
        dtype: KernelDType,
    }

    fn launch_gemv<T: CudaDType + DeviceRepr>(x: &CudaStorage, xr: Range<usize>, w: &CudaStorage, wr: Range<usize>, g: &Gemv) -> Result<CudaStorage> {
        let Gemv { t, n, k, silu, max_tiles, dtype } = *g;
        let outs = if silu { n / 2 } else { n };
        let dev = x.device().clone();
        // SAFETY: every (token, output row) of the output is written by the launch below.
        let mut out = unsafe { dev.alloc::<T>((t * outs).max(1)) }?;
        if t == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev));
        }
        // The tensor-core kernel copies 16-byte chunks of rows (aligned when K % 256 == 0 and the blocks
        // start on a 16-byte boundary: allocations are 256-byte aligned, so the offset decides) and reads
        // x in 8-byte words (K % 4 == 0 and x's offset).
        let elem = std::mem::size_of::<T>();
        let mma = dtype != KernelDType::F32
            && k % kernels::Q4_MMA_K_MULTIPLE == 0
            && wr.start % 16 == 0
            && (xr.start * elem) % 8 == 0;
        // The tensor-core kernel takes up to `max_tiles` tiles of 8 tokens per block (each dequantized
        // weight feeds one MMA per tile; gemv_max_tiles says why 1 is the default). Output rows per block:
        // the silu kernel spends its 16 MMA rows on 8 gate and 8 up rows.
        let tiles = if mma { kernels::q4_gemv_mma_tiles(t.min(max_tiles.max(1) * kernels::Q4_TOKENS_PER_BLOCK)) } else { 1 };
        let (name, rows, threads) = match (mma, silu) {
            (true, _) => match kernels::q4_gemv_mma_name(silu, dtype, tiles) {
                Some(name) => (name, if silu { kernels::Q4_MMA_ROWS / 2 } else { kernels::Q4_MMA_ROWS }, kernels::Q4_MMA_THREADS),
                None => bail!("q4-gemv: no tensor-core GEMV for {dtype:?} with {tiles} token tiles"),
            },
            (false, false) => (func_name(Q4Kernel::GemvSimple, dtype)?, kernels::Q4_SIMPLE_ROWS, kernels::Q4_SIMPLE_THREADS),
            (false, true) => bail!("q4-gemv: the fused silu GEMV needs bf16 / f16, K % 256 == 0 and aligned operands"),
        };
        let smem = if mma { kernels::Q4_MMA_SMEM_BYTES } else { 0 };
        let func = crate::cuda_kernels::func_smem(&dev, name, &kernels::modules::Q4_GEMM, smem)?;
        let xv = view(x.as_cuda_slice::<T>()?, xr, "x")?;
        let wv = view(w.as_cuda_slice::<u8>()?, wr, "q4 blocks")?;
        // The kernels take N as their output count (the silu kernel finds the up rows N rows further).
        let (t32, outs32, k32) = (to_u32(t, "tokens")?, to_u32(outs, "rows")?, to_u32(k, "inputs")?);
        let block_tokens = tiles * kernels::Q4_TOKENS_PER_BLOCK;
        let grid = (to_u32(t.div_ceil(block_tokens), "token tiles")?, to_u32(outs.div_ceil(rows), "row tiles")?);
        if grid.1 > 65_535 {
            bail!("q4-gemv: {n} rows need {} row tiles, more than a grid's 65535", grid.1);
        }
        let cfg = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem };
        // SAFETY: matches q4_gemv_*_<dtype> in q4_gemm.cu (smem: the tensor-core kernel's copy stages); x
        // holds t * k elements, the blocks n rows of k / 32 blocks (checked above), out t * outs; the
        // tensor-core kernels' alignment was checked above.
        unsafe { crate::cuda_pdl::launch_gemv(&func, &dev, (&mut out, &wv, &xv), [t32, outs32, k32], cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    // ---- y = x . W^T on the tensor-core GEMM

    pub fn gemm_tc(n: usize, k: usize, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (t, xk) = xl.shape().dims2()?; // [num_tokens, k]
        if xk != k {
            bail!("q4-gemm-tc: x {:?} does not have the weight's {k} inputs", xl.shape());
        }
        let wr = contiguous(wl, "q4 blocks")?;
        check_shape(wr.len(), n, k)?;
        if w.dtype() != DType::U8 {
            bail!("q4-gemm-tc: blocks must be u8, got {:?}", w.dtype());
        }
        let dtype = kernel_dtype(x.dtype(), "q4-gemm-tc")?;
        let xr = contiguous(xl, "x")?;
        let storage = match dtype {
            KernelDType::BF16 => launch_gemm_tc::<half::bf16>(x, xr, w, wr, (t, n, k), dtype)?,
            KernelDType::F16 => launch_gemm_tc::<half::f16>(x, xr, w, wr, (t, n, k), dtype)?,
            KernelDType::F32 => bail!("q4-gemm-tc: f32 activations take the dequantize path"),
        };
        Ok((storage, Shape::from((t, n))))
    }

    fn launch_gemm_tc<T: CudaDType + DeviceRepr>(
        x: &CudaStorage,
        xr: Range<usize>,
        w: &CudaStorage,
        wr: Range<usize>,
        (t, n, k): (usize, usize, usize),
        dtype: KernelDType,
    ) -> Result<CudaStorage> {
        // The kernel copies 16-byte pieces of weight rows (144-byte groups: K % 256 == 0, blocks on a
        // 16-byte boundary) and of activation rows (K % 8 == 0, x on a 16-byte boundary).
        let elem = std::mem::size_of::<T>();
        if k % kernels::Q4_MMA_K_MULTIPLE != 0 || wr.start % 16 != 0 || (xr.start * elem) % 16 != 0 {
            bail!("q4-gemm-tc: needs K % 256 == 0 and 16-byte aligned operands (K {k}, offsets {} / {})", wr.start, xr.start * elem);
        }
        let dev = x.device().clone();
        // SAFETY: every (token, row) of the output is written by the launch below.
        let mut out = unsafe { dev.alloc::<T>((t * n).max(1)) }?;
        if t == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev));
        }
        let Some((name, reduce_name)) = kernels::q4_gemm_tc_names(dtype) else { bail!("q4-gemm-tc: no kernel for {dtype:?}") };
        let func = crate::cuda_kernels::func_smem(&dev, name, &kernels::modules::Q4_GEMM_TC, kernels::Q4_GEMM_TC_SMEM_BYTES as u32)?;
        let xv = view(x.as_cuda_slice::<T>()?, xr, "x")?;
        let wv = view(w.as_cuda_slice::<u8>()?, wr, "q4 blocks")?;
        let (t32, n32, k32) = (to_u32(t, "tokens")?, to_u32(n, "rows")?, to_u32(k, "inputs")?);
        let (row_tiles, token_tiles) = (n.div_ceil(kernels::Q4_GEMM_TC_ROWS), t.div_ceil(kernels::Q4_GEMM_TC_TOKENS));
        let grid = (to_u32(row_tiles, "row tiles")?, to_u32(token_tiles, "token tiles")?);
        if grid.1 > 65_535 {
            bail!("q4-gemm-tc: {t} tokens need {} token tiles, more than a grid's 65535", grid.1);
        }
        let splits = k_splits(row_tiles * token_tiles, k / kernels::Q4_GEMM_TC_GROUP_K);
        // SAFETY: with splits > 1 every (split, token, row) is written by the GEMM before the reduce reads it.
        let mut partial = unsafe { dev.alloc::<f32>(if splits > 1 { splits * t * n } else { 1 }) }?;
        let splits32 = splits as u32;
        let mut b = func.builder();
        b.arg(&mut out);
        b.arg(&mut partial);
        b.arg(&wv);
        b.arg(&xv);
        b.arg(&t32);
        b.arg(&n32);
        b.arg(&k32);
        b.arg(&splits32);
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, splits32),
            block_dim: (kernels::Q4_GEMM_TC_THREADS, 1, 1),
            shared_mem_bytes: kernels::Q4_GEMM_TC_SMEM_BYTES,
        };
        // SAFETY: matches q4_gemm_tc_<dtype> in q4_gemm_tc.cu; x holds t * k elements, the blocks n rows
        // of k / 32 blocks (checked by the caller), out t * n, partial splits * t * n when splits > 1;
        // alignment checked above.
        unsafe { b.launch(cfg) }.w()?;
        if splits > 1 {
            let reduce = crate::cuda_kernels::func(&dev, reduce_name, &kernels::modules::Q4_GEMM_TC)?;
            let count = (t * n) as u64;
            let blocks = (t * n).div_ceil(kernels::Q4_GEMM_TC_REDUCE_THREADS as usize).min(65_535) as u32;
            let mut b = reduce.builder();
            b.arg(&mut out);
            b.arg(&partial);
            b.arg(&count);
            b.arg(&splits32);
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (kernels::Q4_GEMM_TC_REDUCE_THREADS, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: matches q4_gemm_tc_reduce_<dtype>; partial holds splits x count f32, out count T.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    /// K splits for `tiles` blocks over `groups` stages of K: as many as keep the grid within one wave of
    /// two blocks per SM on an H100 / H200 (132 SMs; a second, partial wave would take as long as the
    /// first), each split at least two stages long (so its pipeline overlaps), at most 8: each split adds
    /// an f32 copy of the output to write and reduce (at 64 tokens and K 4096 a fifth of the weight's
    /// bytes), and one block per SM already keeps enough loads in flight for the bandwidth.
    pub(super) fn k_splits(tiles: usize, groups: usize) -> usize {
        const TARGET_BLOCKS: usize = 264;
        (TARGET_BLOCKS / tiles.max(1)).min(groups / 2).clamp(1, 8)
    }

    // ---- W -> dense

    pub fn dequant(n: usize, k: usize, dtype: DType, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let wr = contiguous(wl, "q4 blocks")?;
        check_shape(wr.len(), n, k)?;
        if w.dtype() != DType::U8 {
            bail!("q4-dequant: blocks must be u8, got {:?}", w.dtype());
        }
        let kd = kernel_dtype(dtype, "q4-dequant")?;
        let storage = match kd {
            KernelDType::F32 => launch_dequant::<f32>(w, wr, n * k, kd)?,
            KernelDType::BF16 => launch_dequant::<half::bf16>(w, wr, n * k, kd)?,
            KernelDType::F16 => launch_dequant::<half::f16>(w, wr, n * k, kd)?,
        };
        Ok((storage, Shape::from((n, k))))
    }

    fn launch_dequant<T: CudaDType + DeviceRepr>(w: &CudaStorage, wr: Range<usize>, elems: usize, dtype: KernelDType) -> Result<CudaStorage> {
        let dev = w.device().clone();
        // SAFETY: every block's 32 outputs are written (grid-stride over every quarter block).
        let mut out = unsafe { dev.alloc::<T>(elems) }?;
        let blocks = (elems / kernels::Q4_BLOCK_WEIGHTS) as u64;
        let func = crate::cuda_kernels::func(&dev, func_name(Q4Kernel::Dequant, dtype)?, &kernels::modules::Q4_GEMM)?;
        let wv = view(w.as_cuda_slice::<u8>()?, wr, "q4 blocks")?;
        // One thread per quarter block (8 outputs), grid-stride.
        let grid = (blocks as usize * 4).div_ceil(kernels::Q4_DEQUANT_THREADS as usize).min(65_535) as u32;
        let mut b = func.builder();
        b.arg(&mut out);
        b.arg(&wv);
        b.arg(&blocks);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (kernels::Q4_DEQUANT_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches q4_dequant_<dtype> in q4_gemm.cu; the blocks hold `blocks` x 18 bytes (checked
        // by the caller), out `blocks` x 32 elements.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
