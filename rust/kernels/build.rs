//! With feature `cuda`: compiles every `kernels/*.cu` to PTX (cudaforge drives nvcc) and writes
//! `OUT_DIR/ptx.rs` with one `pub const NAME: &str` per file. Without it: nothing, so CPU builds need
//! no CUDA toolkit.

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
    // The compute capability comes from CUDA_COMPUTE_CAP (mandatory on machines without a GPU).
    let ptx = cudaforge::KernelBuilder::new()
        .source_glob("kernels/*.cu")
        .watch(["kernels/common.cuh", "kernels/mma.cuh", "kernels/q4_dequant.cuh", "kernels/mxfp4_dequant.cuh"])
        .arg("-std=c++17")
        .arg("-O3")
        .arg("--expt-relaxed-constexpr")
        .build_ptx()
        .unwrap_or_else(|e| panic!("nvcc failed on kernels/*.cu: {e}"));
    ptx.write(out.join("ptx.rs")).unwrap_or_else(|e| panic!("cannot write ptx.rs: {e}"));
}
