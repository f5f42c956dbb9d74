//! `_core.Engine`: the Python face of `EngineHandle`. Arguments arrive as owned values or JSON,
//! the GIL is released for anything that waits, and deltas go back as plain dicts. No panic crosses
//! this boundary: each call into the core runs under `catch_panics` (a panic becomes `InternalError`,
//! or `ModelLoadError` while loading), never pyo3's `PanicException`.

use crate::errors::to_py;
use mlc_core::engine::{Delta, EngineArgs, EngineHandle};
use mlc_core::request::SamplingParams;
use mlc_core::error::catch_panics;
use mlc_core::EngineError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::time::Duration;

#[pyclass(module = "mlc_llm._core", frozen)]
pub struct Engine {
    handle: EngineHandle,
}

fn bad_json(field: &str, e: serde_json::Error) -> PyErr {
    to_py(EngineError::bad_request(field, e.to_string()))
}

fn delta_to_py<'py>(py: Python<'py>, d: Delta) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("request_id", d.request_id)?;
    out.set_item("token_ids", d.token_ids)?;
    out.set_item("text", d.text)?;
    match d.logprobs {
        None => out.set_item("logprobs", py.None())?,
        Some(lps) => {
            let list = PyList::empty(py);
            for lp in lps {
                let e = PyDict::new(py);
                e.set_item("token", lp.token)?;
                e.set_item("logprob", lp.logprob)?;
                e.set_item("bytes", lp.bytes.into_iter().map(u32::from).collect::<Vec<_>>())?;
                let tops = PyList::empty(py);
                for t in lp.top_logprobs {
                    let te = PyDict::new(py);
                    te.set_item("token", t.token)?;
                    te.set_item("logprob", t.logprob)?;
                    te.set_item("bytes", t.bytes.into_iter().map(u32::from).collect::<Vec<_>>())?;
                    tops.append(te)?;
                }
                e.set_item("top_logprobs", tops)?;
                list.append(e)?;
            }
            out.set_item("logprobs", list)?;
        }
    }
    let reason = d.finish_reason.map(|r| match r {
        mlc_core::engine::FinishReason::Stop => "stop",
        mlc_core::engine::FinishReason::Length => "length",
        mlc_core::engine::FinishReason::Abort => "abort",
        mlc_core::engine::FinishReason::Error => "error",
    });
    out.set_item("finish_reason", reason)?;
    out.set_item("error", d.error)?;
    match d.usage {
        None => out.set_item("usage", py.None())?,
        Some(u) => {
            let e = PyDict::new(py);
            e.set_item("prompt_tokens", u.prompt_tokens)?;
            e.set_item("completion_tokens", u.completion_tokens)?;
            e.set_item("prefill_tokens", u.prefill_tokens)?;
            e.set_item("ttft_s", u.ttft_s)?;
            e.set_item("end_to_end_latency_s", u.end_to_end_latency_s)?;
            e.set_item("decode_tokens_per_s", u.decode_tokens_per_s)?;
            out.set_item("usage", e)?;
        }
    }
    Ok(out)
}

#[pymethods]
impl Engine {
    #[new]
    fn new(py: Python<'_>, model: String, device: String, config_json: String) -> PyResult<Self> {
        let args: EngineArgs = serde_json::from_str(&config_json).map_err(|e| bad_json("engine_config", e))?;
        let handle = py.detach(|| EngineHandle::start(&model, &device, args)).map_err(to_py)?;
        Ok(Engine { handle })
    }

    fn info(&self) -> PyResult<String> {
        serde_json::to_string(self.handle.info()).map_err(|e| to_py(EngineError::Unsupported(e.to_string())))
    }

    #[pyo3(signature = (messages_json, add_generation_prompt, tools_json=None, template_kwargs_json=None))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages_json: String,
        add_generation_prompt: bool,
        tools_json: Option<String>,
        template_kwargs_json: Option<String>,
    ) -> PyResult<String> {
        let messages: serde_json::Value = serde_json::from_str(&messages_json).map_err(|e| bad_json("messages", e))?;
        let tools: Option<serde_json::Value> = match tools_json {
            Some(t) => Some(serde_json::from_str(&t).map_err(|e| bad_json("tools", e))?),
            None => None,
        };
        let kwargs: Option<serde_json::Map<String, serde_json::Value>> = match template_kwargs_json {
            Some(k) => Some(serde_json::from_str(&k).map_err(|e| bad_json("chat_template_kwargs", e))?),
            None => None,
        };
        let tok = self.handle.tokenizer().clone();
        py.detach(move || {
            catch_panics(|| tok.render_chat_with(&messages, add_generation_prompt, tools.as_ref(), kwargs.as_ref()))
        })
        .map_err(to_py)
    }

    fn tokenize(&self, py: Python<'_>, text: String, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let tok = self.handle.tokenizer().clone();
        py.detach(move || catch_panics(|| tok.encode(&text, add_special_tokens))).map_err(to_py)
    }

    fn detokenize(&self, py: Python<'_>, token_ids: Vec<u32>) -> PyResult<String> {
        let tok = self.handle.tokenizer().clone();
        py.detach(move || catch_panics(|| tok.decode(&token_ids, true))).map_err(to_py)
    }

    fn add_request(&self, py: Python<'_>, request_id: String, prompt_token_ids: Vec<u32>, params_json: String) -> PyResult<()> {
        let params: SamplingParams = catch_panics(|| self.handle.info().sampling_params(&params_json)).map_err(to_py)?;
        py.detach(|| catch_panics(|| self.handle.add_request(request_id, prompt_token_ids, params))).map_err(to_py)
    }

    fn abort(&self, py: Python<'_>, request_id: String) {
        py.detach(|| self.handle.abort(&request_id))
    }

    fn poll<'py>(&self, py: Python<'py>, timeout_ms: u64) -> PyResult<Bound<'py, PyList>> {
        let deltas = py.detach(|| catch_panics(|| self.handle.poll(Duration::from_millis(timeout_ms)))).map_err(to_py)?;
        let list = PyList::empty(py);
        for d in deltas {
            list.append(delta_to_py(py, d)?)?;
        }
        Ok(list)
    }

    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        let m = py.detach(|| self.handle.metrics()).map_err(to_py)?;
        serde_json::to_string(&m).map_err(|e| to_py(EngineError::Unsupported(e.to_string())))
    }

    /// The prefix-cache events since the last call as a JSON list (`EngineArgs.kv_events`), each an
    /// object with a "type": BlockStored, BlockRemoved or AllBlocksCleared.
    fn kv_events(&self, py: Python<'_>) -> PyResult<String> {
        let events = py.detach(|| self.handle.kv_events()).map_err(to_py)?;
        serde_json::to_string(&events).map_err(|e| to_py(EngineError::Unsupported(e.to_string())))
    }

    /// The hashes of the prefix cache's findable blocks, as `kv_events` name them (a debug view).
    fn cached_block_hashes(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        py.detach(|| self.handle.cached_block_hashes()).map_err(to_py)
    }

    fn trace(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.handle.trace_json()).map_err(to_py)
    }

    fn terminate(&self, py: Python<'_>) {
        py.detach(|| self.handle.terminate())
    }
}
