//! Our own CUDA kernels (attention, KV-cache write, fused layer ops, sampling, 4-bit GEMM, MoE), compiled
//! at build time behind feature `cuda` to PTX and, ahead of time, to SASS for the build's compute
//! capability ([`KernelModule`]), and loaded by the engine on candle's CUDA device
//! (`mlc_core::cuda_kernels`).
//!
//! This crate holds the kernel sources, their PTX and the launch contract (module / function names and
//! the constants the `.cu` files are compiled with); the safe launches live beside the candle ops that
//! use them (`mlc_core::attention`). CPU builds compile only the constants.

#[cfg(feature = "cuda")]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

#[cfg(feature = "cuda")]
mod sass {
    include!(concat!(env!("OUT_DIR"), "/sass.rs"));
}

mod image;
pub use image::{module_code, parse_sm_arch, sass_runs_on, KernelModule, ModuleCode, SASS_ARCH};

/// The modules of `kernels/*.cu`, for [`KernelModule`]-taking loaders (`mlc_core::cuda_kernels`).
/// Statics, not consts: every use of a const would embed its own copy of the PTX and SASS.
#[cfg(feature = "cuda")]
pub mod modules {
    use super::{ptx, sass, KernelModule};
    macro_rules! module {
        ($name:ident, $cached:expr) => {
            pub static $name: KernelModule = KernelModule { name: $cached, ptx: ptx::$name, sass: sass::$name };
        };
    }
    module!(KV_WRITE, super::KV_WRITE_MODULE);
    module!(PAGED_ATTENTION, super::PAGED_ATTENTION_MODULE);
    module!(PREFILL_ATTENTION, super::PREFILL_ATTENTION_MODULE);
    module!(FUSED, super::FUSED_MODULE);
    module!(SAMPLING, super::SAMPLING_MODULE);
    module!(Q4_GEMM, super::Q4_GEMM_MODULE);
    module!(Q4_GEMM_TC, super::Q4_GEMM_TC_MODULE);
    module!(MOE, super::MOE_MODULE);
    module!(MOE_GEMM, super::MOE_GEMM_MODULE);
    module!(DENSE_GEMV, super::DENSE_GEMV_MODULE);

    /// Every module, for loading them all when an engine starts.
    pub static ALL: [&KernelModule; 10] =
        [&KV_WRITE, &PAGED_ATTENTION, &PREFILL_ATTENTION, &FUSED, &SAMPLING, &Q4_GEMM, &Q4_GEMM_TC, &MOE, &MOE_GEMM, &DENSE_GEMV];
}

/// PTX of `kernels/kv_write.cu`.
#[cfg(feature = "cuda")]
pub use ptx::KV_WRITE as KV_WRITE_PTX;
/// PTX of `kernels/paged_attention.cu`.
#[cfg(feature = "cuda")]
pub use ptx::PAGED_ATTENTION as PAGED_ATTENTION_PTX;
/// PTX of `kernels/fused.cu` (the decoder layer's fused elementwise kernels).
#[cfg(feature = "cuda")]
pub use ptx::FUSED as FUSED_PTX;
/// PTX of `kernels/prefill_attention.cu`.
#[cfg(feature = "cuda")]
pub use ptx::PREFILL_ATTENTION as PREFILL_ATTENTION_PTX;

/// Module names under which the PTX is cached per device (`get_or_load_custom_func`).
pub const KV_WRITE_MODULE: &str = "mlc_kv_write";
pub const PAGED_ATTENTION_MODULE: &str = "mlc_paged_attention";
pub const FUSED_MODULE: &str = "mlc_fused";

/// Threads per block of `silu_mul_*` and `add_rms_norm_*` (`FUSED_THREADS` in fused.cu).
pub const FUSED_THREADS: u32 = 256;
/// Warps per block of `rope_qkv_*`, one (token, head) each (`ROPE_WARPS` in fused.cu).
pub const ROPE_WARPS: u32 = 4;
/// Largest head dimension `rope_qkv_*` accepts (`ROPE_MAX_PAIRS_PER_LANE` pairs on each of 32 lanes).
pub const ROPE_MAX_HEAD_DIM: usize = 256;

/// The kernels of fused.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedOp {
    SiluMul,
    AddRmsNorm,
    RopeQkv,
}

/// `<op>_<dtype>`: the instance of a fused.cu kernel.
pub fn fused_name(op: FusedOp, dtype: KernelDType) -> &'static str {
    use KernelDType::*;
    match (op, dtype) {
        (FusedOp::SiluMul, F32) => "silu_mul_f32",
        (FusedOp::SiluMul, BF16) => "silu_mul_bf16",
        (FusedOp::SiluMul, F16) => "silu_mul_f16",
        (FusedOp::AddRmsNorm, F32) => "add_rms_norm_f32",
        (FusedOp::AddRmsNorm, BF16) => "add_rms_norm_bf16",
        (FusedOp::AddRmsNorm, F16) => "add_rms_norm_f16",
        (FusedOp::RopeQkv, F32) => "rope_qkv_f32",
        (FusedOp::RopeQkv, BF16) => "rope_qkv_bf16",
        (FusedOp::RopeQkv, F16) => "rope_qkv_f16",
    }
}

/// Threads per block of the attention kernel (`ATTN_THREADS` in paged_attention.cu).
pub const ATTN_THREADS: u32 = 256;
/// Query heads one attention block serves at most, a warp each (`ATTN_MAX_GROUP` in paged_attention.cu):
/// the heads of a GQA group share the block's reads of their KV head.
pub const ATTN_MAX_GROUP: usize = 8;
/// Most context partitions one query token may be split into (`ATTN_MAX_SPLITS` in paged_attention.cu:
/// the merging block keeps one weight per partition in shared memory).
pub const ATTN_MAX_SPLITS: usize = 64;
/// Largest head dimension the attention kernels accept (the widest shared-memory row of paged_attention.cu).
pub const ATTN_MAX_HEAD_DIM: usize = 256;
/// Threads per block of the KV write kernel.
pub const KV_WRITE_THREADS: u32 = 128;

/// Element types the kernels are instantiated for; the suffix of every kernel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelDType {
    F32,
    BF16,
    F16,
}

impl KernelDType {
    pub fn suffix(self) -> &'static str {
        match self {
            KernelDType::F32 => "f32",
            KernelDType::BF16 => "bf16",
            KernelDType::F16 => "f16",
        }
    }
}

/// `kv_write_<dtype>`.
pub fn kv_write_name(dtype: KernelDType) -> &'static str {
    match dtype {
        KernelDType::F32 => "kv_write_f32",
        KernelDType::BF16 => "kv_write_bf16",
        KernelDType::F16 => "kv_write_f16",
    }
}

/// `kv_write_fp8_<dtype>` (`scales`: `kv_scale_fp8_<dtype>`): an FP8 e4m3 cache's rows (or their scales)
/// from new rows of `dtype`.
pub fn kv_write_fp8_name(dtype: KernelDType, scales: bool) -> &'static str {
    match (dtype, scales) {
        (KernelDType::F32, false) => "kv_write_fp8_f32",
        (KernelDType::BF16, false) => "kv_write_fp8_bf16",
        (KernelDType::F16, false) => "kv_write_fp8_f16",
        (KernelDType::F32, true) => "kv_scale_fp8_f32",
        (KernelDType::BF16, true) => "kv_scale_fp8_bf16",
        (KernelDType::F16, true) => "kv_scale_fp8_f16",
    }
}

/// `paged_attention_[fp8_]<dtype>_d<max head dim>`: the instance for q / out of `dtype` over a cache of
/// `dtype` (or FP8 e4m3 with `fp8`), for the smallest of 64, 128, 256 that holds `head_dim` (rows are
/// padded to it in shared memory; other sizes, d96 included, are masked). `None` above
/// [`ATTN_MAX_HEAD_DIM`].
pub fn paged_attention_name(dtype: KernelDType, head_dim: usize, fp8: bool) -> Option<&'static str> {
    use KernelDType::*;
    let d = match head_dim {
        0 => return None,
        1..=64 => 64,
        65..=128 => 128,
        129..=256 => 256,
        _ => return None,
    };
    if fp8 {
        return Some(match (dtype, d) {
            (F32, 64) => "paged_attention_fp8_f32_d64",
            (F32, 128) => "paged_attention_fp8_f32_d128",
            (F32, _) => "paged_attention_fp8_f32_d256",
            (BF16, 64) => "paged_attention_fp8_bf16_d64",
            (BF16, 128) => "paged_attention_fp8_bf16_d128",
            (BF16, _) => "paged_attention_fp8_bf16_d256",
            (F16, 64) => "paged_attention_fp8_f16_d64",
            (F16, 128) => "paged_attention_fp8_f16_d128",
            (F16, _) => "paged_attention_fp8_f16_d256",
        });
    }
    Some(match (dtype, d) {
        (F32, 64) => "paged_attention_f32_d64",
        (F32, 128) => "paged_attention_f32_d128",
        (F32, _) => "paged_attention_f32_d256",
        (BF16, 64) => "paged_attention_bf16_d64",
        (BF16, 128) => "paged_attention_bf16_d128",
        (BF16, _) => "paged_attention_bf16_d256",
        (F16, 64) => "paged_attention_f16_d64",
        (F16, 128) => "paged_attention_f16_d128",
        (F16, _) => "paged_attention_f16_d256",
    })
}

/// Threads per block of the tensor-core decode kernel (`DECODE_TC_THREADS` in decode_tc.cuh).
pub const DECODE_TC_THREADS: u32 = 128;

/// Dynamic shared memory of one tensor-core decode block (`decode_tc_smem_bytes` in decode_tc.cuh, which
/// asserts the same layout): per stage (two for 16-bit caches, one for FP8) a K and a V tile of 64 rows of
/// head_dim + 8 16-bit values and 64 slot indices.
pub fn decode_tc_smem_bytes(head_dim: usize, fp8: bool) -> u32 {
    let stages = if fp8 { 1 } else { 2 };
    (stages * (2 * 64 * (head_dim + 8) * 2 + 64 * 4)) as u32
}

/// `decode_attention_tc_[fp8_]<dtype>_d<head_dim>` (decode_tc.cuh, in the paged-attention module): the
/// per-token kernel's work rows on the tensor cores, for bf16 / f16 q at head_dim 64 or 128 exactly, over
/// a cache of q's dtype or FP8 e4m3; `None` elsewhere (those stay on `paged_attention_*`).
pub fn decode_attention_tc_name(dtype: KernelDType, head_dim: usize, fp8: bool) -> Option<&'static str> {
    use KernelDType::*;
    Some(match (dtype, head_dim, fp8) {
        (BF16, 64, false) => "decode_attention_tc_bf16_d64",
        (BF16, 128, false) => "decode_attention_tc_bf16_d128",
        (F16, 64, false) => "decode_attention_tc_f16_d64",
        (F16, 128, false) => "decode_attention_tc_f16_d128",
        (BF16, 64, true) => "decode_attention_tc_fp8_bf16_d64",
        (BF16, 128, true) => "decode_attention_tc_fp8_bf16_d128",
        (F16, 64, true) => "decode_attention_tc_fp8_f16_d64",
        (F16, 128, true) => "decode_attention_tc_fp8_f16_d128",
        _ => return None,
    })
}

/// The attention kernels' `window` argument: keys per query at most, `u32::MAX` for full causal
/// attention (a window that wide excludes no position a `u32` index can hold).
pub fn attn_window_arg(window: Option<usize>) -> u32 {
    window.map_or(u32::MAX, |w| u32::try_from(w).unwrap_or(u32::MAX))
}

/// The attention kernels' `softcap` argument: the cap, 0 for none.
pub fn attn_softcap_arg(softcap: Option<f32>) -> f32 {
    softcap.unwrap_or(0.0)
}

/// Module name of the tiled prefill kernels and their launch constants (`PREFILL_*` in
/// prefill_attention.cu): query rows per block, threads per block.
pub const PREFILL_ATTENTION_MODULE: &str = "mlc_prefill_attention";
pub const PREFILL_TILE_M: usize = 64;
pub const PREFILL_THREADS: u32 = 128;

/// `prefill_attention_[fp8_]<dtype>_d<head_dim>[_cap]`: the tiled tensor-core kernel, for bf16 / f16 and
/// head_dim 64, 96, 128 or 256 exactly (`None` otherwise: those steps stay on the per-token kernel);
/// `_cap` for layers with a score cap (instances of their own, so the others keep their registers);
/// `fp8_` over an FP8 e4m3 cache (with its row scales). head_dim 256 walks keys in tiles of 32 rather
/// than 64 (shared memory).
pub fn prefill_attention_name(dtype: KernelDType, head_dim: usize, capped: bool, fp8: bool) -> Option<&'static str> {
    const DIMS: [usize; 4] = [64, 96, 128, 256];
    // [fp8][dtype][head_dim][cap], built once: the names of the instances in prefill_attention.cu.
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut v = Vec::with_capacity(32);
        for cache in ["", "fp8_"] {
            for ty in ["bf16", "f16"] {
                for d in DIMS {
                    for cap in ["", "_cap"] {
                        v.push(format!("prefill_attention_{cache}{ty}_d{d}{cap}"));
                    }
                }
            }
        }
        v
    });
    let ty = match dtype {
        KernelDType::BF16 => 0,
        KernelDType::F16 => 1,
        KernelDType::F32 => return None,
    };
    let d = DIMS.iter().position(|&x| x == head_dim)?;
    Some(names[((usize::from(fp8) * 2 + ty) * 4 + d) * 2 + usize::from(capped)].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 4-bit GEMV's shared memory here is the kernel's (q4_gemm.cu's #defines).
    #[test]
    fn q4_gemv_constants_match_the_kernel() {
        let src = include_str!("../kernels/q4_gemm.cu");
        let def = |name: &str| -> usize {
            let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name} not defined"));
            line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
        };
        let stage = def("Q4_MMA_ROWS") * def("Q4_GROUP_BYTES");
        assert_eq!(Q4_MMA_SMEM_BYTES as usize, def("Q4_MMA_WARPS") * def("Q4_MMA_STAGES") * stage);
        assert_eq!(Q4_MMA_ROWS, def("Q4_MMA_ROWS"));
    }

    /// Every tile count the host may pick has an instance (token-pasted by Q4_GEMV_MMA_TILES) and a name.
    #[test]
    fn q4_gemv_tiles_have_instances() {
        let src = include_str!("../kernels/q4_gemm.cu");
        for tokens in 1..=200 {
            let tiles = q4_gemv_mma_tiles(tokens);
            assert!(tiles * Q4_TOKENS_PER_BLOCK >= tokens.min(64), "{tokens} tokens, {tiles} tiles");
            assert!(src.contains(&format!("\nQ4_GEMV_MMA_TILES({tiles})\n")), "no instances for {tiles} tiles");
            for (silu, dtype, tag) in [(false, KernelDType::BF16, "bf16"), (true, KernelDType::F16, "silu_f16")] {
                assert_eq!(q4_gemv_mma_name(silu, dtype, tiles), Some(format!("q4_gemv_mma_{tag}_t{tiles}").as_str()));
            }
        }
        assert_eq!((q4_gemv_mma_tiles(1), q4_gemv_mma_tiles(9), q4_gemv_mma_tiles(32), q4_gemv_mma_tiles(33)), (1, 2, 4, 8));
        assert_eq!(q4_gemv_mma_name(false, KernelDType::BF16, 0), None);
        assert_eq!(q4_gemv_mma_name(false, KernelDType::BF16, 5), None);
        assert_eq!(q4_gemv_mma_name(true, KernelDType::F32, 1), None);
    }

    /// Every name the dense GEMV's host code may ask for is an instance of dense_gemv.cu.
    #[test]
    fn dense_gemv_names_have_instances() {
        let src = include_str!("../kernels/dense_gemv.cu");
        for dtype in [KernelDType::BF16, KernelDType::F16] {
            for silu in [false, true] {
                for tiles in [1, 2] {
                    let name = dense_gemv_mma_name(silu, dtype, tiles).expect("an instance");
                    assert!(src.contains(&format!("DENSE_GEMV_MMA({name}, ")), "{name}");
                }
                for &tile in &DENSE_GEMV_TILES {
                    let name = dense_gemv_name(silu, dtype, tile).expect("an instance");
                    assert!(src.contains(&format!("DENSE_GEMV({name}, ")), "{name}");
                }
            }
        }
        assert_eq!(dense_gemv_mma_name(false, KernelDType::BF16, 3), None);
        assert_eq!(dense_gemv_mma_name(true, KernelDType::F32, 1), None);
    }

    #[test]
    fn head_dims_map_to_instances() {
        assert_eq!(paged_attention_name(KernelDType::BF16, 64, false), Some("paged_attention_bf16_d64"));
        assert_eq!(paged_attention_name(KernelDType::BF16, 128, false), Some("paged_attention_bf16_d128"));
        assert_eq!(paged_attention_name(KernelDType::F32, 32, false), Some("paged_attention_f32_d64"));
        assert_eq!(paged_attention_name(KernelDType::F16, 96, false), Some("paged_attention_f16_d128"));
        assert_eq!(paged_attention_name(KernelDType::F16, 80, false), Some("paged_attention_f16_d128"));
        assert_eq!(paged_attention_name(KernelDType::BF16, 112, false), Some("paged_attention_bf16_d128"));
        assert_eq!(paged_attention_name(KernelDType::F16, 256, false), Some("paged_attention_f16_d256"));
        assert_eq!(paged_attention_name(KernelDType::F32, 257, false), None);
        assert_eq!(paged_attention_name(KernelDType::F32, 0, false), None);
        assert_eq!(paged_attention_name(KernelDType::BF16, 128, true), Some("paged_attention_fp8_bf16_d128"));
        assert_eq!(paged_attention_name(KernelDType::F16, 80, true), Some("paged_attention_fp8_f16_d128"));
        assert_eq!(paged_attention_name(KernelDType::F32, 257, true), None);
        for d in [64, 96, 128, 256] {
            for cap in [false, true] {
                let suffix = if cap { "_cap" } else { "" };
                for (fp8, cache) in [(false, ""), (true, "fp8_")] {
                    let bf16 = format!("prefill_attention_{cache}bf16_d{d}{suffix}");
                    let f16 = format!("prefill_attention_{cache}f16_d{d}{suffix}");
                    assert_eq!(prefill_attention_name(KernelDType::BF16, d, cap, fp8), Some(bf16.as_str()));
                    assert_eq!(prefill_attention_name(KernelDType::F16, d, cap, fp8), Some(f16.as_str()));
                    assert!(prefill_attention_name(KernelDType::F32, d, cap, fp8).is_none());
                }
            }
        }
        assert_eq!(prefill_attention_name(KernelDType::BF16, 80, false, false), None);
        assert_eq!(decode_attention_tc_name(KernelDType::BF16, 128, false), Some("decode_attention_tc_bf16_d128"));
        assert_eq!(decode_attention_tc_name(KernelDType::F16, 64, true), Some("decode_attention_tc_fp8_f16_d64"));
        for d in [32, 80, 96, 256] {
            assert_eq!(decode_attention_tc_name(KernelDType::BF16, d, false), None, "head_dim {d}");
        }
        assert_eq!(decode_attention_tc_name(KernelDType::F32, 128, false), None);
        // Two stages of 64 x (128 + 8) K and V values and 64 slots; FP8 one stage; 3 blocks fit an SM's 228 KiB.
        assert_eq!(decode_tc_smem_bytes(128, false), 70_144);
        assert_eq!(decode_tc_smem_bytes(64, true), 18_688);
        assert!(3 * (decode_tc_smem_bytes(128, false) + 1024) <= 228 * 1024);
        assert_eq!(prefill_attention_name(KernelDType::F16, 80, false, true), None);
    }

    #[test]
    fn layer_arguments() {
        assert_eq!(attn_window_arg(None), u32::MAX);
        assert_eq!(attn_window_arg(Some(4096)), 4096);
        assert_eq!(attn_window_arg(Some(usize::MAX)), u32::MAX);
        assert_eq!(attn_softcap_arg(None), 0.0);
        assert_eq!(attn_softcap_arg(Some(50.0)), 50.0);
    }
}

// ------------------------------------------------------------------------------------------------
// Sampling (kernels/sampling.cu): one block per logits row; the launch contract of
// `mlc_core::sampler::gpu`.

/// PTX of `kernels/sampling.cu`.
#[cfg(feature = "cuda")]
pub use ptx::SAMPLING as SAMPLING_PTX;
pub const SAMPLING_MODULE: &str = "mlc_sampling";
/// `sample_rows_f32(logits, work, params, out, batch, vocab)`.
pub const SAMPLING_FUNC: &str = "sample_rows_f32";
/// `argmax_rows_f32(logits, out, batch, vocab)`: the greedy token of each row.
pub const ARGMAX_FUNC: &str = "argmax_rows_f32";
/// Threads per block, one block per row (`SAMPLE_THREADS` in sampling.cu), for both kernels.
pub const SAMPLING_THREADS: u32 = 1024;
/// Most top logprobs a row can return (`SAMPLE_MAX_TOP`).
pub const SAMPLING_MAX_TOP: usize = 20;
/// 32-bit words per row of parameters (`RowParams`), per penalty/bias entry (`Entry`) and per output row
/// (`SAMPLE_OUT_WORDS`: token, logprob bits, number of top entries, 0, then the (id, logprob bits) pairs).
pub const SAMPLING_ROW_WORDS: usize = 16;
pub const SAMPLING_ENTRY_WORDS: usize = 4;
pub const SAMPLING_OUT_WORDS: usize = 4 + 2 * SAMPLING_MAX_TOP;

// The matmul kernels' constants and names (q4_gemm.cu, dense_gemv.cu, q4_gemm_tc.cu).
mod matmul;
pub use matmul::*;

// ------------------------------------------------------------------------------------------------
// The fused mixture of experts (kernels/moe.cu: routing, alignment, combine; kernels/moe_gemm.cu: the
// grouped GEMM); the launches live in mlc_core::model::layers::moe_cuda.

/// PTX of `kernels/moe.cu`.
#[cfg(feature = "cuda")]
pub use ptx::MOE as MOE_PTX;
/// PTX of `kernels/moe_gemm.cu`.
#[cfg(feature = "cuda")]
pub use ptx::MOE_GEMM as MOE_GEMM_PTX;
pub const MOE_MODULE: &str = "mlc_moe";
pub const MOE_GEMM_MODULE: &str = "mlc_moe_gemm";
/// `moe_route_f32(logits, ids, weights, tokens, experts, k, mode, norm)`, one warp per token.
pub const MOE_ROUTE_FUNC: &str = "moe_route_f32";
/// `moe_align_u32(ids, slots, experts, sorted, tile_expert, max_tiles)`, one block per expert.
pub const MOE_ALIGN_FUNC: &str = "moe_align_u32";
/// Slots per token tile of the grouped GEMM (`MOE_TILE` / `MG_TOKENS`).
pub const MOE_TILE: usize = 32;
/// Most experts and most experts per token the routing takes (`MOE_MAX_EXPERTS`, `MOE_MAX_TOPK`).
pub const MOE_MAX_EXPERTS: usize = 256;
pub const MOE_MAX_TOPK: usize = 16;
/// Tokens (warps) per block of the routing; threads per block of the alignment and of the combine.
pub const MOE_ROUTE_WARPS: u32 = 4;
pub const MOE_ALIGN_THREADS: u32 = 128;
pub const MOE_COMBINE_THREADS: u32 = 256;
/// The routing kernel's `mode` (`MOE_SOFTMAX_TOPK`, `MOE_TOPK_SOFTMAX`).
pub const MOE_ROUTE_SOFTMAX_TOPK: u32 = 0;
pub const MOE_ROUTE_TOPK_SOFTMAX: u32 = 1;
/// Weight rows per block of the grouped GEMM (`MG_ROWS`: 32 outputs in the gated modes), threads per
/// block, K multiple of the dense, Q4_0 and MXFP4 instances, dynamic shared memory of each.
pub const MOE_GEMM_ROWS: usize = 64;
pub const MOE_GEMM_THREADS: u32 = 128;
pub const MOE_GEMM_DENSE_K_MULTIPLE: usize = 64;
pub const MOE_GEMM_Q4_K_MULTIPLE: usize = 256;
pub const MOE_GEMM_MXFP4_K_MULTIPLE: usize = 32;
pub const MOE_GEMM_DENSE_SMEM_BYTES: u32 = 4 * (96 * 144) + 128;
pub const MOE_GEMM_Q4_SMEM_BYTES: u32 = 2 * (64 * 144 + 32 * 528) + 128;
pub const MOE_GEMM_MXFP4_SMEM_BYTES: u32 = 3 * (64 * 176 + 32 * 528) + 128;
/// Bytes the MXFP4 kernel may read past the stacked weight's last row (`MG_MX_TAIL_BYTES`: it copies
/// 16-byte windows around 17-byte blocks); the stacked weight carries that much padding.
pub const MOE_GEMM_MXFP4_TAIL_BYTES: usize = 16;

/// The format of the grouped GEMM's stacked expert weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeWeights {
    /// `[E, rows, K]` in the activations' dtype.
    Dense,
    /// GGML Q4_0 rows (18 bytes per 32 weights).
    Q4_0,
    /// GGML MXFP4 rows (17 bytes per 32 weights), bf16 activations only.
    Mxfp4,
}

impl MoeWeights {
    /// Bytes (dense: elements) of `rows` rows of `k` weights.
    pub fn size(self, rows: usize, k: usize) -> usize {
        match self {
            MoeWeights::Dense => rows * k,
            MoeWeights::Q4_0 => rows * k / 32 * 18,
            MoeWeights::Mxfp4 => rows * k / 32 * 17,
        }
    }
    /// What K must be a multiple of.
    pub fn k_multiple(self) -> usize {
        match self {
            MoeWeights::Dense => MOE_GEMM_DENSE_K_MULTIPLE,
            MoeWeights::Q4_0 => MOE_GEMM_Q4_K_MULTIPLE,
            MoeWeights::Mxfp4 => MOE_GEMM_MXFP4_K_MULTIPLE,
        }
    }
    /// The kernel's dynamic shared memory.
    pub fn smem_bytes(self) -> u32 {
        match self {
            MoeWeights::Dense => MOE_GEMM_DENSE_SMEM_BYTES,
            MoeWeights::Q4_0 => MOE_GEMM_Q4_SMEM_BYTES,
            MoeWeights::Mxfp4 => MOE_GEMM_MXFP4_SMEM_BYTES,
        }
    }
}

/// The grouped GEMM's epilogue (`MG_PLAIN`, `MG_SILU`, `MG_SWIGLU`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeGemmMode {
    /// `out = acc (+ bias)`: the down projection.
    Plain = 0,
    /// Gate rows then up rows: `silu(gate) * up`.
    Silu = 1,
    /// gpt-oss's clamped SwiGLU (with alpha and limit as launch arguments).
    ClampedSwiglu = 2,
}

/// Token tiles the grouped GEMM's grid holds for `slots` (tokens x top-k) over `experts`: each nonempty
/// expert's run is padded to whole tiles, so at most `(slots + min(slots, experts) * (tile - 1)) / tile`.
pub fn moe_max_tiles(slots: usize, experts: usize) -> usize {
    (slots + slots.min(experts) * (MOE_TILE - 1)) / MOE_TILE
}

/// `moe_gemm_[q4_|mxfp4_]<dtype>` (bf16 / f16; MXFP4: bf16 only, its scales leave f16's range).
pub fn moe_gemm_name(dtype: KernelDType, weights: MoeWeights) -> Option<&'static str> {
    Some(match (dtype, weights) {
        (KernelDType::BF16, MoeWeights::Dense) => "moe_gemm_bf16",
        (KernelDType::F16, MoeWeights::Dense) => "moe_gemm_f16",
        (KernelDType::BF16, MoeWeights::Q4_0) => "moe_gemm_q4_bf16",
        (KernelDType::F16, MoeWeights::Q4_0) => "moe_gemm_q4_f16",
        (KernelDType::BF16, MoeWeights::Mxfp4) => "moe_gemm_mxfp4_bf16",
        (KernelDType::F16, MoeWeights::Mxfp4) | (KernelDType::F32, _) => return None,
    })
}

/// The fused MoE's per-slot decode GEMV (dense_gemv.cu's `moe_dense_gemv[_silu]_<dtype>`, q4_gemm.cu's
/// `moe_q4_gemv[_silu]_<dtype>`; modules DENSE_GEMV / Q4_GEMM) and its block: (output rows per block,
/// threads, dynamic shared memory). `None` for f32, MXFP4 weights or gpt-oss's clamped SwiGLU.
pub fn moe_gemv_kernel(dtype: KernelDType, weights: MoeWeights, mode: MoeGemmMode) -> Option<(&'static str, (usize, u32, u32))> {
    use KernelDType::*;
    let silu = match mode {
        MoeGemmMode::Plain => false,
        MoeGemmMode::Silu => true,
        MoeGemmMode::ClampedSwiglu => return None,
    };
    let name = match (weights, dtype, silu) {
        (MoeWeights::Dense, BF16, false) => "moe_dense_gemv_bf16",
        (MoeWeights::Dense, F16, false) => "moe_dense_gemv_f16",
        (MoeWeights::Dense, BF16, true) => "moe_dense_gemv_silu_bf16",
        (MoeWeights::Dense, F16, true) => "moe_dense_gemv_silu_f16",
        (MoeWeights::Q4_0, BF16, false) => "moe_q4_gemv_bf16",
        (MoeWeights::Q4_0, F16, false) => "moe_q4_gemv_f16",
        (MoeWeights::Q4_0, BF16, true) => "moe_q4_gemv_silu_bf16",
        (MoeWeights::Q4_0, F16, true) => "moe_q4_gemv_silu_f16",
        _ => return None,
    };
    Some(match weights {
        MoeWeights::Dense => (name, (DENSE_GEMV_ROWS, DENSE_GEMV_THREADS, 0)),
        // The silu kernel spends its 16 MMA rows on 8 gate and 8 up rows.
        _ => (name, (if silu { Q4_MMA_ROWS / 2 } else { Q4_MMA_ROWS }, Q4_MMA_THREADS, Q4_MMA_SMEM_BYTES)),
    })
}

/// `moe_combine_<dtype>`.
pub fn moe_combine_name(dtype: KernelDType) -> &'static str {
    match dtype {
        KernelDType::F32 => "moe_combine_f32",
        KernelDType::BF16 => "moe_combine_bf16",
        KernelDType::F16 => "moe_combine_f16",
    }
}

#[cfg(test)]
mod moe_tests {
    use super::*;

    #[test]
    fn the_grid_holds_the_worst_routing() {
        // One slot: one tile. Every slot on one expert: ceil(slots / tile). Spread over all experts: one
        // partial tile each.
        assert_eq!(moe_max_tiles(1, 128), 1);
        assert_eq!(moe_max_tiles(8, 128), 8);
        assert_eq!(moe_max_tiles(64, 4), (64 + 4 * 31) / 32);
        for (slots, experts) in [(1usize, 4usize), (40, 4), (9 * 8, 128), (2048, 128), (16384, 128), (100, 8)] {
            // Worst cases: all on one expert, or as many experts as possible with 1 slot and the rest on one.
            let spread = slots.min(experts);
            let worst = (spread - 1) + (slots - (spread - 1)).div_ceil(MOE_TILE);
            assert!(moe_max_tiles(slots, experts) >= worst, "{slots} {experts}");
            assert!(moe_max_tiles(slots, experts) >= slots.div_ceil(MOE_TILE));
        }
        assert_eq!(moe_gemm_name(KernelDType::BF16, MoeWeights::Q4_0), Some("moe_gemm_q4_bf16"));
        assert_eq!(moe_gemm_name(KernelDType::BF16, MoeWeights::Mxfp4), Some("moe_gemm_mxfp4_bf16"));
        assert_eq!(moe_gemm_name(KernelDType::F16, MoeWeights::Mxfp4), None);
        assert_eq!(moe_gemm_name(KernelDType::F32, MoeWeights::Dense), None);
    }

    /// The MXFP4 instance's constants here are the kernel's (moe_gemm.cu's #defines).
    #[test]
    fn mxfp4_constants_match_the_kernel() {
        let src = include_str!("../kernels/moe_gemm.cu");
        let def = |name: &str| -> usize {
            let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name} not defined"));
            line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
        };
        let stage = MOE_GEMM_ROWS * def("MG_MX_W_ROW_BYTES") + MOE_TILE * def("MG_MX_X_ROW_BYTES");
        assert_eq!(MOE_GEMM_MXFP4_SMEM_BYTES as usize, def("MG_MX_STAGES") * stage + MOE_TILE * 4);
        assert_eq!(MOE_GEMM_MXFP4_TAIL_BYTES, def("MG_MX_TAIL_BYTES"));
        assert_eq!(MoeWeights::Mxfp4.size(4, 2880), 4 * 90 * 17);
    }
}
