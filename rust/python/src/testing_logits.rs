//! Test-only entry point (underscore name, not part of the API): the logits our engine samples from, so that
//! Python tests can compare them with independent references (numpy forward passes over other readers of the
//! same weights).

use crate::errors;
use mlc_core::engine::{build, EngineArgs, Mode};
use mlc_core::request::SamplingParams;
use mlc_core::EngineError;
use pyo3::prelude::*;

/// Greedy decoding of `prompt` for `max_tokens` tokens on `device` (ignoring EOS; `dtype` as the engine's
/// argument, None for the default): the new token ids and, per token, the logits row it was chosen from.
#[pyfunction]
#[pyo3(signature = (model, device, prompt, max_tokens, dtype=None))]
fn _greedy_logits(py: Python<'_>, model: String, device: String, prompt: Vec<u32>, max_tokens: usize, dtype: Option<String>) -> PyResult<(Vec<u32>, Vec<Vec<f32>>)> {
    py.detach(|| {
        // Exact-reference checks: the f32 KV cache where the CPU computes in f32 (its default is f16).
        let f32_compute = device == "cpu" && dtype.as_deref().is_none_or(|d| matches!(d, "auto" | "float32" | "f32"));
        let args = EngineArgs {
            mode: Mode::Local,
            max_total_sequence_length: Some(prompt.len() + max_tokens + 16),
            dtype,
            verbose: false,
            kv_cache_dtype: f32_compute.then(|| "float32".to_string()),
            ..Default::default()
        };
        let (mut core, info, _) = build(&model, &device, &args)?;
        core.capture_logits = true;
        let params = SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() };
        let max_new = info.validate(&prompt, &params)?;
        core.add("r".to_string(), prompt, params, max_new);
        let tokens = core.run_to_completion()?.into_iter().flat_map(|d| d.token_ids).collect();
        let rows = core.captured.drain(..).map(|(_, row)| row).collect();
        Ok::<_, EngineError>((tokens, rows))
    })
    .map_err(errors::to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_greedy_logits, m)?)
}
