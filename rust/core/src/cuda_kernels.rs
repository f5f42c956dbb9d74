//! Our kernel modules on a CUDA device ([`mlc_kernels::modules`]): the cubin built ahead of time where
//! its SASS runs on the device, the PTX through the driver's JIT otherwise (or when the cubin fails to
//! load); each module loaded once per device ([`func`]). And [`preload`]: every module of ours and the
//! candle modules a forward uses, loaded on background threads while the engine reads its weights, so
//! that no request pays for a module load (a JIT of candle's PTX takes seconds on a fresh machine).

use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{kernels as candle_kernels, CudaDevice, DeviceId, WrapErr};
use mlc_kernels::{module_code, KernelModule, ModuleCode, SASS_ARCH};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Instant;

/// A kernel of one of our modules, launched on the device's stream (what candle's `CudaFunc` is for
/// its own modules): `builder()` starts a launch, the function's attributes are reached through `Deref`.
pub struct KernelFunc {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl KernelFunc {
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

impl std::ops::Deref for KernelFunc {
    type Target = CudaFunction;
    fn deref(&self) -> &CudaFunction {
        &self.func
    }
}

type Loaded = RwLock<HashMap<(DeviceId, &'static str), Arc<CudaModule>>>;

/// The modules loaded so far, per device and module name.
static LOADED: LazyLock<Loaded> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// The kernel `name` of `module` on `dev`, its module loaded on first use.
pub fn func(dev: &CudaDevice, name: &str, module: &KernelModule) -> candle_core::Result<KernelFunc> {
    let m = module_on(dev, module)?;
    let func = m
        .load_function(name)
        .map_err(|e| candle_core::Error::Msg(format!("kernel {name} of module {}: {e}", module.name)))?;
    Ok(KernelFunc { func, stream: dev.cuda_stream() })
}

/// The dynamic shared memory a kernel may use without asking (cuFuncSetAttribute).
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// The functions allowed more than [`DEFAULT_DYNAMIC_SMEM`] so far, with the bytes they were allowed.
type SmemAllowed = RwLock<HashMap<(DeviceId, &'static str, String), u32>>;
static SMEM_ALLOWED: LazyLock<SmemAllowed> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// [`func`] for a launch with `smem` bytes of dynamic shared memory. Above 48 KiB a function must be
/// allowed them first; that is a driver call, made once per device, function and size rather than on
/// every launch (the modules, and so their functions, stay loaded for the process's life).
pub fn func_smem(dev: &CudaDevice, name: &str, module: &KernelModule, smem: u32) -> candle_core::Result<KernelFunc> {
    let f = func(dev, name, module)?;
    if smem > DEFAULT_DYNAMIC_SMEM {
        let key = (dev.id(), module.name, name.to_owned());
        let allowed = SMEM_ALLOWED.read().unwrap_or_else(|e| e.into_inner()).get(&key).copied().unwrap_or(0);
        if allowed < smem {
            let attr = candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attr, smem as i32).w()?;
            SMEM_ALLOWED.write().unwrap_or_else(|e| e.into_inner()).insert(key, smem);
        }
    }
    Ok(f)
}

/// `module` on `dev`, loaded once (two threads missing at once may both load it; the first one kept
/// wins, the other is dropped).
pub fn module_on(dev: &CudaDevice, module: &KernelModule) -> candle_core::Result<Arc<CudaModule>> {
    let key = (dev.id(), module.name);
    if let Some(m) = LOADED.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(m.clone());
    }
    let (m, _) = load(dev, module)?;
    Ok(LOADED.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(m).clone())
}

/// `MLC_KERNEL_IMAGES=0` loads every module from its PTX (the driver's JIT), as before the cubins.
fn images_enabled() -> bool {
    !crate::switches::off("MLC_KERNEL_IMAGES")
}

/// Loads `module` (uncached) and says from what.
fn load(dev: &CudaDevice, module: &KernelModule) -> candle_core::Result<(Arc<CudaModule>, ModuleCode)> {
    let ctx = dev.cuda_stream().context().clone();
    let (major, minor) = ctx.compute_capability().w()?;
    let (major, minor) = (major.max(0) as u32, minor.max(0) as u32);
    if module_code(module, SASS_ARCH, major, minor, images_enabled()) == ModuleCode::Sass {
        match load_image(&ctx, module.name, module.sass) {
            Ok(m) => return Ok((m, ModuleCode::Sass)),
            Err(e) => log::warn!("kernel module {}: its {SASS_ARCH} cubin did not load ({e}); compiling its PTX instead", module.name),
        }
    }
    Ok((ctx.load_module(Ptx::from_src(module.ptx)).w()?, ModuleCode::Ptx))
}

/// Loads a cubin. cudarc takes binary images only from a file (`cuModuleLoad`), so the bytes go to an
/// anonymous memory file (Linux) or else a temporary file, removed once loaded.
fn load_image(ctx: &Arc<CudaContext>, name: &str, image: &[u8]) -> std::result::Result<Arc<CudaModule>, String> {
    use std::io::Write;
    #[cfg(target_os = "linux")]
    let memfd_error = match memfd(name) {
        Some(mut file) => {
            use std::os::fd::AsRawFd;
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            match file.write_all(image).map_err(|e| e.to_string()).and_then(|()| ctx.load_module(Ptx::from_file(path)).map_err(|e| e.to_string())) {
                Ok(m) => return Ok(m),
                Err(e) => format!("from a memory file: {e}; "),
            }
        }
        None => String::new(),
    };
    #[cfg(not(target_os = "linux"))]
    let memfd_error = String::new();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let path = std::env::temp_dir().join(format!("mlc_llm_{}_{name}_{nanos}.cubin", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| format!("{memfd_error}{}: {e}", path.display()))?;
    let written = file.write_all(image).map_err(|e| format!("{}: {e}", path.display()));
    drop(file);
    let loaded = written.and_then(|()| ctx.load_module(Ptx::from_file(&path)).map_err(|e| e.to_string()));
    let _ = std::fs::remove_file(&path);
    loaded.map_err(|e| format!("{memfd_error}from {}: {e}", path.display()))
}

#[cfg(target_os = "linux")]
fn memfd(name: &str) -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(format!("mlc_{name}")).ok()?;
    // The raw system call: no glibc symbol-version requirement (memfd_create came in glibc 2.27).
    // SAFETY: a NUL-terminated name and valid flags; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_create, cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Some(unsafe { std::fs::File::from_raw_fd(fd as i32) })
}

/// candle's modules (with one function each) that a forward of ours may use. A static, so their PTX is
/// embedded once more, not at every use. Not `CONV` (never runs here) nor `QUANTIZED` (5.7 MB of PTX,
/// for GGUF types our 4-bit kernels do not take).
static CANDLE_MODULES: [(&str, &candle_kernels::Module, &str); 9] = [
    ("binary", &candle_kernels::BINARY, "badd_f32"),
    ("unary", &candle_kernels::UNARY, "ucopy_bf16"),
    ("indexing", &candle_kernels::INDEXING, "is_u32_bf16"),
    ("reduce", &candle_kernels::REDUCE, "fast_sum_f32"),
    ("cast", &candle_kernels::CAST, "cast_bf16_f32"),
    ("ternary", &candle_kernels::TERNARY, "where_u8_f32"),
    ("affine", &candle_kernels::AFFINE, "affine_f32"),
    ("fill", &candle_kernels::FILL, "fill_f32"),
    ("sort", &candle_kernels::SORT, "asort_asc_f32"),
];

/// What [`preload`] did: per module, where from (`sass`, `ptx`, `candle`) and seconds, and its wall time.
#[derive(Debug, Clone, Default)]
pub struct PreloadReport {
    pub modules: Vec<(String, &'static str, f64)>,
    pub errors: Vec<String>,
    pub wall_s: f64,
}

/// Module loads running on a background thread; [`Preload::wait`] joins them.
pub struct Preload {
    thread: std::thread::JoinHandle<PreloadReport>,
}

impl Preload {
    pub fn wait(self) -> PreloadReport {
        self.thread.join().unwrap_or_else(|_| PreloadReport { errors: vec!["the preload thread panicked".into()], ..Default::default() })
    }
}

/// Starts loading, on `dev`, every module of ours and candle's modules that a forward may use, one
/// thread each. candle loads its modules under one lock, so each of its PTX is first compiled on its
/// own thread outside candle (the driver keeps the result in its JIT cache, `~/.nv/ComputeCache` or
/// `CUDA_CACHE_PATH`), and candle's own load then finds it there; with `CUDA_CACHE_DISABLE=1` that
/// would compile twice, so candle's modules are then loaded only by candle, one after the other.
pub fn preload(dev: &CudaDevice) -> Preload {
    let dev = dev.clone();
    let thread = std::thread::Builder::new()
        .name("mlc-kernel-preload".into())
        .spawn(move || {
            let t0 = Instant::now();
            let jit_cache = std::env::var_os("CUDA_CACHE_DISABLE").is_none_or(|v| v != "1");
            let ctx = dev.cuda_stream().context().clone();
            let results: Vec<std::result::Result<(String, &'static str, f64), String>> = std::thread::scope(|scope| {
                let mut jobs = Vec::new();
                for module in mlc_kernels::modules::ALL {
                    let dev = &dev;
                    jobs.push(scope.spawn(move || {
                        let t = Instant::now();
                        let key = (dev.id(), module.name);
                        let (m, code) = load(dev, module).map_err(|e| format!("{}: {e}", module.name))?;
                        LOADED.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(m);
                        let code = if code == ModuleCode::Sass { "sass" } else { "ptx" };
                        Ok((module.name.to_string(), code, t.elapsed().as_secs_f64()))
                    }));
                }
                for &(name, module, func) in &CANDLE_MODULES {
                    let (dev, ctx) = (&dev, &ctx);
                    jobs.push(scope.spawn(move || {
                        let t = Instant::now();
                        if jit_cache {
                            ctx.load_module(Ptx::from_src(module.ptx())).map_err(|e| format!("candle {name}: {e}"))?;
                        }
                        dev.get_or_load_func(func, module).map_err(|e| format!("candle {name}: {e}"))?;
                        Ok((format!("candle_{name}"), "candle", t.elapsed().as_secs_f64()))
                    }));
                }
                jobs.into_iter().map(|j| j.join().unwrap_or_else(|_| Err("a module load panicked".into()))).collect()
            });
            let mut report = PreloadReport::default();
            for r in results {
                match r {
                    Ok(m) => report.modules.push(m),
                    Err(e) => report.errors.push(e),
                }
            }
            report.wall_s = t0.elapsed().as_secs_f64();
            report
        })
        .expect("spawning a thread");
    Preload { thread }
}

/// `MLC_PRELOAD_KERNELS=0`: no module preload and no warm-up step while the engine starts (modules then
/// load at the first request that uses them).
pub fn preload_enabled() -> bool {
    !crate::switches::off("MLC_PRELOAD_KERNELS")
}
