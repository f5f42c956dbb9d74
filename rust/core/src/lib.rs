//! mlc_core: the engine behind the `mlc_llm` Python API, with no Python and no HTTP in it.
//!
//! Data flows one way: a request (token ids + [`request::SamplingParams`]) enters the engine thread
//! through [`engine::EngineHandle`]; each step the scheduler hands out a token budget (plain data), the
//! runner executes the model over the paged KV cache, the sampler picks tokens, and per-request deltas
//! (token ids, text, logprobs, finish reason) flow back.

pub mod attention;
pub mod convert;
#[cfg(feature = "cuda")]
mod cuda_args;
#[cfg(feature = "cuda")]
pub mod cuda_graph;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
#[cfg(feature = "cuda")]
pub mod cuda_pdl;
pub mod device;
pub mod embedding;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod hub;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod parallel;
pub mod profile;
pub mod quant;
pub mod request;
pub mod runner;
pub mod sampler;
pub mod scheduler;
pub mod spec;
pub mod switches;
pub mod tokenizer;

pub use error::{EngineError, Result};
