//! `_core.EmbeddingEngine`: the Python face of `mlc_core::embedding::Embedder`. One embedder, used by one
//! call at a time (a mutex around it; calls release the GIL while they wait and compute), panics
//! turned into typed errors as in `engine.rs`.

use std::sync::Mutex;

use crate::errors::to_py;
use mlc_core::embedding::{Embedder, Pooling};
use mlc_core::error::catch_panics;
use mlc_core::EngineError;
use pyo3::prelude::*;

#[pyclass(module = "mlc_llm._core", frozen)]
pub struct EmbeddingEngine {
    embedder: Mutex<Embedder>,
}

impl EmbeddingEngine {
    fn with<T>(&self, f: impl FnOnce(&mut Embedder) -> mlc_core::Result<T>) -> mlc_core::Result<T> {
        // A panic inside a call is caught below it, so a poisoned lock only means an earlier error.
        let mut guard = self.embedder.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        catch_panics(|| f(&mut guard))
    }
}

#[pymethods]
impl EmbeddingEngine {
    #[new]
    #[pyo3(signature = (model, device, max_batch_tokens=2048))]
    fn new(py: Python<'_>, model: String, device: String, max_batch_tokens: usize) -> PyResult<Self> {
        // A panic while loading is a file the loader failed to reject: a load failure of that model.
        let embedder = py
            .detach(|| catch_panics(|| Embedder::load(&model, &device, max_batch_tokens)))
            .map_err(|e| match e {
                EngineError::Internal(m) => EngineError::model_load(&model, format!("internal error while loading: {m}")),
                other => other,
            })
            .map_err(to_py)?;
        Ok(EmbeddingEngine { embedder: Mutex::new(embedder) })
    }

    /// JSON: {"model", "hidden_size", "model_type": "encoder" | "decoder", "max_batch_tokens", "max_input_tokens", "device",
    /// "eos_token_ids": [int], "default_pooling": "last" | "mean" | "cls", "frame": [cls, sep] | null,
    /// "steps": forward passes run so far}.
    fn info(&self) -> PyResult<String> {
        let info = self
            .with(|e| {
                Ok(serde_json::json!({
                    "model": e.name(),
                    "hidden_size": e.hidden_size(),
                    "model_type": if e.is_encoder() { "encoder" } else { "decoder" },
                    "max_batch_tokens": e.max_batch_tokens(),
                    "max_input_tokens": e.max_input_tokens(),
                    "device": format!("{:?}", e.device().location()),
                    "eos_token_ids": e.tokenizer().eos_token_ids(),
                    "default_pooling": e.default_pooling().name(),
                    "frame": e.frame().map(|(cls, sep)| [cls, sep]),
                    "steps": e.steps(),
                }))
            })
            .map_err(to_py)?;
        Ok(info.to_string())
    }

    fn tokenize(&self, py: Python<'_>, text: String, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let tokenizer = self.with(|e| Ok(e.tokenizer().clone())).map_err(to_py)?;
        py.detach(move || catch_panics(|| tokenizer.encode(&text, add_special_tokens))).map_err(to_py)
    }

    /// One embedding per input (token ids), pooled as `pooling` says ("last", "mean", "cls").
    fn embed(&self, py: Python<'_>, inputs: Vec<Vec<u32>>, pooling: String, normalize: bool) -> PyResult<Vec<Vec<f32>>> {
        let pooling = Pooling::parse(&pooling).map_err(to_py)?;
        py.detach(|| self.with(|e| e.embed(&inputs, pooling, normalize))).map_err(to_py)
    }
}
