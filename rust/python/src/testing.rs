//! Test-only entry points (underscore names, not part of the API): the GPU kernel tests compare our
//! CUDA ops with the CPU reference through these, with inputs generated on the Rust side.

use crate::errors;
use mlc_core::attention::check::{self, AttentionCase};
use mlc_core::EngineError;
use pyo3::prelude::*;

fn bad_case(e: impl std::fmt::Display) -> PyErr {
    errors::to_py(EngineError::bad_request("case_json", e.to_string()))
}

/// Runs one random paged-attention step (`case_json`: see `mlc_core::attention::check::AttentionCase`)
/// on `device` and on the CPU; returns the JSON report of their differences.
#[pyfunction]
fn _attention_check(py: Python<'_>, device: String, case_json: String) -> PyResult<String> {
    let case: AttentionCase = serde_json::from_str(&case_json).map_err(bad_case)?;
    py.detach(|| {
        let device = mlc_core::device::parse_device(&device)?;
        let report = check::compare_with_cpu(&device, &case)?;
        Ok::<_, EngineError>(serde_json::to_string(&report).expect("a report serializes"))
    })
    .map_err(errors::to_py)
}

/// Malformed calls of the attention ops on `device`: JSON `[[case, error message or null], ...]`.
#[pyfunction]
fn _attention_error_cases(py: Python<'_>, device: String) -> PyResult<String> {
    py.detach(|| {
        let device = mlc_core::device::parse_device(&device)?;
        let cases = check::error_cases(&device)?;
        Ok::<_, EngineError>(serde_json::to_string(&cases).expect("strings serialize"))
    })
    .map_err(errors::to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_attention_check, m)?)?;
    m.add_function(wrap_pyfunction!(_attention_error_cases, m)?)?;
    Ok(())
}
