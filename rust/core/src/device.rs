//! Device selection: "auto", "cpu", "cuda", "cuda:N".

use crate::error::{EngineError, Result};
use candle_core::Device;

/// Number of CUDA devices visible to this build (always 0 without the `cuda` feature).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        let mut n = 0;
        while Device::new_cuda(n).is_ok() {
            n += 1;
        }
        n
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// Parses a device string the way MLC does; "auto" picks `cuda:0` when a GPU is usable.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let bad = |msg: &str| EngineError::bad_request("device", format!("{msg} (got {spec:?})"));
    match spec.as_str() {
        "auto" => {
            if cuda_device_count() > 0 {
                Ok(Device::new_cuda(0)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s == "gpu" || s.starts_with("cuda:") => {
            let ordinal = match s.split_once(':') {
                Some((_, n)) => n.parse::<usize>().map_err(|_| bad("expected cuda:N with N a number"))?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(bad("this build of mlc_llm has no CUDA support; use device=\"cpu\""));
            }
            let count = cuda_device_count();
            if ordinal >= count {
                return Err(bad(&format!("no CUDA device {ordinal}: {count} device(s) visible")));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        _ => Err(bad("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
    }
}

/// Human-readable name used in logs and `info()`.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_string(),
        },
        _ => format!("{:?}", device.location()),
    }
}

/// Runs a small matmul on `device` and compares it with the CPU: proves the device path end to end.
pub fn device_smoke_test(spec: &str) -> Result<String> {
    let device = parse_device(spec)?;
    let a = candle_core::Tensor::arange(0f32, 64.0 * 48.0, &Device::Cpu)?.reshape((64, 48))?;
    let a = (a / 1000.0)?;
    let b = a.t()?.contiguous()?;
    let want = a.matmul(&b)?;
    let got = a.to_device(&device)?.matmul(&b.to_device(&device)?)?.to_device(&Device::Cpu)?;
    let err = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(format!("device={} matmul_max_abs_err={err:e}", device_name(&device)))
}

/// Total memory of a CUDA device in bytes (None on the CPU).
pub fn total_device_memory(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    {
        if let Device::Cuda(d) = device {
            use candle_core::cuda_backend::cudarc::driver::result;
            let _ctx = d.cuda_stream().context().bind_to_thread().ok()?;
            return result::mem_get_info().ok().map(|(_free, total)| total as u64);
        }
    }
    let _ = device;
    None
}
