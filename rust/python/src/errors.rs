//! Maps `EngineError` once to the exception classes defined in `mlc_llm.protocol.errors`.

use mlc_core::EngineError;
use pyo3::prelude::*;
use pyo3::exceptions::PyRuntimeError;

fn raise(class: &str, message: String, field: Option<String>) -> PyErr {
    Python::attach(|py| {
        let made = py
            .import("mlc_llm.protocol.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| match field {
                Some(f) => cls.call1((message.clone(), f)),
                None => cls.call1((message.clone(),)),
            });
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(_) => PyRuntimeError::new_err(message),
        }
    })
}

pub fn to_py(err: EngineError) -> PyErr {
    let message = err.to_string();
    match err {
        EngineError::BadRequest { field, .. } => raise("BadRequestError", message, Some(field)),
        EngineError::Template(_) => raise("BadRequestError", message, Some("messages".into())),
        EngineError::Unsupported(_) => raise("UnsupportedError", message, None),
        EngineError::ModelLoad { .. } => raise("ModelLoadError", message, None),
        EngineError::OutOfMemory(_) => raise("InsufficientMemoryError", message, None),
        EngineError::EngineDead(_) => raise("EngineDeadError", message, None),
        EngineError::Tokenizer(_) | EngineError::Candle(_) | EngineError::Io(_) | EngineError::Internal(_) => {
            raise("InternalError", message, None)
        }
    }
}
