//! With feature `cuda`: compiles every `kernels/*.cu` to PTX (cudaforge drives nvcc) and writes
//! `OUT_DIR/ptx.rs` with one `pub const NAME: &str` per file; then assembles each PTX to SASS for the
//! PTX's own target (`ptxas -arch=sm_90a` for CUDA_COMPUTE_CAP=90) and writes `OUT_DIR/sass.rs` with one
//! `pub const NAME: &[u8]` cubin per file and `SASS_ARCH`. A device of that compute capability loads the
//! cubin without the driver's JIT; any other falls back to the PTX (see `KernelModule`). Without the
//! feature: nothing, so CPU builds need no CUDA toolkit.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    build_ptx();
}

#[cfg(feature = "cuda")]
fn build_ptx() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Every header: a .cu is rebuilt when any of them changes (a list by hand once missed tc_ops.cuh and
    // decode_tc.cuh, and a wheel shipped the old decode kernel).
    let mut headers: Vec<String> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .filter_map(|e| Some(e.ok()?.path().to_str()?.to_string()))
        .filter(|p| p.ends_with(".cuh"))
        .collect();
    headers.sort();
    // The compute capability comes from CUDA_COMPUTE_CAP (mandatory on machines without a GPU).
    let ptx = cudaforge::KernelBuilder::new()
        .source_glob("kernels/*.cu")
        .watch(headers)
        .arg("-std=c++17")
        .arg("-O3")
        .arg("--expt-relaxed-constexpr")
        .build_ptx()
        .unwrap_or_else(|e| panic!("nvcc failed on kernels/*.cu: {e}"));
    ptx.write(out.join("ptx.rs")).unwrap_or_else(|e| panic!("cannot write ptx.rs: {e}"));
    build_sass(&out);
}

/// `ptxas` on every `OUT_DIR/*.ptx` of `kernels/*.cu` (only where the PTX is newer than its cubin), two
/// at a time, and `OUT_DIR/sass.rs`. The same PTX the driver would JIT, assembled by the toolkit's
/// ptxas at the same default optimisation level (-O3).
#[cfg(feature = "cuda")]
fn build_sass(out: &std::path::Path) {
    use std::fmt::Write as _;
    let mut stems: Vec<String> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .filter_map(|e| e.ok()?.path().file_name()?.to_str()?.strip_suffix(".cu").map(String::from))
        .collect();
    stems.sort();
    let toolkit = cudaforge::CudaToolkit::detect().unwrap_or_else(|e| panic!("no CUDA toolkit for ptxas: {e}"));
    let ptxas = toolkit.nvcc_path.with_file_name(if cfg!(windows) { "ptxas.exe" } else { "ptxas" });
    // Every PTX is built for the same target (CUDA_COMPUTE_CAP): the first one's `.target` names it.
    let target = |stem: &str| -> String {
        let src = std::fs::read_to_string(out.join(format!("{stem}.ptx"))).unwrap_or_else(|e| panic!("{stem}.ptx: {e}"));
        let line = src.lines().find_map(|l| l.trim().strip_prefix(".target ")).unwrap_or_else(|| panic!("{stem}.ptx has no .target"));
        line.split([',', ' ']).next().unwrap_or_default().to_string()
    };
    let arch = target(&stems[0]);
    for stem in &stems {
        let t = target(stem);
        assert_eq!(t, arch, "{stem}.ptx targets {t}, {}.ptx {arch}", stems[0]);
    }
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale: Vec<&String> = stems
        .iter()
        .filter(|s| {
            let (ptx, cubin) = (out.join(format!("{s}.ptx")), out.join(format!("{s}.cubin")));
            matches!((modified(&ptx), modified(&cubin)), (Some(p), Some(c)) if c < p) || modified(&cubin).is_none()
        })
        .collect();
    let threads = std::env::var("CUDAFORGE_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(2).max(1);
    for chunk in stale.chunks(threads) {
        std::thread::scope(|scope| {
            for stem in chunk {
                let (ptxas, arch) = (&ptxas, &arch);
                scope.spawn(move || {
                    let ptx = out.join(format!("{stem}.ptx"));
                    let cubin = out.join(format!("{stem}.cubin"));
                    let res = std::process::Command::new(ptxas)
                        .arg(format!("-arch={arch}"))
                        .arg("-O3")
                        .arg("-o")
                        .arg(&cubin)
                        .arg(&ptx)
                        .output()
                        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
                    if !res.status.success() {
                        let _ = std::fs::remove_file(&cubin);
                        panic!("ptxas failed on {stem}.ptx:\n{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
                    }
                });
            }
        });
    }
    let mut rs = format!("pub const SASS_ARCH: &str = {arch:?};\n");
    for stem in &stems {
        let name = stem.to_uppercase().replace(['.', '-'], "_");
        let _ = writeln!(rs, r#"pub const {name}: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/{stem}.cubin"));"#);
    }
    std::fs::write(out.join("sass.rs"), rs).unwrap_or_else(|e| panic!("cannot write sass.rs: {e}"));
}
