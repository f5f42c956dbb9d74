//! Launches with programmatic dependent launch (PDL, Hopper and later): a kernel launched with the
//! programmatic-serialization attribute may be scheduled while the kernel before it on the stream is
//! still finishing. It runs its prologue (weight copies, index arithmetic) early and waits at
//! `pdl_wait()` (common.cuh: `griddepcontrol.wait`) for that kernel's completion and writes before it
//! reads anything the step computed. At batch 1 a decode step is a chain of ~300 short kernels, each
//! paying a launch and a first round trip to memory; this overlaps them with the kernel before.
//!
//! Only kernels whose every thread calls `pdl_wait()` before reading earlier results, and that write no
//! global memory before it, are launched this way (q4_gemm.cu's GEMVs, fused.cu's add + RMSNorm and
//! rope). Inside CUDA graph capture the attribute becomes a programmatic edge, so replays keep it.
//! `MLC_PDL=0` launches them plainly; below compute capability 9.0 the attribute is never set.

use crate::cuda_kernels::KernelFunc;
use candle_core::cuda_backend::cudarc::driver::{sys, CudaSlice, CudaStream, CudaView, DevicePtr, DriverError, LaunchConfig};
use candle_core::cuda_backend::CudaDevice;
use std::ffi::c_void;
use std::sync::OnceLock;

/// Whether launches set the programmatic-serialization attribute: compute capability 9.0 or later, and
/// not turned off by `MLC_PDL=0`. Decided once, by the first device asked about (a process whose GPUs
/// mix architectures would want this per device).
pub fn enabled(dev: &CudaDevice) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let major = dev.cuda_stream().context().compute_capability().map(|(major, _)| major).unwrap_or(0);
        major >= 9 && !crate::switches::off("MLC_PDL")
    })
}

/// One kernel argument as the driver reads it: its bytes (at most 8) at the start of a slot.
pub trait PdlArg {
    fn slot(&self, stream: &CudaStream) -> u64;
}

impl<T> PdlArg for &CudaSlice<T> {
    fn slot(&self, stream: &CudaStream) -> u64 {
        // Event tracking is off for the engine's device (decoder.rs), so the guard records nothing.
        self.device_ptr(stream).0
    }
}

impl<T> PdlArg for &mut CudaSlice<T> {
    fn slot(&self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}

impl<T> PdlArg for &CudaView<'_, T> {
    fn slot(&self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}

impl PdlArg for &u32 {
    fn slot(&self, _: &CudaStream) -> u64 {
        u64::from(**self)
    }
}

impl PdlArg for &u64 {
    fn slot(&self, _: &CudaStream) -> u64 {
        **self
    }
}

impl PdlArg for &f32 {
    fn slot(&self, _: &CudaStream) -> u64 {
        u64::from(self.to_bits())
    }
}

/// A launch being built: `arg` in the kernel's parameter order, then `launch`.
pub struct PdlArgs<'a> {
    func: &'a KernelFunc,
    stream: std::sync::Arc<CudaStream>,
    pdl: bool,
    slots: Vec<u64>,
}

impl<'a> PdlArgs<'a> {
    /// A launch of `func` on `dev`'s stream, with the attribute where [`enabled`].
    pub fn new(func: &'a KernelFunc, dev: &CudaDevice) -> Self {
        PdlArgs { func, stream: dev.cuda_stream(), pdl: enabled(dev), slots: Vec::with_capacity(16) }
    }

    pub fn arg(&mut self, a: impl PdlArg) -> &mut Self {
        let s = a.slot(&self.stream);
        self.slots.push(s);
        self
    }

    /// # Safety
    /// The arguments must match the kernel's parameters in order and type, and the memory they point to
    /// must stay allocated until the kernel has run (as for any launch).
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        // Every slot is 8 bytes, and the driver reads each parameter's own size from its address, which
        // for a little-endian 4-byte value is the slot's first 4 bytes.
        let mut params: Vec<*mut c_void> = self.slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        // SAFETY: a plain-data union of attribute values; zero is a valid bit pattern for every member.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if self.pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: the caller vouches for the arguments; `params` and `attr` outlive the call, which
        // copies them.
        unsafe { sys::cuLaunchKernelEx(&config, self.func.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) }.result()
    }
}

/// Launches a GEMV of the parameter list the 4-bit and 16-bit GEMVs share: `(y, w, x, m, n, k)` (output,
/// weights, activations, tokens, outputs, inputs).
///
/// # Safety
/// As [`PdlArgs::launch`]: `func` takes exactly these parameters and the buffers hold what `m, n, k` say.
pub unsafe fn launch_gemv(
    func: &KernelFunc,
    dev: &CudaDevice,
    (y, w, x): (impl PdlArg, impl PdlArg, impl PdlArg),
    [m, n, k]: [u32; 3],
    cfg: LaunchConfig,
) -> Result<(), DriverError> {
    let mut b = PdlArgs::new(func, dev);
    b.arg(y).arg(w).arg(x).arg(&m).arg(&n).arg(&k);
    // SAFETY: forwarded to the caller.
    unsafe { b.launch(cfg) }
}
