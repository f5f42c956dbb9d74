//! The native module `mlc_llm._core`: a thin binding over `mlc_core`. Every call converts to owned
//! Rust values, releases the GIL while it waits, and maps errors once (see `errors.rs`).

mod convert;
mod embedding;
mod engine;
mod errors;
mod testing;
mod testing_fused;
mod testing_logits;
mod testing_sampling;
mod testing_q4;

use pyo3::prelude::*;

/// Number of CUDA devices this build can see (0 on a CPU-only build).
#[pyfunction]
fn cuda_device_count(py: Python<'_>) -> usize {
    py.detach(mlc_core::device::cuda_device_count)
}

/// Runs a small matmul on the device and compares it with the CPU.
#[pyfunction]
fn device_smoke_test(py: Python<'_>, device: String) -> PyResult<String> {
    py.detach(|| mlc_core::error::catch_panics(|| mlc_core::device::device_smoke_test(&device))).map_err(errors::to_py)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Engine warnings (a failed draft step, an ignored chat template) reach stderr; RUST_LOG=info shows more.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).try_init();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<embedding::EmbeddingEngine>()?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(device_smoke_test, m)?)?;
    convert::register(m)?;
    testing::register(m)?;
    testing_fused::register(m)?;
    testing_logits::register(m)?;
    testing_sampling::register(m)?;
    testing_q4::register(m)?;
    Ok(())
}
