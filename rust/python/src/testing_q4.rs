//! Test-only entry point (underscore name, not part of the API): the GPU tests compare the CUDA Q4_0
//! matmul with its CPU reference through it, with inputs generated on the Rust side (see
//! `mlc_core::model::q4_check`).

use crate::errors;
use mlc_core::model::q4_check::{self, Q4Case};
use mlc_core::EngineError;
use pyo3::prelude::*;

/// Runs one random case (`case_json`: see `mlc_core::model::q4_check::Q4Case`) on `device` and returns
/// the JSON report of its differences from the CPU reference.
#[pyfunction]
fn _q4_check(py: Python<'_>, device: String, case_json: String) -> PyResult<String> {
    let case: Q4Case = serde_json::from_str(&case_json)
        .map_err(|e| errors::to_py(EngineError::bad_request("case_json", e.to_string())))?;
    py.detach(|| {
        let device = mlc_core::device::parse_device(&device)?;
        let report = q4_check::compare_on_device(&device, &case)?;
        Ok::<_, EngineError>(serde_json::to_string(&report).expect("a report serializes"))
    })
    .map_err(errors::to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_q4_check, m)?)
}
