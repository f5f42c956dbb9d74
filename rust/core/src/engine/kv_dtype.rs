//! The KV cache's element type: what `kv_cache_dtype` asks for, checked against the device, the compute
//! dtype and the shard count before the model loads (a typo or an unsupported mix costs no load), and
//! what "auto" means.

use super::EngineArgs;
use crate::error::{EngineError, Result};

/// The KV cache's element type for `args.kv_cache_dtype` (see [`EngineArgs`]).
pub(super) fn kv_cache_dtype(args: &EngineArgs, dtype: candle_core::DType, device: &candle_core::Device) -> Result<candle_core::DType> {
    use candle_core::DType;
    // Each rank's cache is made by the sharded model in the compute dtype.
    let sharded = args.tensor_parallel_shards > 1;
    match args.kv_cache_dtype.as_deref() {
        None | Some("auto") if sharded => Ok(dtype),
        None | Some("auto") => Ok(default_kv_cache_dtype(device, dtype)),
        Some("fp8" | "fp8_e4m3") if !(device.is_cpu() || device.is_cuda()) => Err(EngineError::bad_request(
            "kv_cache_dtype",
            "an FP8 KV cache runs on the CPU and on CUDA devices only",
        )),
        Some("fp8" | "fp8_e4m3") if sharded => Err(EngineError::bad_request("kv_cache_dtype", "an FP8 KV cache with tensor_parallel_shards > 1 is not supported yet")),
        Some("fp8" | "fp8_e4m3") => Ok(DType::F8E4M3),
        Some(name @ ("f16" | "float16" | "f32" | "float32")) => {
            let want = if name.contains("16") { DType::F16 } else { DType::F32 };
            // The CPU attends f32 queries over an f16 or f32 cache; elsewhere the cache holds the compute dtype.
            let cpu_mix = device.is_cpu() && dtype == DType::F32 && !sharded;
            if want == dtype || cpu_mix {
                Ok(want)
            } else {
                Err(EngineError::bad_request(
                    "kv_cache_dtype",
                    format!("a {name} KV cache with {} compute{} is not supported (auto: the compute dtype)", dtype_name(dtype), if sharded { " and tensor_parallel_shards > 1" } else { "" }),
                ))
            }
        }
        Some(other) => Err(EngineError::bad_request("kv_cache_dtype", format!("{other:?} is not one of auto, float16 (f16), float32 (f32), fp8_e4m3 (fp8)"))),
    }
}

/// The KV cache's element type for `kv_cache_dtype` "auto": on the CPU (f32 compute) f16, which halves the
/// bytes attention reads per key at a cost the SmolLM2 fidelity test measures (tests/smollm2_gguf.rs,
/// README "CPU"); elsewhere the compute dtype.
pub fn default_kv_cache_dtype(device: &candle_core::Device, dtype: candle_core::DType) -> candle_core::DType {
    if device.is_cpu() && dtype == candle_core::DType::F32 {
        candle_core::DType::F16
    } else {
        dtype
    }
}

/// How the engine info names a dtype.
pub(super) fn dtype_name(dtype: candle_core::DType) -> &'static str {
    match dtype {
        candle_core::DType::F16 => "float16",
        candle_core::DType::BF16 => "bfloat16",
        candle_core::DType::F8E4M3 => "float8_e4m3",
        _ => "float32",
    }
}
