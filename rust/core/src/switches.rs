//! The environment switches: every `MLC_*` variable the engine reads is read through this module, and
//! listed here. They are for measurements (A/B of two code paths in one build) and ways out; engine
//! arguments are the interface users configure. Each switch's function lives beside the code it steers
//! and says whether it is read once per process or at each use.
//!
//! | variable | effect | read by |
//! |---|---|---|
//! | `MLC_CPU_AHEAD_KB` | read-ahead of the next weight on CPU (KiB; 0 off) | `quant/cpu/ahead.rs` |
//! | `MLC_CPU_HUGE_PAGES=0` | repacked CPU weights in a `Vec`, not on 2 MiB pages | `quant/cpu/lines.rs` |
//! | `MLC_CPU_ISA` | lowers the CPU kernels' instruction set (scalar, avx2, ...) | `quant/cpu/dispatch.rs` |
//! | `MLC_CPU_KQUANT_ACT` | K-quant activation width, 8 or 15 bits | `quant/cpu/kpack.rs` |
//! | `MLC_CPU_PROFILE=1` | per-op timings of CPU steps | `profile.rs` |
//! | `MLC_CPU_THREADS` | the CPU pool's threads (default: physical cores) | `quant/cpu/pool.rs` |
//! | `MLC_QUANTIZED_MATMUL` | 1 / 0: quantized matmuls when the argument is not given | `engine/handle.rs` |
//! | `MLC_ATTN_SPLIT_MIN_KEYS` | keys before decode attention splits a sequence | `attention/plan.rs` |
//! | `MLC_TILED_PREFILL=0`, `MLC_DECODE_TC=0` | CUDA attention kernels' fallbacks | `attention/cuda.rs` |
//! | `MLC_CUDA_GRAPH=0` | no CUDA graphs | `cuda_graph.rs` |
//! | `MLC_CUDA_MXFP4=0` | MXFP4 experts read dense on CUDA | `loader/mod.rs` |
//! | `MLC_DENSE_GEMV_MAX_TOKENS`, `MLC_DENSE_GEMV_MMA_MAX_TOKENS` | the 16-bit GEMVs' batch limits | `model/dense_gemv.rs` |
//! | `MLC_GPU_SAMPLING=0` | sampling on the host | `engine/core.rs` |
//! | `MLC_KERNEL_IMAGES=0`, `MLC_PRELOAD_KERNELS=0` | kernels from PTX; no background load | `cuda_kernels.rs` |
//! | `MLC_MOE_FUSED=0` | MoE layers on the host-routed path | `model/layers/moe.rs` |
//! | `MLC_MOE_GEMV_MAX_SLOTS` | per-slot decode GEMVs of the fused MoE (0 off) | `model/layers/moe_cuda.rs` |
//! | `MLC_PDL=0` | no programmatic dependent launch | `cuda_pdl.rs` |
//! | `MLC_Q4_GEMV_MAX_TOKENS`, `MLC_Q4_GEMV_MAX_TILES`, `MLC_Q4_GEMM_MAX_TOKENS` | the 4-bit kernels' batch limits | `model/q4.rs` |

use std::ffi::OsStr;

/// The variable's value, if set (and valid Unicode).
pub fn value(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether the variable is set to "0": what turns off a switch that is on by default.
pub fn off(name: &str) -> bool {
    is_off(std::env::var_os(name).as_deref())
}

/// Whether the variable is set to something other than "" and "0": what turns on a switch that is off by
/// default.
pub fn on(name: &str) -> bool {
    is_on(std::env::var_os(name).as_deref())
}

/// The variable as a number, if set and one.
pub fn number(name: &str) -> Option<usize> {
    parse_number(value(name).as_deref())
}

fn is_off(v: Option<&OsStr>) -> bool {
    v.is_some_and(|v| v == "0")
}

fn is_on(v: Option<&OsStr>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0")
}

fn parse_number(v: Option<&str>) -> Option<usize> {
    v.and_then(|v| v.trim().parse::<usize>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The parsing on values, not on the process's environment: setting variables would race with the
    // other tests' reads.
    #[test]
    fn switches_parse_their_values() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert!(is_off(os("0")) && !is_on(os("0")));
        assert!(!is_off(os("1")) && is_on(os("1")) && is_on(os("yes")));
        assert!(!is_off(os("")) && !is_on(os("")));
        assert!(!is_off(None) && !is_on(None));
        assert_eq!(parse_number(Some(" 24 ")), Some(24));
        assert_eq!(parse_number(Some("0")), Some(0));
        assert_eq!(parse_number(Some("yes")), None);
        assert_eq!(parse_number(Some("-1")), None);
        assert_eq!(parse_number(None), None);
    }
}
