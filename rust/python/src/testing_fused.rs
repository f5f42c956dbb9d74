//! Test-only entry point (underscore name, not part of the API): the GPU tests compare each fused op of
//! the decoder layer on a device with its CPU reference through it, with inputs generated on the Rust
//! side (see `mlc_core::model::fused_check`).

use crate::errors;
use mlc_core::model::fused_check::{self, FusedCase};
use mlc_core::EngineError;
use pyo3::prelude::*;

/// Runs one random case of a fused op (`case_json`: see `mlc_core::model::fused_check::FusedCase`) on
/// `device` and its reference on the CPU; returns the JSON report of their differences.
#[pyfunction]
fn _fused_check(py: Python<'_>, device: String, case_json: String) -> PyResult<String> {
    let case: FusedCase = serde_json::from_str(&case_json)
        .map_err(|e| errors::to_py(EngineError::bad_request("case_json", e.to_string())))?;
    py.detach(|| {
        let device = mlc_core::device::parse_device(&device)?;
        let report = fused_check::compare_with_cpu(&device, &case)?;
        Ok::<_, EngineError>(serde_json::to_string(&report).expect("a report serializes"))
    })
    .map_err(errors::to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_fused_check, m)?)
}
