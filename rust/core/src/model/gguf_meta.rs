//! GGUF metadata as the architectures read it: `<arch>.<key>` values with typed errors, and the small
//! tensors some architectures keep configuration in (Phi-3's rope factors).

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;

pub struct GgufMeta<'a> {
    pub md: &'a HashMap<String, Value>,
    /// The file, for errors.
    pub path: &'a str,
    /// Whether the file has its own `output.weight` (else the embedding is tied).
    pub has_output_weight: bool,
    /// Reads a small tensor by its GGUF name as f32 values (`None`: not in the file).
    pub read_f32: &'a dyn Fn(&str) -> Option<Vec<f32>>,
}

impl GgufMeta<'_> {
    pub fn err(&self, m: impl Into<String>) -> EngineError {
        EngineError::model_load(self.path, m)
    }

    /// `general.architecture` (empty when absent; the registry reports it).
    pub fn arch(&self) -> &str {
        match self.md.get("general.architecture") {
            Some(Value::String(s)) => s,
            _ => "",
        }
    }

    fn value(&self, k: &str) -> Option<&Value> {
        self.md.get(&format!("{}.{k}", self.arch()))
    }

    pub fn usize(&self, k: &str) -> Result<Option<usize>> {
        let Some(v) = self.value(k) else { return Ok(None) };
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => return Err(self.err(format!("{}.{k} must be a non-negative integer, found {other:?}", self.arch()))),
        };
        Ok(Some(n as usize))
    }

    pub fn need_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?.ok_or_else(|| self.err(format!("GGUF is missing {}.{k}", self.arch())))
    }

    pub fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.err(format!("{}.{k} must be a number, found {other:?}", self.arch()))),
        }
    }

    pub fn str(&self, k: &str) -> Option<&str> {
        match self.value(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The vocabulary size: `<arch>.vocab_size`, else the tokenizer's token count.
    pub fn vocab_size(&self) -> Result<usize> {
        if let Some(v) = self.usize("vocab_size")? {
            return Ok(v);
        }
        match self.md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => Ok(t.len()),
            _ => Err(self.err("GGUF has neither vocab_size nor tokenizer.ggml.tokens")),
        }
    }
}
