//! Weight conversion and MLC conversation templates for `mlc_llm convert_weight` / `gen_config`.

use crate::errors;
use mlc_core::tokenizer::ConvTemplate;
use mlc_core::EngineError;
use pyo3::prelude::*;
use std::path::Path;

/// Converts the HF checkpoint `source` into an MLC tensor cache in `output`; `progress(done, total, name)`
/// is called after each parameter (an exception it raises stops the conversion). Returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (source, quantization, output, progress=None))]
fn convert_weight(py: Python<'_>, source: String, quantization: String, output: String, progress: Option<Py<PyAny>>) -> PyResult<String> {
    let report = py
        .detach(|| {
            let mut report_progress = |done: usize, total: usize, name: &str| -> mlc_core::Result<()> {
                let Some(cb) = &progress else { return Ok(()) };
                Python::attach(|py| cb.call1(py, (done, total, name)).map(|_| ()))
                    .map_err(|e| EngineError::Unsupported(format!("conversion stopped: {e}")))
            };
            mlc_core::error::catch_panics(|| {
                mlc_core::convert::convert_weight(Path::new(&source), &quantization, Path::new(&output), &mut report_progress)
            })
        })
        .map_err(errors::to_py)?;
    serde_json::to_string(&report).map_err(|e| errors::to_py(EngineError::Unsupported(e.to_string())))
}

/// The built-in conversation template `name` as the JSON object MLC stores in mlc-chat-config.json, or
/// None for an unknown name.
#[pyfunction]
fn conv_template_json(name: String) -> Option<String> {
    ConvTemplate::builtin(&name).map(|t| t.to_json().to_string())
}

/// Names of the built-in conversation templates.
#[pyfunction]
fn conv_template_names() -> Vec<&'static str> {
    ConvTemplate::builtin_names()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(convert_weight, m)?)?;
    m.add_function(wrap_pyfunction!(conv_template_json, m)?)?;
    m.add_function(wrap_pyfunction!(conv_template_names, m)?)?;
    Ok(())
}
