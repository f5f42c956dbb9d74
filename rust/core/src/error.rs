//! The one error type of the engine core. The Python binding maps each variant once to an exception.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// The request is invalid; `field` names the offending request field.
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// The model could not be found, parsed or loaded; `path` names the file or directory.
    #[error("cannot load model from {path}: {message}")]
    ModelLoad { path: String, message: String },
    /// A valid request or configuration that this engine does not implement.
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The engine thread is gone (terminated or crashed); no request can be served.
    #[error("engine is not running: {0}")]
    EngineDead(String),
    /// Not enough memory for the requested configuration; the message says what to change.
    #[error("insufficient memory: {0}")]
    OutOfMemory(String),
    /// A bug: a panic caught at the engine boundary (the message is the panic's).
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::BadRequest { field: field.into(), message: message.into() }
    }
    pub fn model_load(path: impl Into<String>, message: impl Into<String>) -> Self {
        EngineError::ModelLoad { path: path.into(), message: message.into() }
    }
}

/// The message of a caught panic payload (`panic!` carries a `String` or a `&str`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f` with panics turned into [`EngineError::Internal`], so that no panic crosses the engine
/// boundary (into Python it would arrive as a `BaseException` that `except Exception` misses).
pub fn catch_panics<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(EngineError::Internal(panic_message(p.as_ref()))))
}

pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let r: Result<()> = catch_panics(|| panic!("index {} out of range", 7));
        assert!(matches!(r, Err(EngineError::Internal(m)) if m == "index 7 out of range"));
        let r: Result<()> = catch_panics(|| std::panic::panic_any(5u8));
        assert!(matches!(r, Err(EngineError::Internal(m)) if m == "panic"));
        assert!(matches!(catch_panics(|| Ok(3)), Ok(3)));
    }
}
