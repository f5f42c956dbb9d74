//! Test-only entry point (underscore name, not part of the API): the GPU tests compare the device sampler
//! with the CPU sampler through it, with logits and sampler state generated on the Rust side (see
//! `mlc_core::sampler::gpu_check`).

use crate::errors;
use mlc_core::sampler::gpu_check::{self, SamplingCase};
use mlc_core::EngineError;
use pyo3::prelude::*;

/// Runs one random sampling case (`case_json`: see `mlc_core::sampler::gpu_check::SamplingCase`) on
/// `device` and on the CPU with the random stream `seed`; returns the JSON report of their agreement.
#[pyfunction]
fn _sampling_check(py: Python<'_>, device: String, seed: u64, case_json: String) -> PyResult<String> {
    let case: SamplingCase = serde_json::from_str(&case_json)
        .map_err(|e| errors::to_py(EngineError::bad_request("case_json", e.to_string())))?;
    py.detach(|| {
        let device = mlc_core::device::parse_device(&device)?;
        let report = gpu_check::compare_with_cpu(&device, seed, &case)?;
        Ok::<_, EngineError>(serde_json::to_string(&report).expect("a report serializes"))
    })
    .map_err(errors::to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_sampling_check, m)?)
}
