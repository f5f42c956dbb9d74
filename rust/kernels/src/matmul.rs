//! Launch constants and instance names of the matmul kernels: the 4-bit GEMV and dequantization
//! (kernels/q4_gemm.cu), the 16-bit dense GEMV (kernels/dense_gemv.cu) and the 4-bit tensor-core GEMM
//! (kernels/q4_gemm_tc.cu). Re-exported at the crate root.

use crate::KernelDType;

// ------------------------------------------------------------------------------------------------
// Q4_0 matmul and dequantization (kernels/q4_gemm.cu).

/// PTX of `kernels/q4_gemm.cu`.
#[cfg(feature = "cuda")]
pub use crate::ptx::Q4_GEMM as Q4_GEMM_PTX;

pub const Q4_GEMM_MODULE: &str = "mlc_q4_gemm";
/// Bytes of one GGML Q4_0 block (an f16 scale and 16 bytes of nibbles) and the weights it holds.
pub const Q4_BLOCK_BYTES: usize = 18;
pub const Q4_BLOCK_WEIGHTS: usize = 32;
/// Tokens per n8 tile of the GEMV kernels: the scalar kernel takes one tile per block, the tensor-core
/// kernel [`q4_gemv_mma_tiles`] (grid.x tiles the batch).
pub const Q4_TOKENS_PER_BLOCK: usize = 8;
/// Rows and threads per block of `q4_gemv_mma_*` (`Q4_MMA_ROWS`, `32 * Q4_MMA_WARPS`).
pub const Q4_MMA_ROWS: usize = 16;
pub const Q4_MMA_THREADS: u32 = 256;
/// Dynamic shared memory of one `q4_gemv_mma_*` block: 8 warps x `Q4_MMA_STAGES` (2) copy stages x
/// (16 rows x 144 bytes).
pub const Q4_MMA_SMEM_BYTES: u32 = 8 * 2 * 16 * 144;
/// `q4_gemv_mma_*` needs K to be a multiple of this (8 Q4_0 blocks: 144 bytes, 16-byte aligned rows).
pub const Q4_MMA_K_MULTIPLE: usize = 256;
/// Rows (one warp each) and threads per block of `q4_gemv_simple_*`.
pub const Q4_SIMPLE_ROWS: usize = 8;
pub const Q4_SIMPLE_THREADS: u32 = 256;
/// Threads per block of `q4_dequant_*`.
pub const Q4_DEQUANT_THREADS: u32 = 256;

// ------------------------------------------------------------------------------------------------
// 16-bit dense GEMV for decode-sized batches (kernels/dense_gemv.cu).

pub const DENSE_GEMV_MODULE: &str = "mlc_dense_gemv";
/// Output rows (one warp each) and threads per block of `dense_gemv_*` (`DENSE_WARPS` in dense_gemv.cu).
pub const DENSE_GEMV_ROWS: usize = 8;
pub const DENSE_GEMV_THREADS: u32 = 256;
/// Inputs must be a multiple of this (16-byte chunks of bf16 / f16).
pub const DENSE_GEMV_K_MULTIPLE: usize = 8;
/// Token tiles of the instances: `_t1` for one token, `_t4` for up to four per block.
pub const DENSE_GEMV_TILES: [usize; 2] = [1, 4];

/// `dense_gemv_mma_*`: weight rows per block (outputs: half of them with silu), K multiple, most tokens.
pub const DENSE_GEMV_MMA_ROWS: usize = 16;
pub const DENSE_GEMV_MMA_K_MULTIPLE: usize = 32;
pub const DENSE_GEMV_MMA_MAX_TOKENS: usize = 16;

/// `dense_gemv_mma[_silu]_<dtype>_t<tiles>`: the tensor-core variant with `tiles` tiles of 8 tokens (1 or
/// 2; `None` otherwise or for f32).
pub fn dense_gemv_mma_name(silu: bool, dtype: KernelDType, tiles: usize) -> Option<&'static str> {
    use KernelDType::*;
    Some(match (silu, dtype, tiles) {
        (false, BF16, 1) => "dense_gemv_mma_bf16_t1",
        (false, BF16, 2) => "dense_gemv_mma_bf16_t2",
        (false, F16, 1) => "dense_gemv_mma_f16_t1",
        (false, F16, 2) => "dense_gemv_mma_f16_t2",
        (true, BF16, 1) => "dense_gemv_mma_silu_bf16_t1",
        (true, BF16, 2) => "dense_gemv_mma_silu_bf16_t2",
        (true, F16, 1) => "dense_gemv_mma_silu_f16_t1",
        (true, F16, 2) => "dense_gemv_mma_silu_f16_t2",
        _ => return None,
    })
}

/// `dense_gemv[_silu]_<dtype>_t<tile>` (bf16 / f16; `None` for f32 or a tile without an instance).
pub fn dense_gemv_name(silu: bool, dtype: KernelDType, tile: usize) -> Option<&'static str> {
    use KernelDType::*;
    Some(match (silu, dtype, tile) {
        (false, BF16, 1) => "dense_gemv_bf16_t1",
        (false, BF16, 4) => "dense_gemv_bf16_t4",
        (false, F16, 1) => "dense_gemv_f16_t1",
        (false, F16, 4) => "dense_gemv_f16_t4",
        (true, BF16, 1) => "dense_gemv_silu_bf16_t1",
        (true, BF16, 4) => "dense_gemv_silu_bf16_t4",
        (true, F16, 1) => "dense_gemv_silu_f16_t1",
        (true, F16, 4) => "dense_gemv_silu_f16_t4",
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------------------
// Q4_0 GEMM on tensor cores (kernels/q4_gemm_tc.cu).

/// PTX of `kernels/q4_gemm_tc.cu`.
#[cfg(feature = "cuda")]
pub use crate::ptx::Q4_GEMM_TC as Q4_GEMM_TC_PTX;

pub const Q4_GEMM_TC_MODULE: &str = "mlc_q4_gemm_tc";
/// Weight rows and tokens per block of `q4_gemm_tc_*` (grid = (ceil(N / rows), ceil(M / tokens))).
pub const Q4_GEMM_TC_ROWS: usize = 256;
pub const Q4_GEMM_TC_TOKENS: usize = 64;
pub const Q4_GEMM_TC_THREADS: u32 = 256;
/// Dynamic shared memory of one block: 3 stages of 256 x 72 weight bytes and 64 x 272 activation bytes.
pub const Q4_GEMM_TC_SMEM_BYTES: u32 = 3 * (256 * 72 + 64 * 272);
/// Inputs per pipeline stage (the kernel splits K in whole stages).
pub const Q4_GEMM_TC_GROUP_K: usize = 128;
/// Threads per block of `q4_gemm_tc_reduce_*`.
pub const Q4_GEMM_TC_REDUCE_THREADS: u32 = 256;

/// `q4_gemm_tc_<dtype>` and `q4_gemm_tc_reduce_<dtype>` (bf16 / f16; `None` for f32).
pub fn q4_gemm_tc_names(dtype: KernelDType) -> Option<(&'static str, &'static str)> {
    match dtype {
        KernelDType::BF16 => Some(("q4_gemm_tc_bf16", "q4_gemm_tc_reduce_bf16")),
        KernelDType::F16 => Some(("q4_gemm_tc_f16", "q4_gemm_tc_reduce_f16")),
        KernelDType::F32 => None,
    }
}

/// The kernels of q4_gemm.cu besides the tensor-core GEMV ([`q4_gemv_mma_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Kernel {
    /// Scalar GEMV (every dtype, any K multiple of 32).
    GemvSimple,
    Dequant,
}

/// `q4_gemv_mma[_silu]_<dtype>_t<tiles>`: the tensor-core GEMV (with silu(gate) * up as epilogue for a
/// stacked gate/up weight) taking `tiles` n8 token tiles per block; `None` for f32 or a tile count
/// without an instance ([`Q4_MMA_TILES`]).
pub fn q4_gemv_mma_name(silu: bool, dtype: KernelDType, tiles: usize) -> Option<&'static str> {
    use KernelDType::*;
    const PLAIN_BF16: [&str; 5] = ["q4_gemv_mma_bf16_t1", "q4_gemv_mma_bf16_t2", "q4_gemv_mma_bf16_t3", "q4_gemv_mma_bf16_t4", "q4_gemv_mma_bf16_t8"];
    const PLAIN_F16: [&str; 5] = ["q4_gemv_mma_f16_t1", "q4_gemv_mma_f16_t2", "q4_gemv_mma_f16_t3", "q4_gemv_mma_f16_t4", "q4_gemv_mma_f16_t8"];
    const SILU_BF16: [&str; 5] = [
        "q4_gemv_mma_silu_bf16_t1",
        "q4_gemv_mma_silu_bf16_t2",
        "q4_gemv_mma_silu_bf16_t3",
        "q4_gemv_mma_silu_bf16_t4",
        "q4_gemv_mma_silu_bf16_t8",
    ];
    const SILU_F16: [&str; 5] =
        ["q4_gemv_mma_silu_f16_t1", "q4_gemv_mma_silu_f16_t2", "q4_gemv_mma_silu_f16_t3", "q4_gemv_mma_silu_f16_t4", "q4_gemv_mma_silu_f16_t8"];
    let names = match (silu, dtype) {
        (false, BF16) => &PLAIN_BF16,
        (false, F16) => &PLAIN_F16,
        (true, BF16) => &SILU_BF16,
        (true, F16) => &SILU_F16,
        (_, F32) => return None,
    };
    Q4_MMA_TILES.iter().position(|&t| t == tiles).map(|i| names[i])
}

/// Token tiles per block of the `q4_gemv_mma_*` instances, and the one a batch of `tokens` takes: the
/// fewest that hold it, past 4 tiles the 8-tile instance (its tiles past the batch are skipped), past
/// 64 tokens several blocks of 8 tiles.
pub const Q4_MMA_TILES: [usize; 5] = [1, 2, 3, 4, 8];
pub fn q4_gemv_mma_tiles(tokens: usize) -> usize {
    match tokens.div_ceil(Q4_TOKENS_PER_BLOCK) {
        t @ 0..=4 => t.max(1),
        _ => 8,
    }
}

/// `q4_<kernel>_<dtype>`.
pub fn q4_name(kernel: Q4Kernel, dtype: KernelDType) -> Option<&'static str> {
    use KernelDType::*;
    Some(match (kernel, dtype) {
        (Q4Kernel::GemvSimple, F32) => "q4_gemv_simple_f32",
        (Q4Kernel::GemvSimple, BF16) => "q4_gemv_simple_bf16",
        (Q4Kernel::GemvSimple, F16) => "q4_gemv_simple_f16",
        (Q4Kernel::Dequant, F32) => "q4_dequant_f32",
        (Q4Kernel::Dequant, BF16) => "q4_dequant_bf16",
        (Q4Kernel::Dequant, F16) => "q4_dequant_f16",
    })
}
